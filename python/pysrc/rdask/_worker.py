"""What a worker runs for a Python task (called by the extension under the GIL)."""

import ctypes
import functools
import pickle
import traceback

from rdask import _serialize


class Dep:
    """In a task's arguments: the result of its ``index``-th dependency."""

    __slots__ = ("index",)

    def __init__(self, index):
        self.index = index

    def __reduce__(self):
        return (Dep, (self.index,))


_serialize.PLAIN_TYPES.add(Dep)

# Functions by their pickle: a map's tasks all carry the same bytes, unpickled once here (as
# Dask's workers cache deserialized functions). Cleared when full.
_functions = {}
_FUNCTIONS_MAX = 128


def _function(data):
    fn = _functions.get(data)
    if fn is None:
        fn = pickle.loads(data)
        if len(_functions) >= _FUNCTIONS_MAX:
            _functions.clear()
        _functions[data] = fn
    return fn


def substitute(obj, values):
    """``obj`` with each ``Dep`` replaced by its value (in lists, tuples, sets and dicts too)."""
    if isinstance(obj, Dep):
        return values[obj.index]
    if type(obj) in (list, tuple, set):
        return type(obj)(substitute(x, values) for x in obj)
    if type(obj) is dict:
        return {k: substitute(v, values) for k, v in obj.items()}
    return obj


@functools.lru_cache(maxsize=64)
def _array_type(n):
    """A ctypes array type of ``n`` bytes whose instances can hold their owner."""
    return type("PinnedBytes", (ctypes.c_char * n,), {})


def _view(pinned):
    """A read-only ``memoryview`` of a ``_rdask.Pinned`` (an input the worker lends without a
    copy). The view holds the ctypes array, which holds ``pinned``, which holds the bytes: they
    live as long as anything made from the view (a NumPy array, a slice)."""
    n = len(pinned)
    array = _array_type(n).from_address(pinned.address)
    array.owner = pinned
    return memoryview(array).cast("B").toreadonly()


def run_task(args, inputs):
    """Runs ``fn(*args, **kwargs)`` from the message ``args``, the results of its dependencies
    in ``inputs``; returns the result's message, or the exception's (a dependency's exception
    is passed on as it is, as Dask does)."""
    try:
        values = []
        for data in inputs:
            if type(data) is not bytes:
                data = _view(data)
            if _serialize.tag_of(data) == _serialize.ERROR:
                return data
            values.append(_serialize.loads(data)[1])
        _, (fn, a, kw) = _serialize.loads(args)
        fn = _function(fn)
        if values:
            a, kw = substitute(a, values), substitute(kw, values)
        result = fn(*a, **kw)
        return _serialize.dumps(result)
    except BaseException as e:  # noqa: B036 - every failure goes back to the client
        return _serialize.dumps_error(e, traceback.format_exc())
