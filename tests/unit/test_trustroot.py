"""The trust root document on its own: canonical form, strict parse, self-signature and the rotation rule."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from gptossctl.bundle.keys import load_public_key
from gptossctl.bundle.trustroot import (
    new_root,
    parse_root,
    parse_signed_root,
    sign_root,
    unsigned,
    verify_rotation,
    verify_self,
)
from gptossctl.errors import CheckFailed, UsageError
from tests.conftest import KeyPair

LATER = datetime.now(UTC) + timedelta(days=30)


def _root(keys: dict[str, KeyPair], names: list[str], threshold: int, version: int = 1):  # type: ignore[no-untyped-def]
    return new_root([(n, load_public_key(keys[n].public)) for n in names], threshold, expires=LATER, version=version)


def test_a_root_round_trips_through_its_signed_envelope(keys: dict[str, KeyPair]) -> None:
    root = _root(keys, ["alice", "bob"], 2)
    signed = sign_root(sign_root(unsigned(root), keys["alice"].signer()), keys["bob"].signer())
    again = verify_self(parse_signed_root(signed.to_json()))
    assert again.root.digest == root.digest and again.root.names(again.signer_keyids()) == ["alice", "bob"]
    assert root.policy().name_of(keys["bob"].keyid) == "bob"


def test_a_re_indented_payload_is_another_document(keys: dict[str, KeyPair]) -> None:
    root = _root(keys, ["alice"], 1)
    with pytest.raises(CheckFailed) as exc:
        parse_root(json.dumps(root.to_doc(), indent=1, sort_keys=True).encode())
    assert "canonical" in exc.value.message


def test_a_threshold_above_the_keys_cannot_even_be_made(keys: dict[str, KeyPair]) -> None:
    with pytest.raises(UsageError) as exc:
        _root(keys, ["alice"], 2)
    assert exc.value.code == "trust.bad_threshold"


def test_a_first_root_needs_its_own_threshold(keys: dict[str, KeyPair]) -> None:
    signed = sign_root(unsigned(_root(keys, ["alice", "bob"], 2)), keys["alice"].signer())
    with pytest.raises(CheckFailed) as exc:
        verify_self(signed)
    assert exc.value.code == "trust.root_unsigned"


def test_rotation_needs_the_next_version_and_both_thresholds(keys: dict[str, KeyPair]) -> None:
    current = _root(keys, ["alice", "bob"], 2)
    new = unsigned(_root(keys, ["mallory"], 1, version=2))
    by_all = sign_root(sign_root(sign_root(new, keys["alice"].signer()), keys["bob"].signer()),
                       keys["mallory"].signer())
    assert verify_rotation(current, by_all).root.version == 2
    for partial in (sign_root(sign_root(new, keys["alice"].signer()), keys["mallory"].signer()),  # 1 of 2 old
                    sign_root(sign_root(new, keys["alice"].signer()), keys["bob"].signer())):  # no new signer
        with pytest.raises(CheckFailed) as exc:
            verify_rotation(current, partial)
        assert [f.code for f in exc.value.findings] == ["trust.threshold_not_met"]
    skip = unsigned(_root(keys, ["alice", "bob"], 2, version=3))
    skip = sign_root(sign_root(skip, keys["alice"].signer()), keys["bob"].signer())
    with pytest.raises(CheckFailed) as exc:
        verify_rotation(current, skip)
    assert [f.code for f in exc.value.findings] == ["trust.version_not_next"]
