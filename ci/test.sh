#!/usr/bin/env bash
# The README's test command: formatting, lints, and the whole test suite with every feature.
# Idempotent; safe to run again after a failed or interrupted run.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# Tests start real clusters; keep their state out of the user's ~/.rdask.
RDASK_HOME="$(mktemp -d -t rdask-ci-XXXXXX)"
export RDASK_HOME

step() { printf '\n==> %s\n' "$*"; }

# System packages and services for the test suite (batch systems, MPI, UCX) are
# installed and started by the scripts below; each does nothing when already done.
for setup in ci/setup-*.sh; do
    [ -e "$setup" ] || continue
    step "$setup"
    bash "$setup"
done

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, all features, warnings are errors)"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

step "cargo doc (all features, warnings are errors: broken intra-doc links fail)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --all-features --no-deps --locked

step "cargo build without default features (a plain build needs only Rust)"
cargo build --workspace --locked

step "cargo test (all features)"
cargo test --workspace --all-features --locked

step "cargo test: the MPI bootstrap again, built against MPICH (the run above used OpenMPI)"
# A target directory of its own: the mpi crate's build script does not notice MPICC changing.
CARGO_TARGET_DIR=target/mpich MPICC=mpicc.mpich cargo test -p rdask-jobqueue -p rdask-examples \
    --features rdask-jobqueue/mpi,rdask-examples/mpi --test mpi --locked

step "Python: pip install ./python into the venv of ci/setup-python.sh, then pytest"
VENV="${RDASK_VENV:-/opt/rdask-ci/venv}"
# A dev-profile build: the tests need no optimised extension, and it takes a fraction of the time.
MATURIN_PEP517_ARGS="--profile dev" "$VENV/bin/pip" install -q --force-reinstall --no-deps ./python
(cd python && "$VENV/bin/python" -m pytest -q)

step "no process started by the tests is left running"
sleep 1
# Rust tests' processes run from target/, the Python tests' as `$VENV/bin/python -m rdask`.
for pattern in "$PWD/target/" "$VENV/bin/python -m rdask"; do
    if pgrep -f "$pattern" >/dev/null; then
        pgrep -af "$pattern"
        echo "error: the tests left processes behind" >&2
        exit 1
    fi
done
echo "all checks passed"
