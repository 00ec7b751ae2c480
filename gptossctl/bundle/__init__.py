"""Signed bundles: the unit that crosses the air gap.

Flow: a recipe (spec.py) -> plan the files (pack.plan_pack) -> copy and hash each byte once
(hashing.copy_and_hash) -> manifest of sizes and SHA-256 (manifest.py) -> DSSE envelope with one
Ed25519 signature per key (dsse.py, keys.py) -> rename DIR.partial to DIR. Verification
(verify.py) runs the same path backwards, fails closed, and lists every finding. No CLI imports here.
"""
