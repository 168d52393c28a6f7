"""The client on a local cluster: futures, dependencies, errors, commands, the executor."""

import concurrent.futures
import gc
import os
import shutil
import sys
import threading
import time

import cloudpickle
import pytest

import rdask

# The workers cannot import this test module: its functions travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def inc(x):
    return x + 1


def add(a, b):
    return a + b


def fail(x):
    raise ValueError(f"no good: {x}")


def test_submit_returns_a_future_with_the_result(client):
    f = client.submit(inc, 41)
    assert f.result(timeout=30) == 42
    assert f.done()
    assert f.exception() is None


def test_keyword_arguments_reach_the_function(client):
    assert client.submit(lambda a, b=0: a - b, 10, b=3).result() == 7


def test_each_function_runs_as_itself(client):
    # Functions are pickled once per function and unpickled once per worker: closures over
    # different values, and lambdas that look alike, must not be taken for one another.
    adders = [lambda x, k=k: x + k for k in range(3)]
    assert [client.gather(client.map(f, range(4))) for f in adders] == [[x + k for x in range(4)] for k in range(3)]

    def scale(k):
        return lambda x: x * k

    assert client.gather([client.submit(scale(k), 10) for k in (1, 2, 3)]) == [10, 20, 30]
    # Arguments of every kind: plain ones and ones only cloudpickle can carry.
    assert client.submit(lambda f, d: f(d["x"]), lambda v: v - 1, {"x": 5}).result() == 4


def test_map_and_gather_keep_the_order(client):
    futures = client.map(inc, range(200))
    assert client.gather(futures) == list(range(1, 201))
    assert client.gather(client.map(add, [1, 2, 3], [10, 20, 30])) == [11, 22, 33]
    assert client.map(inc, []) == []


def test_gather_keeps_the_shape_of_dicts_and_tuples(client):
    a, b = client.submit(inc, 1), client.submit(inc, 2)
    assert client.gather({"a": a, "b": b}) == {"a": 2, "b": 3}
    assert client.gather((a, b, 7)) == (2, 3, 7)


def test_as_completed_yields_every_future_once(client):
    futures = [client.submit(time.sleep, 0.01 * (i % 3)) for i in range(12)] + client.map(inc, range(5))
    seen = list(rdask.as_completed(futures, timeout=60))
    assert sorted(map(id, seen)) == sorted(map(id, futures))
    assert all(f.done() for f in seen)


def test_as_completed_yields_a_quick_task_before_a_slow_one(client):
    slow = client.submit(time.sleep, 2)
    quick = client.submit(inc, 1)
    first = next(iter(rdask.as_completed([slow, quick])))
    assert first is quick


def nap(seconds):
    time.sleep(seconds)
    return seconds


def test_as_completed_yields_a_maps_futures_as_their_tasks_end():
    # One map, one job: its quick tasks are yielded, with their results, while a slow one runs.
    # A cluster of its own: tasks of other tests' released jobs may still hold the shared one's
    # slots (releasing a job does not stop its running tasks).
    with rdask.LocalCluster(n_workers=1, threads_per_worker=3) as cluster, rdask.Client(cluster) as client:
        futures = client.map(nap, [0, 0, 4])
        seen = []
        for f in rdask.as_completed(futures, timeout=60):
            seen.append(f.result(timeout=0))
            if len(seen) == 2:
                assert not futures[2].done(), "yielded only when the whole map ended"
        assert seen == [0, 0, 4]


def test_wait_returns_when_every_task_of_a_map_ended(client):
    futures = client.map(nap, [0, 0.5])
    done, not_done = rdask.wait(futures, timeout=60)
    assert done == set(futures) and not not_done
    assert client.gather(futures) == [0, 0.5]


def test_futures_as_arguments_are_dependencies(client):
    a = client.submit(inc, 1)
    b = client.submit(add, a, 10)
    c = client.submit(lambda xs, d: sum(xs) + d["k"], [a, b], {"k": a})
    assert c.result() == 2 + 12 + 2


def test_a_tree_reduction_of_1000_tasks(client):
    level = client.map(inc, range(1000))
    while len(level) > 1:
        pairs = [level[i : i + 2] for i in range(0, len(level), 2)]
        level = [client.submit(add, *p) if len(p) == 2 else p[0] for p in pairs]
    assert level[0].result(timeout=120) == sum(range(1, 1001))


def test_an_exception_is_reraised_with_the_remote_traceback(client):
    f = client.submit(fail, 7)
    with pytest.raises(ValueError, match="no good: 7") as info:
        f.result()
    cause = info.value.__cause__
    assert isinstance(cause, rdask.RemoteTraceback)
    assert "in fail" in cause.text and "ValueError: no good: 7" in cause.text
    assert isinstance(f.exception(), ValueError)


