"""The client: futures of Python tasks and command jobs on an rdask cluster, with Dask's names."""

import concurrent.futures
import itertools
import json
import os
import threading
import weakref

import cloudpickle

from rdask import _rdask, _serialize
from rdask._worker import Dep

RdaskError = _rdask.RdaskError


class TaskError(RdaskError):
    """A task failed without a Python exception of its own: its workers died too often
    (``WorkerLost``), or a dependency failed, or the worker could not run it."""


class CancelledError(concurrent.futures.CancelledError):
    """The future was cancelled."""


class _Job:
    """One submitted job: its id, its outcome once known, and its release when no future of
    it is left."""

    def __init__(self, client, job_id):
        self.client = client
        self.id = job_id
        self.results = {}
        self.failed = None
        # Followed by ``as_completed`` before the job's end: how many ended tasks were seen,
        # and those that failed.
        self.cursor = 0
        self.early_finished = set()
        self.early_failed = {}
        # When the job's last future is gone, its results are dropped on the workers, and its
        # tasks that have not started are cancelled (nobody could see what they return).
        self._finalizer = weakref.finalize(self, client._release_later, job_id)

    def wait(self, timeout=None):
        """Whether the job ended within ``timeout`` seconds."""
        if self.failed is None:
            if not self.client._conn().wait([self.id], timeout=timeout):
                return False
            _, _, failed = self.client._conn().outcome(self.id)
            self.failed = {i: (kind, message) for i, kind, message in failed}
        return True

    def done(self):
        return self.failed is not None or self.client._conn().done(self.id)

    def ended(self, index):
        """Whether task ``index`` is known to have ended (before the job, or with it)."""
        return (
            index in self.results
            or index in self.early_finished
            or index in self.early_failed
            or self.failed is not None
        )

    def poll_ended(self, fetch):
        """Takes the tasks that ended since the last call (with ``fetch``, their results too);
        whether any did."""
        if self.failed is not None:
            return False
        after, finished, results, failed, done = self.client._conn().ended(self.id, self.cursor, fetch)
        self.cursor = after
        self.early_finished.update(finished)
        for i, data in results:
            self.results.setdefault(i, data)
        for i, kind, message in failed:
            self.early_failed[i] = (kind, message)
        if done and self.wait(0):
            return True
        return bool(finished or failed)

    def fetch(self, indices):
        """Fetches the results (messages) of ``indices`` not fetched yet."""
        want = [i for i in indices if i not in self.results and i not in self.failed and i not in self.early_failed]
        if want:
            for i, data in zip(want, self.client._conn().fetch(self.id, want)):
                self.results[i] = data


class Future:
    """The result of a task that will be computed (``concurrent.futures.Future``'s and Dask's
    methods). Passed as an argument to ``submit``/``map``, it is a dependency: its value goes
    from worker to worker, never through the client."""

    def __init__(self, job, index, deps=()):
        self._job = job
        self._index = index
        # The futures this task depends on are kept until it ended, so that their results are
        # not released before it ran.
        self._deps = list(deps)
        self._cancelled = False

    @property
    def key(self):
        """``(job, task)``, unique in the cluster."""
        return (self._job.id, self._index)

    @property
    def client(self):
        return self._job.client

    def done(self):
        """Whether the task ended (with a result or an error) or was cancelled."""
        return self._cancelled or self._job.ended(self._index) or self._job.done()

    def cancelled(self):
        return self._cancelled

    def cancel(self):
        """Cancels the future: its result is no longer wanted."""
        self.client.cancel([self])

    def _outcome(self, timeout):
        """``(tag, value)`` of an ended task."""
        if self._cancelled:
            raise CancelledError(f"task {self.key} was cancelled")
        job = self._job
        have = self._index in job.results or self._index in job.early_failed
        if not have and not job.wait(timeout):
            raise TimeoutError(f"task {self.key} did not end within {timeout} s")
        self._deps = []
        failure = job.early_failed.get(self._index) or (job.failed or {}).get(self._index)
        if failure is not None:
            kind, message = failure
            return _serialize.ERROR, (TaskError(f"task {self.key} {message}"), None)
        self._job.fetch([self._index])
        return _serialize.loads(self._job.results[self._index])

    def result(self, timeout=None):
        """The task's value; re-raises its exception (with the remote traceback as its cause)."""
        tag, value = self._outcome(timeout)
        if tag == _serialize.ERROR:
            raise _rebuild(*value)
        return value

    def exception(self, timeout=None):
        """The task's exception, or ``None``."""
        tag, value = self._outcome(timeout)
        return _rebuild(*value) if tag == _serialize.ERROR else None

    def add_done_callback(self, fn):
        """Calls ``fn(future)`` once the future is done (from another thread)."""

        def wait_then_call():
            try:
                self._job.wait()
            except Exception:  # a lost connection; the callback still runs, result() raises
                pass
            fn(self)

        threading.Thread(target=wait_then_call, daemon=True).start()

    def __repr__(self):
        state = "cancelled" if self._cancelled else "done" if self.done() else "pending"
        return f"<rdask.Future {self.key} {state}>"


