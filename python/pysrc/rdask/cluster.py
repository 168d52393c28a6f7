"""Cluster managers with Dask's and dask-jobqueue's names and keywords.

Each is a thin layer over the ``rdask-jobqueue`` CLI's own Rust code, run in this process:
its keywords become the CLI's options, ``up`` starts it, ``scale``/``adapt`` resize it,
``job_script()`` is what ``job-script`` prints and ``close()`` is ``down``. The scheduler and
the workers are ``sys.executable -m rdask``: the client's interpreter and environment.
"""

import atexit
import itertools
import os
import weakref

from rdask import _rdask

_counter = itertools.count()
_open = weakref.WeakSet()


def _close_all():
    for c in list(_open):
        try:
            c.close()
        except Exception:
            pass


# The interpreter exiting ends the clusters it started, as `down` would.
atexit.register(_close_all)


def _cli(args):
    """Runs the CLI with ``args``; raises ``RdaskError`` on failure."""
    code = _rdask.run_cli(["rdask"] + args)
    if code != 0:
        e = _rdask.RdaskError(f"`rdask-jobqueue {' '.join(args)}` exited with {code}")
        e.exit_code = code
        raise e


class _Cluster:
    """What every cluster manager shares: a named cluster in a state directory."""

    _backend = "local"

    def __init__(self, name, home, options, start=True):
        self.name = name or f"python-{os.getpid()}-{next(_counter)}"
        self.home = None if home is None else os.fspath(home)
        self.state_dir = os.fspath(_rdask.state_dir(self.name, self.home))
        self._options = options
        self._up = False
        if start:
            self._start()

    def _global(self):
        g = ["--name", self.name]
        if self.home is not None:
            g += ["--home", self.home]
        return g

    def _start(self):
        _cli(self._global() + ["up", "--backend", self._backend] + self._options + self._start_options())
        self._up = True
        _open.add(self)

    def _start_options(self):
        return []

    def close(self):
        """Stops the cluster: its workers (batch jobs cancelled, waited for) and scheduler."""
        if self._up:
            self._up = False
            _open.discard(self)
            _cli(self._global() + ["down"])

    def get_client(self):
        from rdask.client import Client

        return Client(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"<rdask.{type(self).__name__} {self.name!r} {'up' if self._up else 'closed'}>"


class LocalCluster(_Cluster):
    """Workers on this machine: ``n_workers`` processes of ``threads_per_worker`` slots each."""

    def __init__(
        self,
        n_workers=2,
        threads_per_worker=1,
        *,
        name=None,
        home=None,
        death_timeout=None,
        dashboard_address=None,
    ):
        options = ["--workers", str(n_workers), "--slots", str(threads_per_worker)]
        if death_timeout is not None:
            options += ["--death-timeout", str(int(death_timeout))]
        if dashboard_address is None:
            options += ["--no-dashboard"]
        else:
            options += ["--dashboard-address", dashboard_address]
        super().__init__(name, home, options)

    def scale(self, n):
        """Runs ``n`` workers."""
        _cli(self._global() + ["scale", str(n)])

    def adapt(self, minimum=0, maximum=None):
        """Follows the work between ``minimum`` and ``maximum`` workers."""
        args = ["adapt", "--min-workers", str(minimum)]
        if maximum is not None:
            args += ["--max-workers", str(maximum)]
        _cli(self._global() + args)


def _words(value):
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return list(value)


class JobQueueCluster(_Cluster):
    """Workers in batch jobs, with dask-jobqueue's keywords (see its documentation): one job
    has ``cores`` CPUs and ``memory``, split into ``processes`` workers. Starts with no job:
    ``scale`` or ``adapt`` asks for them."""

    def __init__(
        self,
        cores=None,
        memory=None,
        processes=None,
        queue=None,
        account=None,
        project=None,
        walltime=None,
        job_name=None,
        job_extra_directives=None,
        job_directives_skip=None,
        job_script_prologue=None,
        job_script_epilogue=None,
        resource_spec=None,
        log_directory=None,
        interface=None,
        death_timeout=None,
        local_directory=None,
        worker_extra_args=None,
        shebang=None,
        *,
        name=None,
        home=None,
        submit_command=None,
        status_command=None,
        cancel_command=None,
        dashboard_address=None,
        poll_interval=None,
        start=True,
    ):
        o = []

        def opt(flag, value):
            if value is not None:
                o.extend([flag, str(value)])

        opt("--cores", cores)
        opt("--memory", memory)
        opt("--processes", processes)
        opt("--queue", queue)
        opt("--account", account)
        opt("--project", project)
        opt("--walltime", walltime)
        opt("--job-name", job_name)
        for flag, values in (
            ("--job-extra-directives", job_extra_directives),
            ("--job-directives-skip", job_directives_skip),
            ("--job-script-prologue", job_script_prologue),
            ("--job-script-epilogue", job_script_epilogue),
            ("--worker-extra-args", worker_extra_args),
        ):
            for v in _words(values):
                o.append(f"{flag}={v}")
        opt("--resource-spec", resource_spec)
        opt("--log-directory", log_directory)
        opt("--interface", interface)
        opt("--death-timeout", None if death_timeout is None else int(death_timeout))
        opt("--local-directory", local_directory)
        opt("--shebang", shebang)
        opt("--submit-command", submit_command)
        opt("--status-command", status_command)
        opt("--cancel-command", cancel_command)
        self._dashboard = dashboard_address
        self._poll_interval = poll_interval
        super().__init__(name, home, o, start=start)

    def _start_options(self):
        d = self._dashboard
        o = ["--nodes", "0"] + (["--no-dashboard"] if d is None else ["--dashboard-address", d])
        if self._poll_interval is not None:
            o += ["--poll-interval", str(self._poll_interval)]
        return o

    def job_script(self):
        """The script of one worker job: what ``rdask-jobqueue job-script`` prints for the same
        options."""
        return _rdask.job_script(["rdask"] + self._global() + ["job-script", "--backend", self._backend] + self._options)

    def scale(self, n=None, jobs=None):
        """Runs ``jobs`` batch jobs (or, with ``n``, enough for ``n`` workers)."""
        if jobs is None and n is None:
            raise TypeError("scale(): give n (workers) or jobs")
        # `scale N` counts nodes, one job each (`processes` workers per job).
        if jobs is None:
            per_job = max(1, int(self._option("--processes") or 1))
            jobs = -(-n // per_job)
        _cli(self._global() + ["scale", str(jobs)])

    def adapt(self, minimum_jobs=0, maximum_jobs=None, minimum=None, maximum=None, **kwargs):
        """Adds and removes batch jobs as the work needs, between the bounds (in jobs, or in
        workers with ``minimum``/``maximum``)."""
        args = ["adapt"]
        if minimum is not None or maximum is not None:
            args += ["--min-workers", str(minimum or 0)]
            if maximum is not None:
                args += ["--max-workers", str(maximum)]
        else:
            args += ["--min", str(minimum_jobs)]
            if maximum_jobs is not None:
                args += ["--max", str(maximum_jobs)]
        for key in ("target_duration", "interval"):
            if key in kwargs:
                args += ["--" + key.replace("_", "-"), str(kwargs.pop(key))]
        if kwargs:
            raise TypeError(f"adapt(): unknown keywords {sorted(kwargs)}")
        _cli(self._global() + args)

    def _option(self, flag):
        o = self._options
        return next((o[i + 1] for i in range(len(o) - 1) if o[i] == flag), None)


class SLURMCluster(JobQueueCluster):
    """Workers in Slurm jobs."""

    _backend = "slurm"


class PBSCluster(JobQueueCluster):
    """Workers in PBS jobs (PBS Pro, OpenPBS, PBS-style wrappers)."""

    _backend = "pbs"


class SGECluster(JobQueueCluster):
    """Workers in Son of Grid Engine jobs."""

    _backend = "sge"
