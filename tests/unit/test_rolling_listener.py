"""A rolling upgrade goes replica by replica only when the router's unit keeps its shape: adding, moving or
closing the TLS listener changes the router's user and capabilities, so the set comes up at once instead (a
drain written for a root master, handed to a DynamicUser router, fails its reload and never drains)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gptossctl.install.layout import Layout
from gptossctl.install.release import EdgeRecord, ReleaseRecord, ReplicaRecord
from gptossctl.install.rolling import can_roll, proof

EDGE = EdgeRecord("10.0.0.5", 443, "a" * 64, "b" * 64)


class LiveRouter:
    """The two things can_roll asks systemd (pure logic: a stand-in is enough)."""

    live = True

    def active_state(self, _unit: str) -> str:
        return "active"


def _rec(version: int, edge: EdgeRecord | None) -> ReleaseRecord:
    return ReleaseRecord(version, "b", "i", "p", "m", "0" * 64, "/usr/bin/python3",
                         replicas=(ReplicaRecord(0, 8001), ReplicaRecord(1, 8002)), router="/usr/sbin/nginx", edge=edge)


@pytest.mark.parametrize(("before", "after", "rolls"), [
    (None, None, True),
    (EDGE, EDGE, True),
    (EDGE, EdgeRecord("10.0.0.5", 443, "c" * 64, "d" * 64), True),  # a rotated certificate: same unit
    (None, EDGE, False),  # the listener opened
    (EDGE, None, False),  # closed
    (EDGE, EdgeRecord("10.0.0.5", 8443, "a" * 64, "b" * 64), False),  # moved below/above 1024: capabilities
    (EDGE, EdgeRecord("10.0.0.5", 443, "a" * 64, "b" * 64, allow=("10.20.0.0/16",)), False),  # IPAddressAllow
])
def test_replica_by_replica_only_while_the_router_keeps_its_listener(
        tmp_path: Path, before: EdgeRecord | None, after: EdgeRecord | None, rolls: bool) -> None:
    systemd: Any = LiveRouter()
    assert can_roll(Layout(tmp_path, "i"), systemd, _rec(1, before), _rec(2, after)) is rolls


def test_an_activations_proof_says_ok_over_the_smoke_tests_that_ran() -> None:
    passed, router = {"ok": True, "checks": []}, {"url": "u", "ok": True, "checks": []}
    assert proof([passed, passed], router)["ok"] is True
    assert proof([passed, {"ok": False, "checks": []}], router)["ok"] is False
    assert proof([None], None) == {"ok": None, "replicas": [None], "router": None}  # --no-smoke: nothing proved
