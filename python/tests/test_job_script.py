"""``job_script()`` of the cluster classes is the CLI's ``job-script`` for the same values, across
dask-jobqueue's golden cases (kept in the repository for the Rust golden tests)."""

import json
import os
import subprocess
import sys

import pytest

import rdask

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GOLDEN = os.path.join(REPO, "jobqueue", "tests", "golden", "dask-jobqueue")
CLASSES = {"SLURMJob": ("slurm", rdask.SLURMCluster), "PBSJob": ("pbs", rdask.PBSCluster), "SGEJob": ("sge", rdask.SGECluster)}
# dask-jobqueue keywords that rdask has no use for: workers are always `sys.executable -m rdask`.
UNUSED = {"python", "nanny"}


def cases():
    with open(os.path.join(GOLDEN, "cases.json")) as f:
        all_cases = json.load(f)["cases"]
    for case, keywords in sorted(all_cases.items()):
        if keywords["_class"] in CLASSES:
            kw = {k: v for k, v in keywords.items() if not k.startswith("_") and k not in UNUSED}
            kw.setdefault("job_name", "dask-worker")
            yield pytest.param(case, keywords["_class"], kw, id=case)


def cli_args(backend, kw):
    """The CLI's options for dask-jobqueue keywords: the same names, in kebab case."""
    args = ["--name", "dummy-name", "job-script", "--backend", backend]
    for key, value in kw.items():
        flag = "--" + key.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, list):
            args += [f"{flag}={v}" for v in value]
        else:
            args += [flag, str(value)]
    return args


def before_worker(script, marker):
    lines = []
    for line in script.splitlines():
        if marker in line:
            break
        lines.append(line)
    return lines


@pytest.mark.parametrize("case,cls,kw", list(cases()))
def test_job_script_is_the_clis(case, cls, kw):
    backend, Cluster = CLASSES[cls]
    ours = Cluster(**kw, name="dummy-name", start=False).job_script()
    cli = subprocess.run(
        [sys.executable, "-m", "rdask"] + cli_args(backend, kw), capture_output=True, text=True, check=True
    ).stdout
    assert ours == cli
    # The worker command is this interpreter's `-m rdask`, the directives dask-jobqueue's.
    assert f"{sys.executable} -m rdask --name dummy-name" in ours
    with open(os.path.join(GOLDEN, f"{case}.sh")) as f:
        theirs = f.read()
    # Beyond dask-jobqueue's: the job's output files, in the cluster's state directory unless
    # `log_directory` says otherwise.
    logs = os.path.join(os.environ["RDASK_HOME"], "dummy-name", "logs")
    directives = [line for line in before_worker(ours, sys.executable) if logs not in line]
    assert directives == before_worker(theirs, "/usr/bin/python3")
    # The rdask-jobqueue binary, where built, prints the same but for its own path.
    binary = os.path.join(REPO, "target", "debug", "rdask-jobqueue")
    if os.path.exists(binary):
        out = subprocess.run([binary] + cli_args(backend, kw), capture_output=True, text=True, check=True).stdout
        assert out.replace(binary, f"{sys.executable} -m rdask") == ours


def test_every_golden_system_is_covered():
    covered = {c.values[1] for c in cases()}
    assert covered == set(CLASSES)


def test_a_bad_keyword_value_is_an_error_with_the_clis_exit_code():
    with pytest.raises(rdask.RdaskError) as info:
        rdask.SLURMCluster(cores=8, memory="lots", start=False).job_script()
    assert info.value.exit_code == 2
