"""A worker SIGKILLed in the middle of a map: its tasks run again elsewhere, every result right."""

import os
import signal
import sys
import time

import cloudpickle

import rdask

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def slow_square(x):
    time.sleep(0.05)
    return x * x, os.getpid()


def test_a_sigkilled_worker_mid_map_loses_no_result():
    with rdask.LocalCluster(n_workers=3, threads_per_worker=2) as cluster, rdask.Client(cluster) as client:
        futures = client.map(slow_square, range(120))
        # Wait until every worker is busy, then kill one of them.
        deadline = time.monotonic() + 30
        while True:
            workers = client.status()["workers"]
            busy = [w for w in workers if w["assigned"] > 0]
            if len(busy) == 3 or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert len(busy) == 3, workers
        victim = busy[0]["info"]["pid"]
        os.kill(victim, signal.SIGKILL)
        assert not futures[-1].done(), "the map ended before the worker was killed"
        results = client.gather(futures)
        assert [r for r, _ in results] == [x * x for x in range(120)]
        # What the killed worker had computed was lost with it and computed again elsewhere.
        assert victim not in {pid for _, pid in results}
