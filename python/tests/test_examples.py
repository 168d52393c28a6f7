"""The Python examples run on a local cluster and check their own results."""

import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("numpy")

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples" / "python"


def run_example(name, *args, home):
    env = dict(os.environ, RDASK_HOME=str(home))
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_deconvolve_chunked_matches_the_whole_image(rdask_home):
    p = run_example("deconvolve.py", "--size", "32", "--chunks", "2", "--iterations", "5", home=rdask_home)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "OK: the chunked result matches" in p.stdout


def test_deconvolve_with_an_exact_halo_agrees_to_rounding(rdask_home):
    args = ["--size", "24", "--chunks", "3", "--iterations", "2", "--psf-radius", "2", "--halo", "exact"]
    p = run_example("deconvolve.py", *args, home=rdask_home)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "tolerance 1e-09" in p.stdout


def test_deconvolve_fails_when_the_chunks_lack_a_halo(rdask_home):
    p = run_example("deconvolve.py", "--size", "32", "--iterations", "5", "--halo", "0", home=rdask_home)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "MISMATCH" in p.stdout
