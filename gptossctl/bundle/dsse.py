"""DSSE envelopes (the signature wrapper of in-toto and sigstore) around the bundle manifest.

Signatures cover PAE(payloadType, payload), never the JSON around them, so re-indenting the
envelope cannot change what was signed, and a signature cannot be moved to another payload type.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field

from gptossctl.errors import CheckFailed, Finding, UsageError
from gptossctl.fsutil import DuplicateKey, refuse_duplicate_keys

PAYLOAD_TYPE = "application/vnd.gptossctl.manifest+json"
MAX_ENVELOPE_BYTES = 64 << 20  # a manifest of a million files stays well below this
# No trust policy counts more than 64 signatures (--threshold is at most 64, one signature per key), so a 65th
# can never be needed; an envelope with more is refused before a single one is looked at (200,000 junk
# signatures would otherwise cost a key lookup, maybe a verification, and a finding each).
MAX_SIGNATURES = 64


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding: 'DSSEv1' SP len(type) SP type SP len(body) SP body."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


@dataclass(frozen=True)
class Signature:
    keyid: str
    sig: bytes = field(repr=False)


@dataclass(frozen=True)
class Envelope:
    payload: bytes
    payload_type: str
    signatures: tuple[Signature, ...]

    def signed_message(self) -> bytes:
        return pae(self.payload_type, self.payload)

    def with_signature(self, sig: Signature) -> Envelope:
        if len(self.signatures) >= MAX_SIGNATURES:
            raise UsageError(f"the envelope already carries {len(self.signatures)} signatures, the most one may",
                             code="sign.too_many_signatures",
                             hint=f"no policy needs more than {MAX_SIGNATURES}: pack a fresh bundle and have "
                                  "only the signers your policy names sign it")
        return Envelope(self.payload, self.payload_type, (*self.signatures, sig))

    def to_json(self) -> bytes:
        # One signature per line: auditors can pull a signature out with grep and base64 -d.
        doc = {
            "payloadType": self.payload_type,
            "payload": base64.b64encode(self.payload).decode(),
            "signatures": [
                {"keyid": s.keyid, "sig": base64.b64encode(s.sig).decode()} for s in self.signatures
            ],
        }
        return (json.dumps(doc, indent=1) + "\n").encode()


def _malformed(message: str, subject: str = "manifest.dsse.json") -> CheckFailed:
    return CheckFailed(
        f"signature envelope is malformed: {message}",
        code="bundle.envelope_malformed",
        findings=[Finding("envelope.malformed", subject, message)],
        hint="the bundle is damaged or was not written by gptossctl: obtain a fresh copy",
    )


def parse_envelope(data: bytes, *, payload_type: str = PAYLOAD_TYPE, max_bytes: int = MAX_ENVELOPE_BYTES) -> Envelope:
    """Parse strictly: any deviation is a refusal, never an exception of another kind. `payload_type` is the
    one type accepted (a trust root is never taken for a manifest, nor the other way round)."""
    if len(data) > max_bytes:
        raise _malformed(f"{len(data)} bytes is larger than any real "
                         + ("manifest" if payload_type == PAYLOAD_TYPE else "document of its kind"))
    try:
        doc = json.loads(data, object_pairs_hook=refuse_duplicate_keys)
    except DuplicateKey as exc:
        raise _malformed(str(exc)) from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise _malformed(f"not JSON ({exc.__class__.__name__})") from None
    if not isinstance(doc, dict) or set(doc) != {"payloadType", "payload", "signatures"}:
        raise _malformed("expected exactly the keys payloadType, payload, signatures")
    ptype, payload, sigs = doc["payloadType"], doc["payload"], doc["signatures"]
    if ptype != payload_type:
        raise _malformed(f"payloadType {str(ptype)[:80]!r} is not {payload_type}")
    if not isinstance(payload, str) or not isinstance(sigs, list):
        raise _malformed("payload must be a string and signatures a list")
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise _malformed("payload is not base64") from None
    if len(sigs) > MAX_SIGNATURES:
        raise _malformed(f"{len(sigs)} signatures; no trust policy counts more than {MAX_SIGNATURES}")
    parsed: list[Signature] = []
    keyids: set[str] = set()
    for i, s in enumerate(sigs):
        if not isinstance(s, dict) or set(s) != {"keyid", "sig"}:
            raise _malformed(f"signature {i} must have exactly keyid and sig")
        if not isinstance(s["keyid"], str) or not isinstance(s["sig"], str):
            raise _malformed(f"signature {i} has non-string fields")
        try:
            sig = base64.b64decode(s["sig"], validate=True)
        except (binascii.Error, ValueError):
            raise _malformed(f"signature {i} is not base64") from None
        if s["keyid"] in keyids:  # one signature per key: repeats add nothing but work for the verifier
            raise _malformed(f"signature {i} repeats key id {s['keyid'][:64]!r}")
        keyids.add(s["keyid"])
        parsed.append(Signature(s["keyid"], sig))
    return Envelope(raw, ptype, tuple(parsed))
