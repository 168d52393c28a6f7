#!/usr/bin/env bash
# ci/setup-ucx.sh -- UCX 1.13 (Debian 12 packages) for the `ucx` cargo feature.
#
#   libucx-dev    headers, libucp/libucs and the pkg-config file `ucx` (ucx-sys links against it)
#   libclang-dev  libclang for bindgen (ucx-sys generates its bindings at build time)
#   ucx-utils     ucx_info (smoke test below) and ucx_perftest (the bench's reference figure)
#
# Idempotent: installs only missing packages (apt-get update only then). No daemon to start.
# Ends with a smoke test: pkg-config finds UCX and `ucx_info -d` lists the tcp and shared
# memory transports the tests use. Logs: apt output in /var/log/rdask-ci/apt-ucx.log.
# Run as root.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
T0=${EPOCHREALTIME//[.,]/} # start time in microseconds, for the timings printed
CI_NAME=ucx
# shellcheck source=ci/lib.sh
. "$(dirname "$0")/lib.sh"
trap on_exit EXIT

apt_install libucx-dev ucx-utils libclang-dev pkg-config

say "UCX $(pkg-config --modversion ucx)"
if [ -z "${SKIP_SMOKE:-}" ]; then
    transports=$(ucx_info -d | sed -n 's/^#[[:space:]]*Transport: //p' | sort -u | tr '\n' ' ')
    say "transports: $transports"
    for t in tcp self; do
        case " $transports " in
            *" $t "*) ;;
            *) say "UCX transport $t missing (ucx_info -d)"; exit 1 ;;
        esac
    done
fi