def _rebuild(exc, traceback_text):
    if traceback_text is not None:
        exc.__cause__ = _serialize.RemoteTraceback(traceback_text)
    return exc


def _indices_by_job(futures):
    """``(job, [task indices])`` of ``futures``, a pair per job, in the order jobs first appear."""
    by_job = {}
    for f in futures:
        by_job.setdefault(id(f._job), (f._job, []))[1].append(f._index)
    return list(by_job.values())


def _find_deps(obj, deps):
    """``obj`` with every Future replaced by a ``Dep`` (in lists, tuples, sets and dicts too)."""
    if isinstance(obj, Future):
        deps.append(obj)
        return Dep(len(deps) - 1)
    if type(obj) in (list, tuple, set):
        return type(obj)(_find_deps(x, deps) for x in obj)
    if type(obj) is dict:
        return {k: _find_deps(v, deps) for k, v in obj.items()}
    return obj


# Functions' pickles by function, the most recent 100 (as Dask's ``dumps_function``): a map
# pickles its function once, and a function submitted again is not pickled again.
_function_pickles = {}
_FUNCTION_PICKLES_MAX = 100


def _dumps_function(fn):
    try:
        data = _function_pickles.get(fn)
    except TypeError:  # an unhashable callable
        return cloudpickle.dumps(fn, protocol=5)
    if data is None:
        data = cloudpickle.dumps(fn, protocol=5)
        while len(_function_pickles) >= _FUNCTION_PICKLES_MAX:
            try:
                del _function_pickles[next(iter(_function_pickles))]
            except (KeyError, RuntimeError, StopIteration):  # another thread's eviction
                break
        _function_pickles[fn] = data
    return data


def _task(fn, args, kwargs, fn_data=None):
    """A task's message and its dependencies' futures; raises at once if something cannot be
    pickled. ``fn_data`` is ``fn`` pickled, if the caller has it."""
    deps = []
    args = _find_deps(tuple(args), deps)
    kwargs = _find_deps(dict(kwargs), deps)
    try:
        if fn_data is None:
            fn_data = _dumps_function(fn)
        data = _serialize.dumps((fn_data, args, kwargs))
    except Exception as e:
        raise TypeError(f"cannot pickle the task {getattr(fn, '__name__', fn)!r}: {e}") from e
    return data, deps


class CommandJob:
    """A submitted array of command tasks (``Client.submit_command``)."""

    def __init__(self, client, job_id, tasks):
        self.client = client
        self.id = job_id
        self.tasks = tasks

    def wait(self, timeout=None):
        """Waits until every task ended; returns ``True`` if all succeeded (the CLI's ``wait``
        exits 0), ``False`` if any failed (see ``failed``). Raises ``TimeoutError``."""
        if not self.client._conn().wait([self.id], timeout=timeout):
            raise TimeoutError(f"job {self.id} did not end within {timeout} s")
        return not self.failed()

    def failed(self):
        """Failed tasks of an ended job: ``{array index: why}``."""
        _, _, failed = self.client._conn().outcome(self.id)
        return {i: message for i, _, message in failed}

    def done(self):
        return self.client._conn().done(self.id)

    def status(self):
        """Task counts now: ``total``, ``waiting``, ``running``, ``finished``, ``failed``."""
        return json.loads(self.client._conn().progress(self.id))

    def __repr__(self):
        return f"<rdask.CommandJob {self.id} ({self.tasks} tasks)>"


