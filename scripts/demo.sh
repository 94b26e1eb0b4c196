#!/bin/sh
# The main job on a sample: back up /usr/share/doc into a new repository,
# back it up again (nothing changed), restore it, compare, and check every
# byte of the repository. Everything lives in a temporary directory, removed
# at the end (HOLDFAST_DEMO_KEEP=1 keeps it).
set -eu
cd "$(dirname "$0")/.."
SAMPLE="${1:-/usr/share/doc}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/holdfast-demo.XXXXXX")"
[ -n "${HOLDFAST_DEMO_KEEP:-}" ] || trap 'rm -rf "$WORK"' EXIT
export HOLDFAST_PASSWORD="demo passphrase" HOLDFAST_CACHE_DIR="$WORK/cache"
hf() { npx --no-install holdfast "$@"; }

echo "== init";                  hf init --repo "$WORK/repo"
echo "== backup $SAMPLE";        hf backup --repo "$WORK/repo" "$SAMPLE"
echo "== backup again";          hf backup --repo "$WORK/repo" "$SAMPLE"
echo "== snapshots";             hf snapshots --repo "$WORK/repo"
echo "== find '*.gz' (first 5)"; hf find --repo "$WORK/repo" '*.gz' | head -5
echo "== restore";               hf restore --repo "$WORK/repo" latest --target "$WORK/restored"
echo "== compare";               diff -r --no-dereference "$SAMPLE" "$WORK/restored$SAMPLE" && echo "restored tree is identical to $SAMPLE"
echo "== check --read-data";     hf check --repo "$WORK/repo" --read-data
