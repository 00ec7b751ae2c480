"""Arbitrary bytes and arbitrary paths never crash the parsers and never pass verification."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gptossctl.bundle.dsse import parse_envelope
from gptossctl.bundle.keys import load_public_key
from gptossctl.bundle.layout import unsafe_path_reason
from gptossctl.bundle.manifest import parse_manifest
from gptossctl.bundle.verify import TrustPolicy, verify_bundle
from gptossctl.errors import CheckFailed
from tests.integration.test_tamper_matrix import resign

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


@given(st.binary(max_size=2048))
def test_parse_manifest_never_crashes_on_bytes(data: bytes) -> None:
    with pytest.raises(CheckFailed) as exc:
        parse_manifest(data)
    assert exc.value.findings[0].code == "manifest.malformed"


@given(json_values)
def test_parse_manifest_never_accepts_arbitrary_json(value: object) -> None:
    with pytest.raises(CheckFailed):
        parse_manifest(json.dumps(value).encode())


@given(st.binary(max_size=2048) | json_values.map(lambda v: json.dumps(v).encode()))
def test_parse_envelope_never_crashes(data: bytes) -> None:
    with pytest.raises(CheckFailed) as exc:
        parse_envelope(data)
    assert exc.value.findings[0].code == "envelope.malformed"


@given(st.text(min_size=1, max_size=60))
def test_safe_paths_cannot_escape(path: str) -> None:
    if unsafe_path_reason(path) is None:
        parts = path.split("/")
        assert not path.startswith("/") and ".." not in parts and "." not in parts and "" not in parts
        assert "\x00" not in path and "\\" not in path


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.text(min_size=1, max_size=40))
def test_signed_manifest_with_arbitrary_path_never_passes(path: str, packed: Path, keys: dict, tmp_path: Path) -> None:
    bundle = tmp_path / "b"
    if bundle.exists():
        shutil.rmtree(bundle)
    shutil.copytree(packed, bundle)

    def edit(doc: dict) -> None:
        doc["files"][0]["path"] = path

    resign(bundle, edit, keys["alice"])
    policy = TrustPolicy((load_public_key(keys["alice"].public),))
    with pytest.raises(CheckFailed) as exc:
        verify_bundle(bundle, policy)
    assert exc.value.findings
