#!/bin/sh
# Copy the k-of-n signature check from docs/audit-verify.sh (where it is maintained) into the Ansible
# role's bootstrap-verify.sh, which must stay one self-contained file (ansible.builtin.script sends one
# file). `--check`: exit 1 when the two copies differ (tests/integration/test_fleet_scripts.py asserts it).
set -eu
cd "$(dirname "$0")/.."
SRC=docs/audit-verify.sh
DST=ansible/roles/gptoss_bundle/files/bootstrap-verify.sh
BEGIN='^# ---- BEGIN kofn signature check'
END='^# ---- END kofn signature check'
block() { sed -n "/$BEGIN/,/$END/p" "$1"; }
[ -n "$(block "$SRC")" ] && [ -n "$(block "$DST")" ] || { echo "markers missing in $SRC or $DST" >&2; exit 2; }
if [ "${1:-}" = --check ]; then
  [ "$(block "$SRC")" = "$(block "$DST")" ] || { echo "$DST: the signature check differs from $SRC: run $0" >&2; exit 1; }
  exit 0
fi
tmp=$(mktemp)
{ sed "/$BEGIN/,\$d" "$DST"; block "$SRC"; sed "1,/$END/d" "$DST"; } > "$tmp"
cat "$tmp" > "$DST"
rm -f "$tmp"
