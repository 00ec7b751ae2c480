#!/bin/sh
# Verify a gptossctl bundle WITHOUT gptossctl: OpenSSL 3, sha256sum and POSIX tools only (no Python).
# usage: sh audit-verify.sh BUNDLE_DIR [--threshold N] KEY.pub [KEY.pub ...]
# Exit 0 when at least N distinct given keys (default 1) each signed manifest.json validly, no given key's
# signature fails to verify, the bundle has not expired and every payload file matches; 1 with a FAIL line
# otherwise; 2 on a usage error (N larger than the number of distinct keys, an unreadable key).
# The same rule as `gptossctl bundle verify --trust K1 --trust K2 --threshold N`: see docs/bundle-format.md.
set -eu

# ---- BEGIN kofn signature check (source of truth; scripts/sync-kofn-shell.sh copies this block verbatim
# into ansible/roles/gptoss_bundle/files/bootstrap-verify.sh, and a test asserts both copies are equal)
KOFN_TYPE=application/vnd.gptossctl.manifest+json

# The key's algorithm, as OpenSSL describes the key. One kofn_keyid_ALG and one kofn_verify_ALG per
# algorithm: an ECDSA P-256 key ("Public-Key: (256 bit)" ... "ASN1 OID: prime256v1") is added here.
kofn_alg() {
  kofn_text=$(openssl pkey -pubin -in "$1" -text_pub -noout 2>/dev/null) || return 1
  case $kofn_text in
    "ED25519 Public-Key:"*) echo ed25519 ;;
    *) return 1 ;;
  esac
}

# Ed25519: the key id is SHA-256 of the raw 32-byte public key (the last 32 bytes of its 44-byte DER
# form). $1 is the script's own copy of the key, so $1.der is a scratch file of ours.
kofn_keyid_ed25519() {
  openssl pkey -pubin -in "$1" -outform DER -out "$1.der" 2>/dev/null || return 1
  [ "$(wc -c < "$1.der")" -eq 44 ] || return 1
  tail -c 32 "$1.der" | sha256sum | cut -d' ' -f1
}

