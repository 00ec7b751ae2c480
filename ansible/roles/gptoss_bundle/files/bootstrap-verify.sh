#!/bin/sh
# Before gptossctl exists on a host, check what it is about to be bootstrapped from, with OpenSSL 3 and
# sha256sum only (the same steps as docs/audit-verify.sh): one trusted key's Ed25519 signature over
# manifest.json (DSSE), the bundle not expired, SHA256SUMS the signed list, and every wheel under
# payload/wheels matching it. `gptossctl bundle verify` then checks everything (k of n, every byte).
# usage: sh bootstrap-verify.sh BUNDLE_DIR TRUSTED_KEY.pub [MORE_KEYS.pub ...]
set -eu
B=$1
shift
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
TYPE=application/vnd.gptossctl.manifest+json
printf 'DSSEv1 %d %s %d ' "${#TYPE}" "$TYPE" "$(wc -c < "$B/manifest.json")" > "$W/pae.bin"
cat "$B/manifest.json" >> "$W/pae.bin"

SIGNER=""
for PUB in "$@"; do
  KEYID=$(openssl pkey -pubin -in "$PUB" -outform DER | tail -c 32 | sha256sum | cut -d' ' -f1)
  grep -A1 "\"keyid\": \"$KEYID\"" "$B/manifest.dsse.json" | sed -n 's/.*"sig": "\([^"]*\)".*/\1/p' > "$W/sig.b64"
  [ -s "$W/sig.b64" ] || continue
  base64 -d "$W/sig.b64" > "$W/sig.bin"
  if openssl pkeyutl -verify -pubin -inkey "$PUB" -rawin -in "$W/pae.bin" -sigfile "$W/sig.bin" >/dev/null 2>&1; then
    SIGNER=$KEYID
    break
  fi
done
[ -n "$SIGNER" ] || { echo "FAIL: no valid signature by a trusted key on $B/manifest.json"; exit 1; }

EXPIRES=$(sed -n 's/^ "expires": "\(.*\)",$/\1/p' "$B/manifest.json")
NOW=$(date -u +%Y-%m-%dT%H:%M:%S+00:00)
[ "$NOW" \< "$EXPIRES" ] || { echo "FAIL: the bundle expired at $EXPIRES"; exit 1; }

WANT=$(sed -n 's/^ "sha256sums": "\([0-9a-f]*\)",$/\1/p' "$B/manifest.json")
HAVE=$(sha256sum "$B/SHA256SUMS" | cut -d' ' -f1)
[ "$WANT" = "$HAVE" ] || { echo "FAIL: SHA256SUMS is not the signed list"; exit 1; }

# Every wheel present is listed, no link, and each matches: uv installs from exactly these.
[ -d "$B/payload/wheels" ] || { echo "FAIL: the bundle carries no wheels to bootstrap gptossctl from"; exit 1; }
[ -z "$(find "$B/payload/wheels" ! -type f ! -type d)" ] || { echo "FAIL: links or special files in payload/wheels"; exit 1; }
(cd "$B" && find payload/wheels -type f | LC_ALL=C sort) > "$W/have"
grep '  payload/wheels/' "$B/SHA256SUMS" | cut -c 67- | LC_ALL=C sort > "$W/want"
cmp -s "$W/have" "$W/want" || { echo "FAIL: payload/wheels differs from the signed list"; exit 1; }
grep '  payload/wheels/' "$B/SHA256SUMS" > "$W/wheels.sums"
(cd "$B" && sha256sum --check --strict --quiet "$W/wheels.sums") || { echo "FAIL: a wheel does not match"; exit 1; }
echo "OK: signed by $SIGNER, expires $EXPIRES, $(wc -l < "$W/wheels.sums") wheels verified"