class Client:
    """A client of an rdask cluster.

    ``Client()`` connects to the running cluster named ``default`` (state in ``$RDASK_HOME``
    or ``~/.rdask``, as for the CLI); if none is up it starts a local one, ended with the
    client. ``Client("name")`` connects to a named cluster, ``Client(cluster)`` to a cluster
    object (``LocalCluster``, ``SLURMCluster``…).
    """

    def __init__(self, address=None, *, home=None, **local_cluster_kwargs):
        from rdask.cluster import LocalCluster, _Cluster

        self.cluster = None
        self._own_cluster = None
        self._lock = threading.Lock()
        self._releases = []
        self._connection = None
        if isinstance(address, _Cluster):
            self.cluster = address
            state = address.state_dir
        elif address is None:
            state = _rdask.state_dir("default", home)
            if not os.path.exists(os.path.join(state, "scheduler.json")):
                self._own_cluster = self.cluster = LocalCluster(home=home, **local_cluster_kwargs)
                state = self.cluster.state_dir
        elif isinstance(address, str):
            state = _rdask.state_dir(address, home)
        else:
            raise TypeError(f"Client(): a cluster name or a cluster object, not {type(address).__name__}")
        try:
            self._connection = _rdask.Connection.connect(state)
        except BaseException:
            if self._own_cluster is not None:
                self._own_cluster.close()
            raise

    def _conn(self):
        if self._connection is None:
            raise RdaskError("this client is closed")
        return self._connection

    def _release_later(self, job_id):
        # Called by the garbage collector: only note it (no call into the connection here).
        self._releases.append(job_id)

    def _flush_releases(self):
        while self._releases:
            job = self._releases.pop()
            if self._connection is not None:
                self._connection.release(job)

    def _submit(self, tasks, name):
        """Submits ``[(message, deps)]`` as one job; returns its futures."""
        self._flush_releases()
        keys = [[d.key for d in deps] for _, deps in tasks]
        job_id = self._conn().submit_python([(data, k) for (data, _), k in zip(tasks, keys)], name=name)
        job = _Job(self, job_id)
        return [Future(job, i, deps) for i, (_, deps) in enumerate(tasks)]

    def submit(self, fn, *args, **kwargs):
        """Runs ``fn(*args, **kwargs)`` on a worker; returns its ``Future``. Futures among the
        arguments are replaced by their values."""
        if not callable(fn):
            raise TypeError(f"submit(): {fn!r} is not callable")
        return self._submit([_task(fn, args, kwargs)], getattr(fn, "__name__", "python"))[0]

    def map(self, fn, *iterables, **kwargs):
        """``[submit(fn, *items, **kwargs) for items in zip(*iterables)]``, as one job."""
        if not callable(fn):
            raise TypeError(f"map(): {fn!r} is not callable")
        try:
            fn_data = _dumps_function(fn)
        except Exception as e:
            raise TypeError(f"cannot pickle the function {getattr(fn, '__name__', fn)!r}: {e}") from e
        tasks = [_task(fn, items, kwargs, fn_data) for items in zip(*iterables)]
        if not tasks:
            return []
        return self._submit(tasks, getattr(fn, "__name__", "python"))

    def gather(self, futures):
        """The results of ``futures`` (a future, or a list, tuple or dict of them), in the same
        shape; re-raises the first task's exception."""
        if isinstance(futures, Future):
            return futures.result()
        if isinstance(futures, dict):
            return dict(zip(futures.keys(), self.gather(list(futures.values()))))
        items = list(futures)
        # One fetch per job for all its results.
        for job, indices in _indices_by_job(f for f in items if isinstance(f, Future)):
            job.wait()
            job.fetch(indices)
        out = [f.result() if isinstance(f, Future) else f for f in items]
        return type(futures)(out) if isinstance(futures, (list, tuple)) else out

    def cancel(self, futures):
        """Cancels futures: their tasks that have not started never run, nor do the tasks that
        depend on them (their futures raise); tasks already running finish, their results unused.
        A future that already ended is left as it is."""
        if isinstance(futures, Future):
            futures = [futures]
        live = [f for f in futures if not f._job.done()]
        for f in live:
            f._cancelled = True
            f._deps = []
        for job, indices in _indices_by_job(live):
            self._conn().cancel(job.id, sorted(set(indices)))

    def submit_command(self, argv, array=None, cpus=1, env=None, cwd=None, stdout=None, stderr=None, name=None):
        """Submits a command, or an array of them (``array="1-1000"``), as ``rdask-jobqueue
        submit`` does: each task gets its index as ``RDASK_TASK_ID``, ``%{TASK_ID}`` and
        ``%{JOB_ID}`` are replaced in ``argv``, ``cwd``, ``stdout`` and ``stderr``. Returns a
        ``CommandJob``."""
        if isinstance(argv, str):
            raise TypeError("submit_command(): argv is a list of words, e.g. ['sh', '-c', 'echo hi']")
        argv = [str(a) for a in argv]
        env = sorted((str(k), str(v)) for k, v in (env or {}).items())
        job = self._conn().submit_command(
            argv, array, cpus, env, None if cwd is None else str(cwd), stdout, stderr, name
        )
        tasks = json.loads(self._conn().progress(job))["total"]
        return CommandJob(self, job, tasks)

    def get_executor(self):
        """A ``concurrent.futures.Executor`` running its calls on this cluster."""
        return Executor(self)

    def status(self):
        """The cluster as its scheduler sees it (what ``rdask-jobqueue status --output json`` shows)."""
        return json.loads(self._conn().status())

    def close(self):
        """Closes the connection (and ends the cluster this client started)."""
        if self._connection is not None:
            self._flush_releases()
            self._connection.close()
            self._connection = None
        if self._own_cluster is not None:
            self._own_cluster.close()
            self._own_cluster = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        state = "closed" if self._connection is None else self._connection.state
        return f"<rdask.Client {state}>"


