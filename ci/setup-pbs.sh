#!/usr/bin/env bash
# ci/setup-pbs.sh -- PBS/Torque-style qsub/qstat/qdel for tests, backed by the Slurm cluster.
#
# Debian 12 has no PBS/Torque server. The closest thing is Slurm's slurm-wlm-torque: Perl
# wrappers (qsub -> sbatch, #PBS directives parsed by sbatch; qstat/qdel via the Slurm API).
# That package Conflicts: gridengine-client (both own /usr/bin/qsub ...), so it is NOT
# installed through dpkg: its .deb (same version as slurm-client) is unpacked into
# /opt/slurm-torque/root and the wrappers are linked into /opt/slurm-torque/bin, next to links
# to sbatch/salloc/srun (qsub runs "${FindBin::Bin}/sbatch"). SGE's qsub stays /usr/bin/qsub.
#
# Needs Slurm, so it first runs ci/setup-slurm.sh (without its smoke test); that is a no-op
# when Slurm is already up with the same config, so running both scripts restarts nothing.
# Ends with a smoke test through /opt/slurm-torque/bin/qsub.
#
# Knobs: SKIP_SMOKE=1
# Logs: Slurm's (/var/log/slurm/), apt output in /var/log/rdask-ci/. Run as root.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
T0=${EPOCHREALTIME//[.,]/} # start time in microseconds, for the timings printed
CI_NAME=pbs
# shellcheck source=ci/lib.sh
. "$(dirname "$0")/lib.sh"

HERE=$(cd "$(dirname "$0")" && pwd)
PREFIX=/opt/slurm-torque
BIN=$PREFIX/bin

show_logs() {
    if [ -s /var/log/slurm/slurmctld.log ]; then
        echo "----- tail of slurmctld.log"
        tail -n 25 /var/log/slurm/slurmctld.log
    fi
}
trap on_exit EXIT

[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }

# ---------------------------------------------------------------- 1. Slurm
SKIP_SMOKE=1 bash "$HERE/setup-slurm.sh" 2>&1 | sed 's/^/  /'

# ---------------------------------------------------------------- 2. wrappers
# runtime deps of the wrappers (no conflict with gridengine)
apt_install libslurm-perl libslurmdb-perl libswitch-perl slurm-client
VERSION=$(dpkg-query -W -f='${Version}' slurm-client)
if [ -x "$BIN/qsub" ] && [ "$(cat "$PREFIX/VERSION" 2>/dev/null || true)" = "$VERSION" ]; then
    say "wrappers $VERSION already in $BIN"
else
    say "unpacking slurm-wlm-torque $VERSION into $PREFIX"
    WORK=$(mktemp -d)
    chown _apt "$WORK" 2>/dev/null || true # apt downloads as _apt
    apt_update
    if ! (cd "$WORK" && apt-get download -qq "slurm-wlm-torque=$VERSION" 2>/dev/null); then
        apt_update force
        (cd "$WORK" && apt-get download -qq "slurm-wlm-torque=$VERSION")
    fi
    rm -rf "$PREFIX"
    mkdir -p "$BIN"
    dpkg-deb -x "$WORK"/slurm-wlm-torque_*.deb "$PREFIX/root"
    for f in "$PREFIX"/root/usr/bin/*; do ln -s "$f" "$BIN/"; done
    for f in sbatch salloc srun; do ln -s "/usr/bin/$f" "$BIN/$f"; done
    echo "$VERSION" >"$PREFIX/VERSION"
fi
say "PBS-style commands: $(cd "$BIN" && echo *)"

[ -n "${SKIP_SMOKE:-}" ] && exit 0

# ---------------------------------------------------------------- 3. smoke test
dir=$(mktemp -d /tmp/rdask-ci-pbs-smoke.XXXXXX)
cat >"$dir/job.pbs" <<'EOF'
#!/bin/bash
#PBS -N ci-pbs-smoke
#PBS -l nodes=1:ppn=1
#PBS -l walltime=00:01:00
echo "ok $SLURM_JOB_ID"
EOF
# qsub prints the bare numeric id. -o/-e must be given on the command line: the wrapper
# always passes its own -o/-e to sbatch, overriding #PBS -o/-e/-j.
jid=$(cd "$dir" && "$BIN/qsub" -o "$dir/out" -j oe job.pbs)
[[ $jid =~ ^[0-9]+$ ]] || { echo "qsub printed '$jid'" >&2; exit 1; }
st=
for _ in $(seq 120); do # qstat -f: "job_state = Q|R|C" (C for every finished state)
    st=$("$BIN/qstat" -f "$jid" 2>/dev/null | awk '$1 == "job_state" {print $3}' || true)
    [ "$st" = C ] && break
    sleep 0.5
done
final=$(scontrol show job -o "$jid" 2>/dev/null | grep -o 'JobState=[A-Z_]*' || true)
if [ "$st" != C ] || [ "$final" != JobState=COMPLETED ] || ! grep -qx "ok $jid" "$dir/out"; then
    echo "PBS smoke job $jid: qstat state '$st', slurm $final; output: $(cat "$dir/out" 2>/dev/null)" >&2
    exit 1
fi
say "smoke test ok: job $jid via $BIN/qsub, state C ($final)"
rm -rf "$dir"
