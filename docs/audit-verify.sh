#!/bin/sh
# Verify a gptossctl bundle WITHOUT gptossctl: OpenSSL 3, sha256sum and POSIX tools only.
# usage: sh audit-verify.sh BUNDLE_DIR TRUSTED_KEY.pub
# Exit 0 when the trusted key's signature is valid, the bundle has not expired and every payload
# file matches; non-zero with a message otherwise. See docs/bundle-format.md for each step.
set -eu
B=$1
PUB=$(cd "$(dirname "$2")" && pwd)/$(basename "$2")
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
cd "$B"

# 1. Key id = SHA-256 of the raw 32-byte Ed25519 public key (the last 32 bytes of its DER form).
KEYID=$(openssl pkey -pubin -in "$PUB" -outform DER | tail -c 32 | sha256sum | cut -d' ' -f1)

# 2. That key's signature from the envelope (one "keyid" line, then its "sig" line).
grep -A1 "\"keyid\": \"$KEYID\"" manifest.dsse.json | sed -n 's/.*"sig": "\([^"]*\)".*/\1/p' > "$W/sig.b64"
[ -s "$W/sig.b64" ] || { echo "FAIL: no signature by key $KEYID"; exit 1; }
base64 -d "$W/sig.b64" > "$W/sig.bin"

# 3. DSSE pre-authentication encoding of manifest.json, then the Ed25519 check.
TYPE=application/vnd.gptossctl.manifest+json
printf 'DSSEv1 %d %s %d ' "${#TYPE}" "$TYPE" "$(wc -c < manifest.json)" > "$W/pae.bin"
cat manifest.json >> "$W/pae.bin"
openssl pkeyutl -verify -pubin -inkey "$PUB" -rawin -in "$W/pae.bin" -sigfile "$W/sig.bin" >/dev/null \
  || { echo "FAIL: signature does not match manifest.json"; exit 1; }

# 4. Not expired (ISO 8601 UTC strings compare in time order).
EXPIRES=$(sed -n 's/^ "expires": "\(.*\)",$/\1/p' manifest.json)
NOW=$(date -u +%Y-%m-%dT%H:%M:%S+00:00)
[ "$NOW" \< "$EXPIRES" ] || { echo "FAIL: expired at $EXPIRES"; exit 1; }

# 5. The checksum list is the one the signed manifest names.
WANT=$(sed -n 's/^ "sha256sums": "\([0-9a-f]*\)",$/\1/p' manifest.json)
HAVE=$(sha256sum SHA256SUMS | cut -d' ' -f1)
[ "$WANT" = "$HAVE" ] || { echo "FAIL: SHA256SUMS is not the signed list"; exit 1; }

# 6. No links or special files, no file outside the list, and every listed file intact.
[ -z "$(find payload ! -type f ! -type d)" ] || { echo "FAIL: links or special files in payload/"; exit 1; }
find payload -type f | LC_ALL=C sort > "$W/have"
cut -c 67- SHA256SUMS | LC_ALL=C sort > "$W/want"
cmp -s "$W/have" "$W/want" || { echo "FAIL: payload files differ from the list:"; diff "$W/want" "$W/have" || true; exit 1; }
sha256sum --check --strict --quiet SHA256SUMS || { echo "FAIL: a payload file does not match"; exit 1; }
echo "OK: signed by $KEYID, expires $EXPIRES, $(wc -l < SHA256SUMS) files verified"