def as_completed(futures, timeout=None):
    """Yields ``futures`` as their tasks end, each with its result already fetched (a ``map``'s
    futures one by one, as its tasks end, not when the whole map ended)."""
    yield from _as_completed(futures, timeout, fetch=True)


def _as_completed(futures, timeout, fetch):
    pending = list(futures)
    if not pending:
        return
    client = pending[0].client
    deadline = None if timeout is None else _now() + timeout
    pause = _POLL_MIN
    while pending:
        ready = [f for f in pending if f.cancelled() or f._job.ended(f._index)]
        if not ready:
            jobs = {id(f._job): f._job for f in pending}.values()
            if any([job.poll_ended(fetch) for job in jobs]):
                pause = _POLL_MIN
                continue
            left = None if deadline is None else deadline - _now()
            if left is not None and left <= 0:
                raise TimeoutError(f"{len(pending)} of the futures did not end within {timeout} s")
            # Until a job ends (its waiter wakes this at once) or it is time to look again.
            client._conn().wait([job.id for job in jobs], timeout=pause if left is None else min(pause, left), all=False)
            pause = min(2 * pause, _POLL_MAX)
            continue
        ids = {id(f) for f in ready}
        pending = [f for f in pending if id(f) not in ids]
        yield from ready


# How long ``as_completed`` waits before it asks again which tasks ended: from 1 ms, doubling
# while nothing ends, up to 50 ms.
_POLL_MIN = 0.001
_POLL_MAX = 0.05


def wait(futures, timeout=None):
    """Waits until every future is done; returns ``(done, not_done)`` sets."""
    fs = list(futures)
    try:
        for _ in _as_completed(fs, timeout, fetch=False):
            pass
    except TimeoutError:
        pass
    done = {f for f in fs if f.done()}
    return done, set(fs) - done


def _now():
    import time

    return time.monotonic()


class Executor(concurrent.futures.Executor):
    """``concurrent.futures.Executor`` over a client: ``submit`` returns standard futures."""

    _ids = itertools.count()

    def __init__(self, client):
        self._client = client
        self._shutdown = False

    def submit(self, fn, /, *args, **kwargs):
        if self._shutdown:
            raise RuntimeError("cannot submit after shutdown")
        return self._wrap(self._client.submit(fn, *args, **kwargs))

    def map(self, fn, *iterables, timeout=None, chunksize=1):
        if self._shutdown:
            raise RuntimeError("cannot submit after shutdown")
        futures = self._client.map(fn, *iterables)

        def results():
            for f in futures:
                yield f.result(timeout)

        return results()

    @staticmethod
    def _wrap(rf):
        cf = concurrent.futures.Future()
        cf.set_running_or_notify_cancel()

        def finish(f):
            try:
                cf.set_result(f.result())
            except BaseException as e:
                cf.set_exception(e)

        rf.add_done_callback(finish)
        # The rdask future lives as long as the standard one.
        cf._rdask_future = rf
        return cf

    def shutdown(self, wait=True, *, cancel_futures=False):
        self._shutdown = True