# kofn_weak_ed25519 KEY.pub (after kofn_keyid_ed25519 wrote KEY.pub.der): 0 when the key is degenerate and
# must be refused. A point of small order verifies a signature (R = that point, S = 0) over every message:
# the eight such points' encodings with either sign bit (gptossctl's keys.SMALL_ORDER_ENCODINGS), and any
# encoding of y >= 2^255 - 19 (not canonical: low byte ed..ff, then thirty ff, then 7f or ff).
KOFN_FF=ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff
kofn_weak_ed25519() {
  kofn_raw=$(tail -c 32 "$1.der" | od -An -v -tx1 | tr -d ' \n')
  case $kofn_raw in
    0000000000000000000000000000000000000000000000000000000000000000|\
    0000000000000000000000000000000000000000000000000000000000000080|\
    0100000000000000000000000000000000000000000000000000000000000000|\
    0100000000000000000000000000000000000000000000000000000000000080|\
    26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05|\
    26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85|\
    c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a|\
    c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa|\
    ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f|\
    ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff) return 0 ;;
    e[d-f]${KOFN_FF}[7f]f|f[0-9a-f]${KOFN_FF}[7f]f) return 0 ;;
  esac
  [ ${#kofn_raw} -eq 64 ] || return 0  # not 32 bytes: nothing to trust
  return 1
}

# kofn_verify_ed25519 KEY.pub MESSAGE SIGNATURE: Ed25519 over the raw message (PureEdDSA).
kofn_verify_ed25519() {
  openssl pkeyutl -verify -pubin -inkey "$1" -rawin -in "$2" -sigfile "$3" >/dev/null 2>&1
}

# kofn_envelope ENVELOPE DIR: parse the DSSE envelope as JSON tokens, not by line positions, so a
# re-indented envelope reads the same. Accepts exactly what gptossctl's parser accepts in the form
# gptossctl writes (printable ASCII, strings of base64/hex/type characters, no escapes): the keys
# payloadType, payload and signatures once each, every signature exactly {keyid, sig}, key ids unique,
# base64 that decodes. Writes DIR/sigs ("KEYID SIG" lines) and DIR/payload.b64; FAIL and 1 otherwise.
kofn_envelope() {
  [ -f "$1" ] && [ ! -L "$1" ] || { echo "FAIL: $1 is missing or not a regular file"; return 1; }
  # gptossctl's limit (dsse.MAX_ENVELOPE_BYTES): whitespace padding must not pass here and fail there.
  [ "$(wc -c < "$1")" -le 67108864 ] || { echo "FAIL: manifest.dsse.json is larger than any real manifest"; return 1; }
  if [ -n "$(LC_ALL=C tr -d '\t\n\r -~' < "$1" | head -c 1 | od -An -c)" ]; then
    echo "FAIL: manifest.dsse.json holds bytes gptossctl never writes (not printable ASCII)"
    return 1
  fi
  LC_ALL=C tr '\t\n\r' '   ' < "$1" | LC_ALL=C awk -v out="$2" -v want="$KOFN_TYPE" '
    function bad(why) { print "FAIL: manifest.dsse.json is malformed: " why; failed = 1; exit 1 }
    function tok() { return (p <= nt) ? t[p] : "" }
    function expect(c) { if (tok() != c) bad("expected " c " at token " p); p++ }
    function str(   x) { if (tok() != "\"") bad("expected a string at token " p); x = v[p]; p++; return x }
    function b64(s) {  # what base64.b64decode(validate=True) takes
      return length(s) % 4 == 0 && s ~ /^[A-Za-z0-9+\/]*=?=?$/
    }
    function signature(   k, kid, sig, hassig, n) {
      expect("{")
      n = 0
      while (1) {
        k = str(); expect(":")
        if (k == "keyid" && kid == "") { kid = str(); if (kid == "") bad("an empty keyid") }
        else if (k == "sig" && !hassig) { sig = str(); hassig = 1 }
        else bad("a signature must have keyid and sig, once each (got " k ")")
        n++
        if (tok() != ",") break
        p++
      }
      expect("}")
      if (n != 2) bad("a signature must have exactly keyid and sig")
      if (!b64(sig)) bad("the signature of key " kid " is not base64")
      if (kid in seen) bad("key id " kid " signs twice")
      seen[kid] = 1
      print kid " " sig > (out "/sigs")
    }
    {
      nf = split($0, f, "\"")
      if (nf % 2 == 0) bad("a string is not closed")
      nt = 0
      for (i = 1; i <= nf; i++) {
        if (i % 2 == 0) {
          gsub(/\\\//, "/", f[i])  # "\/" is how some serialisers write "/"; no other escape occurs
          if (f[i] !~ /^[A-Za-z0-9+\/=._-]*$/) bad("a string holds characters gptossctl never writes")
          t[++nt] = "\""; v[nt] = f[i]
          continue
        }
        s = f[i]; gsub(/ /, "", s)
        if (s !~ /^[]{}:,[]*$/) bad("unexpected characters outside strings")
        for (j = 1; j <= length(s); j++) t[++nt] = substr(s, j, 1)
      }
      p = 1
      printf "" > (out "/sigs")
      expect("{")
      while (1) {
        k = str(); expect(":")
        if (k in top) bad("key " k " appears twice")
        top[k] = 1
        if (k == "payloadType") ptype = str()
        else if (k == "payload") payload = str()
        else if (k == "signatures") {
          expect("[")
          if (tok() == "]") p++
          else {
            while (1) { signature(); if (tok() != ",") break; p++ }
            expect("]")
          }
        }
        else bad("unexpected key " k)
        if (tok() != ",") break
        p++
      }
      expect("}")
      if (p <= nt) bad("text after the envelope")
      if (!("payloadType" in top) || !("payload" in top) || !("signatures" in top))
        bad("expected the keys payloadType, payload and signatures")
      if (ptype != want) bad("payloadType is not " want)
      if (!b64(payload)) bad("payload is not base64")
      print payload > (out "/payload.b64")
      done = 1
    }
    END { if (!done && !failed) { print "FAIL: manifest.dsse.json is empty"; exit 1 } }
  ' || return 1
}

# kofn_signatures BUNDLE_DIR THRESHOLD WORKDIR KEY.pub...: the k-of-n verdict. Passes (0) when at least
# THRESHOLD distinct given keys (by key id: one key given twice counts once) have a valid signature over
# PAE(payloadType, manifest.json). A signature by a key not given is ignored ("unknown signer"); a
# signature by a given key that does not verify fails (1): it is evidence of tampering, not a missing
# vote. manifest.json must also be the envelope's payload byte for byte. Usage errors return 2.
# Sets KOFN_SIGNERS to "KEYID (file), ..." of the keys that signed.
kofn_signatures() {
  kofn_b=$1 kofn_n=$2 kofn_w=$3
  shift 3
  case $kofn_n in
    ''|*[!0-9]*|0*) echo "threshold '$kofn_n' is not a whole number of at least 1" >&2; return 2 ;;
  esac
  [ ${#kofn_n} -le 6 ] || { echo "threshold $kofn_n is larger than any key set" >&2; return 2; }
  [ $# -ge 1 ] || { echo "no trusted keys given: give at least one KEY.pub" >&2; return 2; }
  mkdir "$kofn_w/kofn"
  : > "$kofn_w/kofn/keys"
  kofn_i=0
  for kofn_pub in "$@"; do
    kofn_i=$((kofn_i + 1))
    # Our own copy: the key that is identified is the key that verifies, whatever happens to the file.
    cp "$kofn_pub" "$kofn_w/kofn/in.$kofn_i" 2>/dev/null || { echo "$kofn_pub: cannot read it" >&2; return 2; }
    kofn_k=$kofn_w/kofn/in.$kofn_i
    kofn_a=$(kofn_alg "$kofn_k") || { echo "$kofn_pub: not a public key this script can check (Ed25519)" >&2; return 2; }
    kofn_id=$("kofn_keyid_$kofn_a" "$kofn_k") || { echo "$kofn_pub: cannot compute its key id" >&2; return 2; }
    case $kofn_id in
      *[!0-9a-f]*|'') echo "$kofn_pub: cannot compute its key id" >&2; return 2 ;;
    esac
    [ ${#kofn_id} -eq 64 ] || { echo "$kofn_pub: cannot compute its key id" >&2; return 2; }
    if "kofn_weak_$kofn_a" "$kofn_k"; then  # gptossctl refuses it too (key.weak): never a vote
      echo "$kofn_pub: a weak $kofn_a public key (small order or not canonical): refused" >&2
      return 2
    fi
    kofn_name=$(basename "$kofn_pub")
    if [ -f "$kofn_w/kofn/name.$kofn_id" ]; then  # the same key again: one vote, both names shown
      printf '%s, %s' "$(cat "$kofn_w/kofn/name.$kofn_id")" "$kofn_name" > "$kofn_w/kofn/name.$kofn_id"
      continue
    fi
    mv "$kofn_k" "$kofn_w/kofn/key.$kofn_id"
    printf '%s' "$kofn_name" > "$kofn_w/kofn/name.$kofn_id"
    echo "$kofn_id $kofn_a" >> "$kofn_w/kofn/keys"
  done
  kofn_d=$(wc -l < "$kofn_w/kofn/keys")
  if [ "$kofn_n" -gt "$kofn_d" ]; then
    echo "threshold $kofn_n needs at least $kofn_n distinct keys; $kofn_d given" >&2
    return 2
  fi

  kofn_envelope "$kofn_b/manifest.dsse.json" "$kofn_w/kofn" || return 1
  [ -f "$kofn_b/manifest.json" ] && [ ! -L "$kofn_b/manifest.json" ] \
    || { echo "FAIL: manifest.json is missing or not a regular file"; return 1; }
  # PAE(type, body) = "DSSEv1" SP len(type) SP type SP len(body) SP body: what every signature covers.
  printf 'DSSEv1 %d %s %d ' "${#KOFN_TYPE}" "$KOFN_TYPE" "$(wc -c < "$kofn_b/manifest.json")" > "$kofn_w/kofn/pae"
  cat "$kofn_b/manifest.json" >> "$kofn_w/kofn/pae"

  kofn_good=0 kofn_bad=0 KOFN_SIGNERS=""
  while read -r kofn_id kofn_a; do
    kofn_name=$(cat "$kofn_w/kofn/name.$kofn_id")
    kofn_sig=$(sed -n "s/^$kofn_id //p" "$kofn_w/kofn/sigs")
    if [ -z "$kofn_sig" ]; then
      echo "no signature by key $kofn_id ($kofn_name)"
      continue
    fi
    if printf '%s' "$kofn_sig" | base64 -d > "$kofn_w/kofn/sig" 2>/dev/null \
        && "kofn_verify_$kofn_a" "$kofn_w/kofn/key.$kofn_id" "$kofn_w/kofn/pae" "$kofn_w/kofn/sig"; then
      echo "signed by key $kofn_id ($kofn_name)"
      kofn_good=$((kofn_good + 1))
      KOFN_SIGNERS="$KOFN_SIGNERS${KOFN_SIGNERS:+, }$kofn_id ($kofn_name)"
    else
      echo "FAIL: signature does not match manifest.json: key $kofn_id ($kofn_name) (manifest edited or signature damaged)"
      kofn_bad=$((kofn_bad + 1))
    fi
  done < "$kofn_w/kofn/keys"
  # Signatures by keys not given: named, never counted, never a failure by themselves.
  awk 'NR == FNR { given[$1] = 1; next }
       !($1 in given) { print "unknown signer " $1 ": not one of the given keys, ignored" }' \
    "$kofn_w/kofn/keys" "$kofn_w/kofn/sigs"

  # Every reason is named (as gptossctl lists every finding), then the verdict.
  [ "$kofn_bad" -eq 0 ] || echo "FAIL: $kofn_bad signature(s) by given keys do not verify"
  [ "$kofn_good" -ge "$kofn_n" ] || echo "FAIL: $kofn_good of the given keys signed, $kofn_n required (threshold)"
  [ "$kofn_bad" -eq 0 ] && [ "$kofn_good" -ge "$kofn_n" ] || return 1
  base64 -d "$kofn_w/kofn/payload.b64" 2>/dev/null | cmp -s - "$kofn_b/manifest.json" \
    || { echo "FAIL: manifest.json is not the payload of manifest.dsse.json"; return 1; }
  return 0
}
# ---- END kofn signature check

usage() {
  echo "usage: sh audit-verify.sh BUNDLE_DIR [--threshold N] KEY.pub [KEY.pub ...]" >&2
  exit 2
}
[ $# -ge 2 ] || usage
B=$1
shift
N=1
n=$#
i=0
while [ "$i" -lt "$n" ]; do  # keep the key files as "$@", take --threshold N (or =N) out wherever it is
  a=$1
  shift
  i=$((i + 1))
  case $a in
    --threshold) [ "$i" -lt "$n" ] || usage; N=$1; shift; i=$((i + 1)) ;;
    --threshold=*) N=${a#*=} ;;
    -*) usage ;;
    *) set -- "$@" "$a" ;;
  esac
done
[ $# -ge 1 ] || usage
[ -d "$B" ] || { echo "$B is not a directory" >&2; exit 2; }
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT

# 1-3. Key ids, the envelope, the DSSE pre-authentication encoding of manifest.json, k of n signatures.
rc=0
kofn_signatures "$B" "$N" "$W" "$@" || rc=$?
[ "$rc" -eq 0 ] || exit "$rc"
cd "$B"

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
echo "OK: signed by $KOFN_SIGNERS ($N required), expires $EXPIRES, $(wc -l < SHA256SUMS) files verified"