def test_an_exception_passes_on_to_dependents(client):
    bad = client.submit(fail, 1)
    after = client.submit(inc, bad)
    with pytest.raises(ValueError, match="no good: 1"):
        after.result()
    with pytest.raises(ValueError):
        client.gather([client.submit(inc, 1), bad])


def test_an_exception_that_cannot_be_pickled_comes_back_as_remote_error(client):
    def raise_unpicklable():
        class Local(Exception):
            def __reduce__(self):
                raise TypeError("not picklable")

        raise Local("local trouble")

    with pytest.raises(rdask.RemoteError, match="local trouble"):
        client.submit(raise_unpicklable).result()


def test_an_unpicklable_argument_fails_at_submit(client):
    with pytest.raises(TypeError, match="cannot pickle"):
        client.submit(inc, threading.Lock())


def test_a_result_that_cannot_be_pickled_is_an_error(client):
    with pytest.raises(TypeError):
        client.submit(threading.Lock).result()


def test_result_times_out(client):
    f = client.submit(time.sleep, 3)
    with pytest.raises(TimeoutError):
        f.result(timeout=0.2)
    assert not f.done()


def test_numpy_arrays_move_between_workers_out_of_band(client):
    np = pytest.importorskip("numpy")
    a = client.submit(np.arange, 1_000_000, dtype=np.float64)
    b = client.submit(lambda x: x * 2, a)
    out = b.result()
    assert out.dtype == np.float64 and out.shape == (1_000_000,)
    assert out[-1] == 2 * 999_999
    out += 1  # results are writable
    assert np.array_equal(client.submit(lambda x, y: x + y, a, a).result(), out - 1)


def _kept():
    """A list that lives in the worker process (this module's globals travel by value)."""
    import rdask._worker

    if not hasattr(rdask._worker, "_test_kept"):
        rdask._worker._test_kept = []
    return rdask._worker._test_kept


def _keep_and_sum(x):
    """Keeps its input past the task's end (in the worker process) and sums it."""
    import os

    _kept().append(x)
    return os.getpid(), int(x.sum())


def _sums_of_kept_after_churn(n):
    """Sums what earlier tasks kept, once the worker dropped its own copy of their input and
    allocated and freed memory of that size."""
    import os
    import time

    import numpy as np

    time.sleep(0.5)  # the release of the input's job reaches the workers
    for _ in range(20):
        np.ones(n, dtype=np.uint8)
    return os.getpid(), [int(x.sum()) for x in _kept()]


def test_large_inputs_are_lent_read_only_and_outlive_their_task(client):
    # Inputs of 64 KiB and more reach the task without a copy, as a view of the worker's bytes.
    np = pytest.importorskip("numpy")
    n = 1 << 20
    a = client.submit(np.ones, n, dtype=np.uint8)

    def mutate(x):
        try:
            x += 1
        except ValueError as e:
            return f"read-only: {e}"
        return "written"

    assert client.submit(mutate, a).result().startswith("read-only")
    # A task that keeps a reference to its input: the bytes stay valid after it ended, on
    # whichever worker it ran, while the worker goes on running tasks.
    kept = client.gather(client.map(_keep_and_sum, [a] * 8))
    assert [s for _, s in kept] == [n] * 8
    kept_by = {pid: sum(1 for p, _ in kept if p == pid) for pid, _ in kept}
    # Only the tasks' references are left: the worker's own copies go with the job.
    assert int(a.result().sum()) == n
    del a
    gc.collect()
    later = dict(client.gather([client.submit(_sums_of_kept_after_churn, n) for _ in range(16)]))
    assert set(later) & set(kept_by), f"no later task ran where inputs were kept: {later} {kept_by}"
    for pid, sums in later.items():
        assert sums == [n] * kept_by.get(pid, 0), (pid, sums, kept_by)


def test_cancel_marks_futures_cancelled(client):
    f = client.submit(time.sleep, 2)
    client.cancel([f])
    assert f.cancelled() and f.done()
    with pytest.raises(concurrent.futures.CancelledError):
        f.result()


def _mark_and_nap(path, seconds):
    open(path, "w").close()
    time.sleep(seconds)
    return path


def _naps_once_the_first_started(client, tmp_path):
    """20 tasks of 0.5 s that each leave a file named by their index, once the first ran."""
    futures = client.map(_mark_and_nap, [tmp_path / f"{i}" for i in range(20)], [0.5] * 20)
    deadline = time.monotonic() + 30
    while not (tmp_path / "0").exists():
        assert time.monotonic() < deadline, "the first task never started"
        time.sleep(0.01)
    return futures


