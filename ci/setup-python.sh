#!/usr/bin/env bash
# ci/setup-python.sh -- a Python virtual environment for the `rdask` package's tests.
#
#   $RDASK_VENV (default /opt/rdask-ci/venv) from the system's python3 (Debian's `python3-venv`
#   and `python3-dev` installed when `python3 -m venv` cannot make one), with cloudpickle,
#   numpy, pytest and maturin from pip. ci/test.sh then runs `pip install ./python` into it
#   and pytest. Ends with a smoke test.
#
# Idempotent: an existing venv with every package is left as it is; a broken one is made again.
# Knobs: RDASK_VENV, PYTHON (the interpreter to make the venv from, default python3).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
T0=${EPOCHREALTIME//[.,]/}
CI_NAME=python
# shellcheck source=ci/lib.sh
. "$(dirname "$0")/lib.sh"
trap on_exit EXIT

VENV=${RDASK_VENV:-/opt/rdask-ci/venv}
PYTHON=${PYTHON:-python3}
PACKAGES=(cloudpickle numpy pytest maturin)

have_all() {
    "$VENV/bin/python" -c 'import cloudpickle, numpy, pytest' 2>/dev/null && [ -x "$VENV/bin/maturin" ]
}

if ! command -v "$PYTHON" >/dev/null; then
    apt_install python3 python3-venv python3-dev
fi
if have_all; then
    say "$VENV has ${PACKAGES[*]}"
else
    if ! "$VENV/bin/python" -c '' 2>/dev/null; then
        rm -rf "$VENV"
        mkdir -p "$(dirname "$VENV")"
        if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
            # Debian's python3 makes venvs only with python3-venv (ensurepip).
            rm -rf "$VENV"
            apt_install python3-venv python3-dev
            "$PYTHON" -m venv "$VENV"
        fi
    fi
    say "installing ${PACKAGES[*]} into $VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q "${PACKAGES[@]}"
fi
[ -n "${SKIP_SMOKE:-}" ] || {
    "$VENV/bin/python" -c 'import sys, cloudpickle, numpy, pytest; print("python", sys.version.split()[0], "numpy", numpy.__version__)'
    "$VENV/bin/maturin" --version
}
