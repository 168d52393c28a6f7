#!/usr/bin/env bash
# ci/setup-chromium.sh -- headless Chromium and ChromeDriver (Debian 12 packages) for the
# dashboard's browser test (jobqueue/tests/dashboard.rs).
#
#   chromium         the browser
#   chromium-driver  chromedriver: the W3C WebDriver server the test drives the browser through
#
# Idempotent: installs only missing packages. No daemon to start (the test starts chromedriver
# itself, on a free port, and ends it). Ends with a smoke test: both report their versions.
# Logs: apt output in /var/log/rdask-ci/apt-chromium.log. Run as root.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
T0=${EPOCHREALTIME//[.,]/} # start time in microseconds, for the timings printed
CI_NAME=chromium
# shellcheck source=ci/lib.sh
. "$(dirname "$0")/lib.sh"
trap on_exit EXIT

apt_install chromium chromium-driver

say "$(chromium --version 2>/dev/null | head -1); $(chromedriver --version | head -1)"
