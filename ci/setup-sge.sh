#!/usr/bin/env bash
# ci/setup-sge.sh -- a single-host Son of Grid Engine 8.1.9 (Debian 12 packages), no systemd.
#
#   sge_qmaster + sge_execd on this host, cell "default" (SGE_ROOT=/var/lib/gridengine),
#   queue all.q with 16 slots, parallel environment "smp", root may submit (min_uid 0),
#   no load thresholds, 1 s scheduler interval, accounting flushed at once (qacct).
#   Ends with a smoke test (qsub -sync y of a 2-slot smp job).
#
# gridengine-client Conflicts: slurm-wlm-torque (both own /usr/bin/qsub, qstat, qdel): this
# script owns those names; the PBS-style wrappers live in /opt/slurm-torque/bin (setup-pbs.sh).
#
# Idempotent: installs only missing packages (preseeded; apt-get update only then), keeps
# running healthy daemons and re-applies the configuration online; daemons left dead or
# unresponsive by an earlier run are stopped (pid files, SIGKILL after 15 s) and restarted.
#
# Knobs: SLOTS=16  FORCE_RESTART=1  SKIP_SMOKE=1
# Logs: /var/spool/gridengine/qmaster/messages, /var/spool/gridengine/execd/*/messages,
#       accounting: /var/lib/gridengine/default/common/accounting; apt output in /var/log/rdask-ci/.
# Run as root. Stop with ci/batch-down.sh.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
T0=${EPOCHREALTIME//[.,]/} # start time in microseconds, for the timings printed
CI_NAME=sge
# shellcheck source=ci/lib.sh
. "$(dirname "$0")/lib.sh"

SLOTS=${SLOTS:-16}
HOST=$(hostname)
export SGE_ROOT=/var/lib/gridengine SGE_CELL=default
COMMON=$SGE_ROOT/$SGE_CELL/common
SPOOL=/var/spool/gridengine
QMASTER_PID=$SPOOL/qmaster/qmaster.pid

show_logs() {
    local f
    for f in "$SPOOL/qmaster/messages" "$SPOOL"/execd/*/messages; do
        [ -s "$f" ] || continue
        echo "----- tail of $f"
        tail -n 25 "$f"
    done
    qstat -f 2>/dev/null || true
}

trap on_exit EXIT

[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }

# ---------------------------------------------------------------- helpers
# execd spools under the name its address reverse-resolves to (here "localhost"): glob
# quiet CMD...: run it silently (qconf reports successes on stderr); show its output on failure
quiet() {
    local out
    out=$("$@" 2>&1) || { echo "$* failed: $out" >&2; return 1; }
}

execd_pidfiles() { compgen -G "$SPOOL/execd/*/execd.pid" || true; }
execd_alive() { local f; for f in $(execd_pidfiles); do alive "$f" sge_execd && return 0; done; return 1; }
stop_execd() { local f; for f in $(execd_pidfiles); do stop "$f" sge_execd 15; done; }

# ---------------------------------------------------------------- 1. packages
PKGS=(gridengine-master gridengine-exec gridengine-client gridengine-common)
if ! is_installed gridengine-master; then
    # preseed: the master's postinst creates cell "default" with this host as qmaster
    debconf-set-selections <<EOF
gridengine-common shared/gridengineconfig boolean true
gridengine-common shared/gridenginecell string $SGE_CELL
gridengine-common shared/gridenginemaster string $HOST
EOF
    is_installed slurm-wlm-torque && say "note: apt removes slurm-wlm-torque (conflicts with gridengine-client)"
fi
apt_install "${PKGS[@]}"

# ---------------------------------------------------------------- 2. cell and host names
if [ ! -f "$COMMON/bootstrap" ]; then # postinst skipped cluster creation: do it now
    mkdir -p "$SPOOL/qmaster/job_scripts" "$SPOOL/spooldb"
    chown -R sgeadmin:sgeadmin "$SPOOL"
    runuser -u sgeadmin -- /usr/share/gridengine/scripts/init_cluster \
        "$SGE_ROOT" "$SGE_CELL" "$SPOOL/spooldb" sgeadmin
fi
getent hosts "$HOST" >/dev/null || echo "127.0.0.1 $HOST" >>/etc/hosts
echo "$HOST" >"$COMMON/act_qmaster"
# /etc/hosts maps localhost and $HOST to 127.0.0.1, whose reverse lookup is "localhost": qmaster
# then refuses every client ("client IP resolved to host name localhost. This is not identical
# to clients host name vm"). host_aliases makes the two names one host; qmaster reads it at start.
REV=$(getent hosts "$(getent hosts "$HOST" | awk '{print $1; exit}')" | awk '{print $2; exit}')
ALIASES=
[ -n "$REV" ] && [ "$REV" != "$HOST" ] && ALIASES="$HOST $REV"
ALIASES_CHANGED=
if [ "$(cat "$COMMON/host_aliases" 2>/dev/null || true)" != "$ALIASES" ]; then
    ALIASES_CHANGED=1
    if [ -n "$ALIASES" ]; then echo "$ALIASES" >"$COMMON/host_aliases"; else rm -f "$COMMON/host_aliases"; fi
fi
mkdir -p /run/gridengine "$SPOOL/execd"
chown sgeadmin:sgeadmin /run/gridengine "$SPOOL/execd"

# ---------------------------------------------------------------- 3. qmaster
if [ -z "$ALIASES_CHANGED" ] && [ -z "${FORCE_RESTART:-}" ] && alive "$QMASTER_PID" sge_qmaster &&
    qconf -sh >/dev/null 2>&1; then
    say "sge_qmaster already running; re-applying the configuration"
else
    say "(re)starting sge_qmaster"
    stop_execd & # leftovers of an earlier run
    stop "$QMASTER_PID" sge_qmaster 15 &
    wait
    /usr/sbin/sge_qmaster # daemonizes and drops to sgeadmin
    for _ in $(seq 100); do qconf -sh >/dev/null 2>&1 && break; sleep 0.2; done
    qconf -sh >/dev/null
fi

# ---------------------------------------------------------------- 4. configuration (online, idempotent)
WORK=$(mktemp -d)
cd "$WORK"
qconf -sh | grep -qx "$HOST" || quiet qconf -ah "$HOST" # admin host: execd self-registers
qconf -ss 2>/dev/null | grep -qx "$HOST" || quiet qconf -as "$HOST"

# global config (the file must be called "global"): root may run jobs (min_uid/gid default
# 1000), load reports every 5 s, accounting records written at once so qacct sees them in ~1 s
# shellcheck disable=SC2094 # "global" below is a file name, not the config it reads
qconf -sconf global |
    sed -e 's/^min_uid .*/min_uid                      0/' \
        -e 's/^min_gid .*/min_gid                      0/' \
        -e 's/^load_report_time .*/load_report_time             00:00:05/' |
    perl -0pe 's/^reporting_params\s.*?sharelog=\S+/reporting_params             accounting=true reporting=false flush_time=00:00:01 joblog=false sharelog=00:00:00 accounting_flush_time=00:00:00/ms' \
        >global
quiet qconf -Mconf global

# scheduler: run every second and on every submit/finish (the default interval is 15 s)
qconf -ssconf |
    sed -e 's/^schedule_interval .*/schedule_interval                 0:0:1/' \
        -e 's/^flush_submit_sec .*/flush_submit_sec                  1/' \
        -e 's/^flush_finish_sec .*/flush_finish_sec                  1/' \
        -e 's/^job_load_adjustments .*/job_load_adjustments              NONE/' >sconf
quiet qconf -Msconf sconf

# parallel environment "smp": any number of slots, all on one host
cat >smp <<'EOF'
pe_name            smp
slots              9999
user_lists         NONE
xuser_lists        NONE
start_proc_args    NONE
stop_proc_args     NONE
allocation_rule    $pe_slots
control_slaves     TRUE
job_is_first_task  TRUE
urgency_slots      min
accounting_summary FALSE
qsort_args         NONE
EOF
if qconf -sp smp >/dev/null 2>&1; then quiet qconf -Mp smp; else quiet qconf -Ap smp; fi

# queue all.q: no load thresholds (the default np_load_avg=1.75 stops scheduling on a busy
# 2-core box), bash with shebang honoured (unix_behavior), no limits
cat >all.q <<EOF
qname                 all.q
hostlist              $HOST
seq_no                0
load_thresholds       NONE
suspend_thresholds    NONE
nsuspend              1
suspend_interval      00:05:00
priority              0
min_cpu_interval      00:05:00
processors            UNDEFINED
qtype                 BATCH INTERACTIVE
ckpt_list             NONE
pe_list               smp
rerun                 FALSE
slots                 $SLOTS
tmpdir                /tmp
shell                 /bin/bash
prolog                NONE
epilog                NONE
shell_start_mode      unix_behavior
starter_method        NONE
suspend_method        NONE
resume_method         NONE
terminate_method      NONE
notify                00:00:60
owner_list            NONE
user_lists            NONE
xuser_lists           NONE
subordinate_list      NONE
complex_values        NONE
projects              NONE
xprojects             NONE
calendar              NONE
initial_state         default
s_rt                  INFINITY
h_rt                  INFINITY
s_cpu                 INFINITY
h_cpu                 INFINITY
s_fsize               INFINITY
h_fsize               INFINITY
s_data                INFINITY
h_data                INFINITY
s_stack               INFINITY
h_stack               INFINITY
s_core                INFINITY
h_core                INFINITY
s_rss                 INFINITY
h_rss                 INFINITY
s_vmem                INFINITY
h_vmem                INFINITY
EOF
if qconf -sq all.q >/dev/null 2>&1; then quiet qconf -Mq all.q; else quiet qconf -Aq all.q; fi
cd /

# ---------------------------------------------------------------- 5. execd
if [ -z "${FORCE_RESTART:-}" ] && execd_alive; then
    say "sge_execd already running"
else
    say "(re)starting sge_execd"
    stop_execd
    /usr/sbin/sge_execd # registers this (admin) host as an exec host on its first start
fi
qmod -c "all.q@$HOST" >/dev/null 2>&1 || true # clear an error state left by an earlier run
qmod -e "all.q@$HOST" >/dev/null 2>&1 || true

# wait until the queue instance reports load and has no state flag (u = unknown, E, d, ...)
line=
for _ in $(seq 120); do
    line=$(qstat -f -q "all.q@$HOST" 2>/dev/null | awk -v q="all.q@$HOST" '$1 == q' || true)
    [ -n "$line" ] && [ "$(awk '{print $6}' <<<"$line")" = "" ] && break
    sleep 0.5
done
[ -n "$line" ] && [ "$(awk '{print $6}' <<<"$line")" = "" ] ||
    { echo "queue instance all.q@$HOST not ready: '$line'" >&2; exit 1; }
say "queue up: $(tr -s ' ' <<<"$line")"

[ -n "${SKIP_SMOKE:-}" ] && exit 0

# ---------------------------------------------------------------- 6. smoke test
dir=$(mktemp -d /tmp/rdask-ci-sge-smoke.XXXXXX)
cat >"$dir/job.sh" <<'EOF'
#!/bin/bash
echo "ok $JOB_ID slots=$NSLOTS pe=$PE queue=$QUEUE"
EOF
# -sync y waits for the job and exits with its exit status
if ! out=$(cd "$dir" && timeout 60 qsub -sync y -terse -N ci-smoke -pe smp 2 -l h_rt=0:1:0 \
    -o "$dir/out" -j y job.sh 2>&1); then
    echo "smoke job failed or timed out: $out" >&2
    exit 1
fi
jid=$(head -n 1 <<<"$out")
if ! grep -q "^ok $jid slots=2 pe=smp queue=all.q" "$dir/out"; then
    echo "smoke job $jid: unexpected output: $(cat "$dir/out" 2>/dev/null)" >&2
    exit 1
fi
say "smoke test ok: job $jid ($(cat "$dir/out"))"
rm -rf "$dir"
