"""Fixtures: every test's clusters live in a temporary RDASK_HOME."""

import os

import pytest

import rdask


@pytest.fixture(autouse=True, scope="session")
def rdask_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("rdask-home")
    old = os.environ.get("RDASK_HOME")
    os.environ["RDASK_HOME"] = str(home)
    yield home
    if old is None:
        del os.environ["RDASK_HOME"]
    else:
        os.environ["RDASK_HOME"] = old


@pytest.fixture(scope="module")
def cluster():
    with rdask.LocalCluster(n_workers=2, threads_per_worker=2) as c:
        yield c


@pytest.fixture
def client(cluster):
    with rdask.Client(cluster) as c:
        yield c
