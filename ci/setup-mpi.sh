#!/usr/bin/env bash
# ci/setup-mpi.sh -- OpenMPI and MPICH side by side (Debian 12 packages), for the `mpi` feature.
#
#   openmpi-bin libopenmpi-dev mpich libmpich-dev, and libclang-dev (the mpi crate's bindgen).
#   OpenMPI is the default (`mpicc`, `mpirun` alternatives): plain builds link it; builds for
#   MPICH set MPICC=mpicc.mpich and a target directory of their own (target/mpich), since the
#   mpi crate's build script does not notice MPICC changing. Tests call mpirun.openmpi and
#   mpirun.mpich by name.
#   Ends with a smoke test: a C program built with each mpicc runs on 3 ranks of each mpirun.
#
# Idempotent: installs only missing packages (apt-get update only then).
# Knobs: SKIP_SMOKE=1
# Run as root.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
T0=${EPOCHREALTIME//[.,]/} # start time in microseconds, for the timings printed
CI_NAME=mpi
# shellcheck source=ci/lib.sh
. "$(dirname "$0")/lib.sh"
trap on_exit EXIT

apt_install openmpi-bin libopenmpi-dev mpich libmpich-dev libclang-dev

# The default MPI is OpenMPI, whatever was installed first.
update-alternatives --quiet --set mpi /usr/bin/mpicc.openmpi
update-alternatives --quiet --set mpirun /usr/bin/mpirun.openmpi

if [ -z "${SKIP_SMOKE:-}" ]; then
    WORK=$(mktemp -d)
    cat >"$WORK/hello.c" <<'EOF'
#include <mpi.h>
#include <stdio.h>
int main(int argc, char **argv) {
    int rank, size;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    int sum = 0;
    MPI_Allreduce(&rank, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0) printf("%d %d\n", size, sum);
    MPI_Finalize();
    return 0;
}
EOF
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    mpicc.openmpi -o "$WORK/hello-openmpi" "$WORK/hello.c"
    mpicc.mpich -o "$WORK/hello-mpich" "$WORK/hello.c"
    got=$(timeout 60 mpirun.openmpi --oversubscribe -n 3 "$WORK/hello-openmpi")
    [ "$got" = "3 3" ] || { say "OpenMPI smoke test printed '$got', not '3 3'"; exit 1; }
    got=$(timeout 60 mpirun.mpich -n 3 "$WORK/hello-mpich")
    [ "$got" = "3 3" ] || { say "MPICH smoke test printed '$got', not '3 3'"; exit 1; }
    say "smoke test passed: OpenMPI $(mpirun.openmpi --version | head -n1 | grep -o '[0-9.]*$'), MPICH $(mpirun.mpich --version | sed -n "s/^ *Version: *//p")"
fi