def test_cancelled_tasks_that_have_not_started_never_run_nor_do_their_dependents(tmp_path):
    # One slot: the first tasks run (or wait in the worker's queue) while the rest are queued.
    with rdask.LocalCluster(n_workers=1, threads_per_worker=1) as cluster, rdask.Client(cluster) as client:
        futures = _naps_once_the_first_started(client, tmp_path)
        dependent = client.submit(lambda p: p, futures[10])
        client.cancel(futures)
        assert all(f.cancelled() for f in futures)
        with pytest.raises(rdask.TaskError, match="cancelled"):
            dependent.result(timeout=30)
        # The cluster is free for new work once the tasks that had started end.
        assert client.submit(inc, 1).result(timeout=30) == 2
        ran = sorted(int(p.name) for p in tmp_path.iterdir())
        assert ran and len(ran) <= 3, f"cancelled tasks ran: {ran}"
        assert ran == list(range(len(ran))), ran


def test_dropping_every_future_of_a_job_cancels_its_tasks_that_have_not_started(tmp_path):
    # As in Dask: a task whose future nobody holds is forgotten, so it does not hold the cluster.
    with rdask.LocalCluster(n_workers=1, threads_per_worker=1) as cluster, rdask.Client(cluster) as client:
        futures = _naps_once_the_first_started(client, tmp_path)
        del futures
        gc.collect()
        # The release goes with the client's next call; the new task runs once the started ones end.
        assert client.submit(inc, 1).result(timeout=30) == 2
        time.sleep(1.0)
        ran = sorted(int(p.name) for p in tmp_path.iterdir())
        assert ran and len(ran) <= 3, f"tasks of dropped futures ran: {ran}"
        # The cluster has nothing left to do.
        assert client.status()["load"] == []


def test_command_arrays(client, tmp_path):
    job = client.submit_command(
        ["sh", "-c", 'echo "task $RDASK_TASK_ID" > out-%{TASK_ID}.txt'], array="1-20", cwd=tmp_path
    )
    assert job.tasks == 20
    assert job.wait(timeout=60) is True
    assert job.status()["finished"] == 20
    for i in range(1, 21):
        assert (tmp_path / f"out-{i}.txt").read_text() == f"task {i}\n"


def test_a_failing_command_is_reported(client):
    job = client.submit_command(["sh", "-c", 'test "$RDASK_TASK_ID" != 3'], array="1-4", env={"X": "1"})
    assert job.wait(timeout=60) is False
    failed = job.failed()
    assert list(failed) == [3] and "exit" in failed[3]


def test_the_executor_runs_calls_on_the_cluster(client):
    with client.get_executor() as ex:
        assert isinstance(ex, concurrent.futures.Executor)
        f = ex.submit(inc, 1)
        assert isinstance(f, concurrent.futures.Future)
        assert f.result(timeout=30) == 2
        assert list(ex.map(add, [1, 2], [3, 4])) == [4, 6]
        done, _ = concurrent.futures.wait([ex.submit(inc, i) for i in range(10)], timeout=60)
        assert sorted(f.result() for f in done) == list(range(1, 11))
        with pytest.raises(ValueError):
            ex.submit(fail, 0).result(timeout=30)


def test_a_wrong_secret_is_refused(cluster, tmp_path):
    with rdask.LocalCluster(n_workers=0) as other:
        fake = tmp_path / "fake"
        fake.mkdir()
        shutil.copy(os.path.join(cluster.state_dir, "scheduler.json"), fake / "scheduler.json")
        shutil.copy(os.path.join(other.state_dir, "secret"), fake / "secret")
        os.chmod(fake / "secret", 0o600)
        with pytest.raises(rdask.RdaskError) as info:
            rdask._rdask.Connection.connect(str(fake))
        assert info.value.exit_code == 3


def test_client_by_name_and_closed_client(cluster):
    c = rdask.Client(cluster.name)
    assert c.submit(inc, 1).result() == 2
    c.close()
    with pytest.raises(rdask.RdaskError, match="closed"):
        c.submit(inc, 1)


def test_a_client_with_no_cluster_up_starts_one_and_ends_it():
    with rdask.Client(n_workers=1) as c:
        state = c.cluster.state_dir
        assert os.path.exists(os.path.join(state, "scheduler.json"))
        assert c.submit(inc, 1).result() == 2
    assert not os.path.exists(os.path.join(state, "scheduler.json"))


def test_python_m_rdask_is_the_cli():
    import subprocess

    out = subprocess.run([sys.executable, "-m", "rdask", "--help"], capture_output=True, text=True, check=True)
    assert "job-script" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "rdask", "no-such-command"], capture_output=True, text=True)
    assert bad.returncode == 2
