#!/usr/bin/env bash
# Create bench/peers/.venv with the pinned Dask peer (see requirements.txt).
# Idempotent: if the venv already has every pinned version, it only says so.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv"
REQS="$HERE/requirements.txt"
PY="$VENV/bin/python"

# Exit 0 iff every `name==version` line of requirements.txt is installed in the venv.
pins_satisfied() {
    [ -x "$PY" ] || return 1
    "$PY" - "$REQS" <<'PYEOF'
import re, sys
from importlib.metadata import version, PackageNotFoundError
ok = True
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    m = re.fullmatch(r"([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==(\S+)", line)
    if not m:
        print(f"setup.sh: unparsable pin: {line}", file=sys.stderr)
        sys.exit(1)
    name, want = m.group(1), m.group(3)
    try:
        have = version(name)
    except PackageNotFoundError:
        have = None
    if have != want:
        ok = False
sys.exit(0 if ok else 1)
PYEOF
}

if pins_satisfied; then
    echo "dask peer already installed in $VENV (pins from $REQS satisfied); nothing to do"
    exit 0
fi

if [ ! -x "$PY" ]; then
    rm -rf "$VENV"
    echo "creating virtualenv at $VENV" >&2
    python3 -m venv "$VENV"
fi

"$PY" -m pip install --quiet --disable-pip-version-check -r "$REQS"

if ! pins_satisfied; then
    echo "setup.sh: pins still not satisfied after install" >&2
    exit 1
fi

echo "dask peer installed in $VENV: $("$PY" -c 'import dask, distributed; print("dask", dask.__version__, "distributed", distributed.__version__)')"
