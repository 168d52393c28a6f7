#!/usr/bin/env bash
# Build HyperQueue's `hq` from source into bench/peers/hq (git-ignored), pinned to one commit.
# Idempotent: if bench/peers/hq already reports the pinned commit's version, it only says so.
#
#   HQ_REPO  where to clone from (default: GitHub; a local clone or mirror works too)
#   HQ_REF   the commit to build (default: the pin below)
#
# The build leaves out HyperQueue's defaults that need a C++ toolchain and cmake (the `highs`
# solver) and its terminal dashboard: `--no-default-features --features jemalloc,microlp`, so
# the scheduler keeps the allocator HyperQueue ships with and uses its pure-Rust LP solver.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="${HQ_REPO:-https://github.com/It4innovations/hyperqueue}"
REF="${HQ_REF:-680857bdfa45f92c50535cdef525f5a26bbcf55c}"
SRC="$HERE/hyperqueue"
BIN="$HERE/hq"
STAMP="$HERE/hq.commit"

if [ -x "$BIN" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$REF" ]; then
    echo "hq already built at $BIN from $REF ($("$BIN" --version)); nothing to do"
    exit 0
fi

if [ ! -d "$SRC/.git" ]; then
    echo "cloning $REPO into $SRC" >&2
    if ! git clone --quiet "$REPO" "$SRC"; then
        echo "build-hq.sh: cannot clone $REPO; set HQ_REPO to a reachable clone of HyperQueue" >&2
        exit 1
    fi
fi
if ! git -C "$SRC" cat-file -e "$REF^{commit}" 2>/dev/null; then
    git -C "$SRC" fetch --quiet "$REPO" "$REF" || {
        echo "build-hq.sh: $REPO does not have commit $REF" >&2
        exit 1
    }
fi
git -C "$SRC" checkout --quiet --detach "$REF"

echo "building hq at $REF (release; this takes a while)" >&2
(cd "$SRC" && cargo build --locked --release -p hyperqueue --bin hq \
    --no-default-features --features jemalloc,microlp)
cp "$SRC/target/release/hq" "$BIN.tmp"
mv "$BIN.tmp" "$BIN"
echo "$REF" > "$STAMP"
echo "hq built at $BIN: $("$BIN" --version)"
