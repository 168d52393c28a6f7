"""rdask: a Dask-style distributed task runtime for HPC, written in Rust.

``Client``, ``Future``, ``as_completed`` and the cluster managers (``LocalCluster``,
``SLURMCluster``, ``PBSCluster``, ``SGECluster``) take Dask's and dask-jobqueue's names;
``python -m rdask`` is the ``rdask-jobqueue`` command.
"""

from rdask._rdask import RdaskError
from rdask._serialize import RemoteError, RemoteTraceback
from rdask.client import CancelledError, Client, CommandJob, Executor, Future, TaskError, as_completed, wait
from rdask.cluster import JobQueueCluster, LocalCluster, PBSCluster, SGECluster, SLURMCluster

__all__ = [
    "CancelledError",
    "Client",
    "CommandJob",
    "Executor",
    "Future",
    "JobQueueCluster",
    "LocalCluster",
    "PBSCluster",
    "RdaskError",
    "RemoteError",
    "RemoteTraceback",
    "SGECluster",
    "SLURMCluster",
    "TaskError",
    "as_completed",
    "wait",
]
