"""The cluster classes on a real Slurm (ci/setup-slurm.sh): workers in batch jobs, scale, adapt,
and no job left after ``close``, nor after the Python process was SIGKILLed and ``down`` ran.

Skipped where there is no ``sbatch``, except under CI (``CI`` set), where that is a failure.
"""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import cloudpickle
import pytest

import rdask

cloudpickle.register_pickle_by_value(sys.modules[__name__])

if shutil.which("sbatch") is None:
    if os.environ.get("CI"):
        raise RuntimeError("sbatch is missing: run ci/setup-slurm.sh (CI must test on Slurm)")
    pytest.skip("no Slurm here (ci/setup-slurm.sh installs one)", allow_module_level=True)


def job_name(tag):
    return f"rdask-py-{tag}-{os.getpid()}"


def jobs_named(name):
    """Ids of the Slurm jobs called ``name`` that squeue still shows."""
    out = subprocess.run(["squeue", "-h", "-n", name, "-o", "%i"], capture_output=True, text=True, check=True)
    return out.stdout.split()


def wait_until(what, predicate, timeout=120):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def whoami(x):
    return x * 10, os.environ.get("SLURM_JOB_ID")


def test_slurm_cluster_runs_a_map_in_two_jobs_and_leaves_none():
    name = job_name("map")
    with rdask.SLURMCluster(cores=1, memory="1GB", walltime="00:10:00", job_name=name, poll_interval=0.5) as c:
        c.scale(jobs=2)
        wait_until("two jobs", lambda: len(jobs_named(name)) == 2)
        with rdask.Client(c) as client:
            results = client.gather(client.map(whoami, range(40)))
        assert [r for r, _ in results] == [x * 10 for x in range(40)]
        # Every result came from inside a batch job.
        assert all(job for _, job in results)
    assert jobs_named(name) == []


def test_adapt_grows_with_work_and_shrinks_without():
    name = job_name("adapt")
    with rdask.SLURMCluster(cores=1, memory="1GB", walltime="00:10:00", job_name=name, poll_interval=0.5) as c:
        c.adapt(minimum_jobs=0, maximum_jobs=3, target_duration=1, interval=0.5)
        with rdask.Client(c) as client:
            futures = client.map(lambda x: time.sleep(0.5) or x, range(30))
            wait_until("jobs for the work", lambda: len(jobs_named(name)) >= 2)
            assert len(jobs_named(name)) <= 3
            assert client.gather(futures) == list(range(30))
        wait_until("the jobs to go once idle", lambda: jobs_named(name) == [], timeout=180)
    assert jobs_named(name) == []


def test_down_after_a_sigkilled_python_leaves_no_job(tmp_path):
    name = job_name("kill")
    cluster = f"py-killed-{os.getpid()}"
    script = textwrap.dedent(
        f"""
        import time, rdask
        c = rdask.SLURMCluster(cores=1, memory="1GB", job_name={name!r}, name={cluster!r}, poll_interval=0.5)
        c.scale(jobs=1)
        print("scaled", flush=True)
        time.sleep(600)
        """
    )
    down = [sys.executable, "-m", "rdask", "--name", cluster, "down"]
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        # `up` says the cluster is up first.
        assert any(line.strip() == "scaled" for line in iter(p.stdout.readline, ""))
        wait_until("the job", lambda: len(jobs_named(name)) == 1)
        p.send_signal(signal.SIGKILL)
        p.wait()
        # The job outlives the Python process that asked for it, until `down`.
        assert len(jobs_named(name)) == 1
        subprocess.run(down, check=True)
        assert jobs_named(name) == []
    finally:
        p.kill()
        p.wait()
        subprocess.run(down)
