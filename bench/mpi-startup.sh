#!/usr/bin/env bash
# Startup of `rdask-jobqueue mpi`: the time from starting mpirun until every worker rank has
# registered with the scheduler, which is when rank 1 starts the client command (here one
# that prints the time), for OpenMPI and MPICH. Also the whole job with a client that does
# nothing (start, clean end, every rank finalised).
#
#   bench/mpi-startup.sh [RANKS=8] [RUNS=5]
#
# Builds (release, feature mpi) target/release/rdask-jobqueue against OpenMPI and
# target/mpich/release/rdask-jobqueue against MPICH first. Prints one line per run and the
# median of each MPI.
set -euo pipefail
cd "$(dirname "$0")/.."
RANKS=${1:-8}
RUNS=${2:-5}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 RDASK_LOG=warn

cargo build --release --quiet -p rdask-jobqueue --features mpi
CARGO_TARGET_DIR=target/mpich MPICC=mpicc.mpich cargo build --release --quiet -p rdask-jobqueue --features mpi

now_ms() { echo $((${EPOCHREALTIME//[.,]/} / 1000)); }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

HOME_DIR=$(mktemp -d)
trap 'rm -rf "$HOME_DIR"' EXIT
for mpi in openmpi mpich; do
    if [ "$mpi" = openmpi ]; then
        bin=target/release/rdask-jobqueue
        run=(mpirun.openmpi --oversubscribe -n "$RANKS")
    else
        bin=target/mpich/release/rdask-jobqueue
        run=(mpirun.mpich -n "$RANKS")
    fi
    startups=() totals=()
    for i in $(seq "$RUNS"); do
        t0=$(now_ms)
        # The client command starts once all RANKS-2 workers have registered.
        t1=$("${run[@]}" "$bin" --home "$HOME_DIR" mpi -- bash -c 'echo $((${EPOCHREALTIME//[.,]/} / 1000))')
        t2=$(now_ms)
        startups+=($((t1 - t0)))
        totals+=($((t2 - t0)))
        echo "$mpi -n $RANKS run $i: all $((RANKS - 2)) workers registered after $((t1 - t0)) ms; whole job $((t2 - t0)) ms"
    done
    echo "$mpi -n $RANKS median: workers registered after $(printf '%s\n' "${startups[@]}" | median) ms, whole job $(printf '%s\n' "${totals[@]}" | median) ms"
done
