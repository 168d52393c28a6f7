"""The bytes of Python tasks: arguments and results, cloudpickled with pickle protocol 5.

A message is a header, the pickle and its out-of-band buffers (NumPy arrays' memory, for
example, which thus moves as raw bytes and is not copied into the pickle)::

    tag: u8 | buffers: u32 | pickle length: u64 | buffer lengths: u64 each | pickle | buffers

``tag`` is ``OK`` for a value, ``ERROR`` for a task's exception: the pickled pair
``(exception, remote traceback text)``. Little-endian throughout.
"""

import io
import pickle
import struct
import threading

import cloudpickle

OK = 0
ERROR = 1

_HEAD = struct.Struct("<BIQ")
_LEN = struct.Struct("<Q")

# Objects made only of these are pickled by the standard pickler, several times faster than
# cloudpickle: none of them is pickled by reference to a module the worker may lack (a function
# of ``__main__``, say), so both give the same bytes' meaning. Types importable on every worker
# may be added (``rdask._worker`` adds its ``Dep``).
PLAIN_TYPES = {int, float, complex, bool, str, bytes, type(None)}


def _is_plain(obj, depth=0):
    t = type(obj)
    if t in PLAIN_TYPES:
        return True
    if depth >= 4:
        return False
    if t is tuple or t is list:
        return len(obj) <= 256 and all(_is_plain(x, depth + 1) for x in obj)
    if t is dict:
        return len(obj) <= 256 and all(_is_plain(k, 4) and _is_plain(v, depth + 1) for k, v in obj.items())
    return False


class _Pickler(threading.local):
    """A cloudpickle pickler per thread, reused: making one costs more than pickling a small
    object with it."""

    def __init__(self):
        self.file = io.BytesIO()
        self.buffers = []
        self.pickler = cloudpickle.Pickler(self.file, protocol=5, buffer_callback=self.buffers.append)

    def dumps(self, obj):
        """``(pickle, out-of-band buffers)``; the pickler is left clean even when it fails."""
        try:
            self.pickler.dump(obj)
            return self.file.getvalue(), list(self.buffers)
        finally:
            self.file.seek(0)
            self.file.truncate()
            self.buffers.clear()
            self.pickler.clear_memo()


_pickler = _Pickler()


def dumps(obj, tag=OK):
    """``obj`` as one message (``bytes``)."""
    if _is_plain(obj):
        main, buffers = pickle.dumps(obj, protocol=5), []
    else:
        main, buffers = _pickler.dumps(obj)
    try:
        raws = [b.raw() for b in buffers]
    except BufferError:
        # A non-contiguous buffer: everything in band.
        main, raws = cloudpickle.dumps(obj, protocol=5), []
    parts = [_HEAD.pack(tag, len(raws), len(main))]
    parts.extend(_LEN.pack(r.nbytes) for r in raws)
    parts.append(main)
    parts.extend(raws)
    return b"".join(parts)


def dumps_error(exc, traceback_text):
    """A task's exception and its traceback as an ``ERROR`` message."""
    try:
        return dumps((exc, traceback_text), tag=ERROR)
    except Exception:  # the exception itself cannot be pickled
        return dumps((RemoteError(f"{type(exc).__name__}: {exc}"), traceback_text), tag=ERROR)


def tag_of(data):
    """The tag of a message."""
    return data[0]


def loads(data):
    """``(tag, object)`` from a message; buffers are views of ``data``, not copies."""
    view = memoryview(data)
    tag, n, main_len = _HEAD.unpack_from(view, 0)
    offset = _HEAD.size
    lengths = [_LEN.unpack_from(view, offset + i * _LEN.size)[0] for i in range(n)]
    offset += n * _LEN.size
    main = view[offset : offset + main_len]
    offset += main_len
    buffers = []
    for length in lengths:
        buffers.append(view[offset : offset + length])
        offset += length
    return tag, pickle.loads(main, buffers=buffers)


class RemoteError(Exception):
    """A task's exception that could not be pickled, as its type's name and message."""


class RemoteTraceback(Exception):
    """The traceback of a task's exception on its worker; the re-raised exception's cause."""

    def __init__(self, text):
        super().__init__(text)
        self.text = text

    def __str__(self):
        return "\n\nTraceback on the worker:\n" + self.text
