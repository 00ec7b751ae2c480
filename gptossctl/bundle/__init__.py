"""Signed bundles: the unit that crosses the air gap.

The format and its guarantees: every payload file with its size and SHA-256 in a manifest (manifest.py),
files above the shard size with per-shard digests (hashing.py: parallel hashing, each byte read once), one
DSSE envelope with an Ed25519 signature per key (dsse.py, keys.py), co-signing (sign.py). Verification
(verify.py) checks signatures, dates and every byte, fails closed, and lists every finding. Making a bundle
is gptossctl.pack's job. Nothing here touches the network or runs a program.
"""
