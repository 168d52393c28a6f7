#!/usr/bin/env bash
# ci/batch-down.sh -- stop the batch systems started by ci/setup-{slurm,sge,pbs}.sh (for
# developers; CI does not call it). Cancels all Slurm and SGE jobs, then stops slurmd (all
# nodes), slurmctld, slurmdbd, sge_execd, sge_qmaster and munged by their pid files: SIGTERM,
# then SIGKILL after STOP_TIMEOUT seconds (default 15). Processes not named in a pid file are
# never touched. Packages, configuration and spool state stay, so the setup scripts restart
# everything in seconds.
#
# PURGE=1 also removes the packages (apt-get purge --auto-remove) and all their state:
#   /etc/slurm /var/spool/slurm* /var/log/slurm /var/lib/gridengine /var/spool/gridengine
#   /opt/slurm-torque  -- the next setup run then behaves as on a fresh CI machine.
# Run as root.
set -euo pipefail
T0=${EPOCHREALTIME//[.,]/} # start time in microseconds, for the timings printed
STOP_TIMEOUT=${STOP_TIMEOUT:-15}
export SGE_ROOT=/var/lib/gridengine SGE_CELL=default

elapsed() { local us=$((${EPOCHREALTIME//[.,]/} - T0)); printf '%d.%ds' $((us / 1000000)) $((us / 100000 % 10)); }
say() { printf '[batch-down %6s] %s\n' "$(elapsed)" "$*"; }
trap 'say "wall time $(elapsed)"' EXIT

[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }

alive() { [ -s "$1" ] && [ "$(cat "/proc/$(cat "$1")/comm" 2>/dev/null)" = "$2" ]; }

# stop PIDFILE NAME: SIGTERM, wait, SIGKILL; only if the pid still belongs to NAME
stop() {
    local f=$1 name=$2 pid
    if alive "$f" "$name"; then
        pid=$(cat "$f")
        say "stopping $name (pid $pid)"
        kill "$pid" 2>/dev/null || true
        for _ in $(seq $((STOP_TIMEOUT * 5))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        if kill -0 "$pid" 2>/dev/null; then
            say "$name (pid $pid) ignored SIGTERM for ${STOP_TIMEOUT}s: SIGKILL"
            kill -9 "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$f"
}

# 1. jobs first, so that no slurmstepd / sge_shepherd outlives its daemon
if alive /run/slurm/slurmctld.pid slurmctld && scontrol ping >/dev/null 2>&1; then
    jobs=$(squeue -h -o %A 2>/dev/null || true)
    if [ -n "$jobs" ]; then
        say "cancelling Slurm jobs: ${jobs//$'\n'/ }"
        # shellcheck disable=SC2086
        scancel $jobs 2>/dev/null || true
        for _ in $(seq 40); do [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.5; done
    fi
fi
if alive /var/spool/gridengine/qmaster/qmaster.pid sge_qmaster && [ -x /usr/bin/qdel ]; then
    if [ -n "$(qstat -u '*' 2>/dev/null)" ]; then
        say "deleting SGE jobs"
        qdel -f -u '*' >/dev/null 2>&1 || true
        for _ in $(seq 40); do [ -z "$(qstat -u '*' 2>/dev/null)" ] && break; sleep 0.5; done
    fi
fi

# 2. daemons, in parallel where they do not depend on each other; munged last
for f in /run/slurm/slurmd-*.pid; do [ -e "$f" ] && stop "$f" slurmd & done
for f in /var/spool/gridengine/execd/*/execd.pid; do [ -e "$f" ] && stop "$f" sge_execd & done
wait
stop /run/slurm/slurmctld.pid slurmctld &
stop /run/slurm/slurmdbd.pid slurmdbd &
stop /var/spool/gridengine/qmaster/qmaster.pid sge_qmaster &
wait
stop /run/munge/munged.pid munged

# 3. optional: back to a machine without any of it
if [ "${PURGE:-}" = 1 ]; then
    say "purging packages and state"
    export DEBIAN_FRONTEND=noninteractive
    pkgs=()
    for p in slurm-wlm slurmctld slurmd slurm-client slurmdbd slurm-wlm-basic-plugins libslurm38 \
        libslurm-perl libslurmdb-perl libswitch-perl slurm-wlm-torque munge libmunge2 libpmix-dev \
        gridengine-master gridengine-exec gridengine-client gridengine-common; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'installed$\|config-files$' && pkgs+=("$p")
    done
    [ ${#pkgs[@]} -gt 0 ] && apt-get purge -y -qq --auto-remove "${pkgs[@]}" >/dev/null
    rm -rf /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/slurm \
        /etc/munge /var/lib/munge /var/log/munge /run/munge \
        /var/lib/gridengine /var/spool/gridengine /run/gridengine /opt/slurm-torque \
        /var/lib/apt/rdask-ci-updated
fi
say "all batch daemons stopped"
