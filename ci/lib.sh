# Helpers shared by the ci/setup-*.sh scripts. Source it after setting CI_NAME (slurm, sge,
# pbs) and T0 (the start time in microseconds, from $EPOCHREALTIME).

CIDIR=/var/log/rdask-ci

elapsed() { local us=$((${EPOCHREALTIME//[.,]/} - T0)); printf '%d.%ds' $((us / 1000000)) $((us / 100000 % 10)); }
say() { printf '[setup-%s %6s] %s\n' "$CI_NAME" "$(elapsed)" "$*"; }

# on_exit: every setup script's EXIT trap: tidy up, and on failure show the daemon logs
# (through the script's own show_logs, when it has one).
on_exit() {
    local rc=$?
    [ -n "${POLICY_CREATED:-}" ] && rm -f /usr/sbin/policy-rc.d
    [ -n "${WORK:-}" ] && rm -rf "$WORK"
    if [ "$rc" -ne 0 ]; then
        say "FAILED (exit $rc); daemon logs follow"
        if declare -F show_logs >/dev/null; then show_logs; fi
    fi
    say "wall time $(elapsed)"
}

is_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q ' installed$'; }

# apt_update [force]: refresh the package lists unless a setup script did so within the hour.
apt_update() {
    local stamp=/var/lib/apt/rdask-ci-updated
    if [ -n "${1:-}" ] || [ -z "$(find "$stamp" -mmin -60 2>/dev/null)" ]; then
        apt-get update -qq && touch "$stamp"
    fi
}

# apt_install PKG...: install the missing ones quietly; a policy-rc.d keeps their
# postinst scripts from starting services (the caller's on_exit removes it again).
apt_install() {
    local missing=() p log="$CIDIR/apt-$CI_NAME.log"
    for p in "$@"; do is_installed "$p" || missing+=("$p"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    say "installing ${missing[*]}"
    mkdir -p "$CIDIR"
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        POLICY_CREATED=1
    fi
    apt_update
    if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$log" 2>&1; then
        # stale lists (a superseded version is gone from the mirror): refresh once and retry
        apt_update force
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$log" 2>&1 || { cat "$log"; return 1; }
    fi
}

# alive PIDFILE NAME: the pid file names a live process called NAME (guards against pid reuse)
alive() { [ -s "$1" ] && [ "$(cat "/proc/$(cat "$1")/comm" 2>/dev/null)" = "$2" ]; }

# stop PIDFILE NAME [SECONDS]: SIGTERM, then SIGKILL after SECONDS (default 10)
stop() {
    local f=$1 name=$2 secs=${3:-10} pid
    if alive "$f" "$name"; then
        pid=$(cat "$f")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq $((secs * 5))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
}
