"""Canary inputs checked before the first request (issue 12, item 8): suites and baselines a person points
at are refused with exit 2 naming the case or saying what to give, never a hang, a fetch or exit 70.

The URL points at a port nothing listens on: a bad input must be refused before any request, so these
tests would see exit 4 (unreachable) if the canary got as far as sending one. A listener on another port
proves a schema `$ref` is never fetched."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gptossctl.probe.canary.edits import edits_to_accept, summarise
from gptossctl.probe.canary.harmony import ToolCall, check_answer
from gptossctl.probe.canary.suite import run_check

pytestmark = pytest.mark.integration
DEAD = "http://127.0.0.1:9"  # discard port: nothing answers
HEAD = "schema: gptossctl.canary-suite/1\nname: bad\nworkflows:\n  - name: wf\n    cases:\n"


@pytest.fixture()
def listener() -> Iterator[tuple[int, list[bytes]]]:
    """A TCP listener on loopback that records every connection's first bytes (a would-be fetch)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.2)
    seen: list[bytes] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(1)
                try:
                    seen.append(conn.recv(200))
                except OSError:
                    seen.append(b"")
    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield srv.getsockname()[1], seen
    stop.set()
    t.join()
    srv.close()


def _suite(tmp_path: Path, case: str) -> Path:
    p = tmp_path / "suite.yaml"
    p.write_text(HEAD + "      - {id: fine, prompt: hi, checks: [{contains: x}]}\n" + case)
    return p


@pytest.mark.parametrize(("case", "why"), [
    ('      - {id: backref, prompt: hi, checks: [{regex: "(a)\\\\1"}]}\n', "not valid RE2 syntax"),
    ('      - {id: lookbehind, prompt: hi, checks: [{regex: "(?<=a)b"}]}\n', "not valid RE2 syntax"),
    ("      - {id: bad-schema, prompt: hi, checks: [{json_schema: {type: nope}}]}\n", "not a valid JSON Schema"),
    ("      - {id: bad-schema2, prompt: hi, checks: [{json_schema: {required: 5}}]}\n", "not a valid JSON Schema"),
    ('      - {id: unknown-draft, prompt: hi, checks: [{json_schema: {$schema: "http://x.invalid/s"}}]}\n',
     "unknown $schema"),
    ("      - {id: file-ref, prompt: hi, checks: [{json_schema: {$ref: 'file:///etc/passwd'}}]}\n", "outside the schema"),
])
def test_a_bad_suite_is_exit_2_naming_the_case(cli, tmp_path: Path, case: str, why: str) -> None:  # type: ignore[no-untyped-def]
    code, doc = cli("canary", "run", "--url", DEAD, "--suite", str(_suite(tmp_path, case)))
    assert code == 2, doc
    name = case.split("id: ")[1].split(",")[0]
    assert doc["error"]["code"] == "canary.invalid_suite"
    assert f"wf/{name}" in doc["error"]["message"] and why in doc["error"]["hint"], doc["error"]


def test_a_remote_schema_ref_is_refused_and_never_fetched(cli, tmp_path: Path, listener) -> None:  # type: ignore[no-untyped-def]
    port, seen = listener
    case = f"      - {{id: remote, prompt: hi, checks: [{{json_schema: {{$ref: 'http://127.0.0.1:{port}/s.json'}}}}]}}\n"
    code, doc = cli("canary", "run", "--url", DEAD, "--suite", str(_suite(tmp_path, case)))
    assert code == 2 and "wf/remote" in doc["error"]["message"], doc
    time.sleep(0.5)
    assert seen == []
    # The same $ref nested where the static walk must find it.
    nested = (f"      - {{id: nested, prompt: hi, checks: [{{json_schema: {{type: object, properties: "
              f"{{a: {{allOf: [{{$ref: 'http://127.0.0.1:{port}/s.json'}}]}}}}}}}}]}}\n")
    code, doc = cli("canary", "run", "--url", DEAD, "--suite", str(_suite(tmp_path, nested)))
    assert code == 2 and "wf/nested" in doc["error"]["message"], doc
    assert seen == []


def test_a_catastrophic_regex_cannot_hang_a_check() -> None:
    """(a+)+$ on 'aaaa...b' takes exponential time in Python's re; on RE2 it is linear. Not a timing
    assertion: 100 000 characters would not finish in Python's lifetime, so finishing at all is the proof."""
    from gptossctl.probe.canary.suite import Check

    passed, _ = run_check(Check(regex="^(a+)+$"), "a" * 100_000 + "b")
    assert passed is False


def test_a_local_ref_schema_still_works() -> None:
    from gptossctl.probe.canary.suite import Check

    schema = {"$defs": {"n": {"type": "number"}}, "type": "object", "required": ["total"],
              "properties": {"total": {"$ref": "#/$defs/n"}}}
    assert run_check(Check(json_schema=schema), '{"total": 3}')[0] is True
    assert run_check(Check(json_schema=schema), '{"total": "x"}')[0] is False


@pytest.mark.parametrize(("content", "hint"), [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "binary"),
    (b"[" * 100_000 + b"]" * 100_000, "deeper than"),
    (b'{"schema": "gptossctl.canary-report/1", "latency_ms": {"ttft": {"p95": "fast"}}}', "wrong type"),
    (b'{"schema": "gptossctl.canary-report/2", "safety": {"incidents": [1, 2]}}', "wrong type"),
    (b'["schema", "gptossctl.canary-report/1"]', "holds a JSON list"),
    (b'{"data": 5}', "not a canary report"),
    (b"not json at all", "not valid JSON"),
])
def test_a_bad_baseline_is_exit_2_with_what_to_do(cli, tmp_path: Path, content: bytes, hint: str) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "baseline.json"
    bad.write_bytes(content)
    code, doc = cli("canary", "run", "--url", DEAD, "--suite", "demo", "--baseline", str(bad))
    assert code == 2, doc
    assert doc["error"]["code"] == "canary.bad_baseline" and hint in doc["error"]["message"], doc["error"]
    assert "canary run --out" in doc["error"]["hint"]


def test_a_good_suite_and_baseline_reach_the_server(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The control: valid inputs get past the checks and fail only on the dead URL (exit 4)."""
    good = tmp_path / "baseline.json"
    good.write_text(json.dumps({"schema": "gptossctl.canary-report/2", "latency_ms": {"ttft": {"p95": 12.5}}}))
    code, doc = cli("canary", "run", "--url", DEAD, "--suite", "demo", "--baseline", str(good))
    assert code == 4, doc


def test_edits_to_accept_known_values() -> None:
    assert edits_to_accept(" Paris ", ["Paris"]).chars == 0
    e = edits_to_accept("eight", ["eight legs"])
    assert (e.chars, e.normalised) == (5, 0.5)
    e = edits_to_accept("Pariss", ["London", "Paris"])  # the nearest reference counts
    assert (e.chars, e.reference) == (1, "Paris")
    s = summarise([edits_to_accept("Paris", ["Paris"]), e, edits_to_accept("eight", ["eight legs"])])
    assert s["no_edit_share"] == pytest.approx(1 / 3) and s["median"] == pytest.approx(1 / 6)


def test_harmony_conformance_counts_each_failure() -> None:
    assert check_answer("Paris", "", []).ok
    assert check_answer("", "", [ToolCall("get_weather", '{"city": "Paris"}')]).ok  # a tool call is an answer
    assert check_answer("<|channel|>final<|message|>Paris", "", []).failures == ("leaked_marker",)
    assert check_answer("Paris", "thinking<|end|>", []).failures == ("leaked_marker",)
    assert check_answer("ok", "", [ToolCall("f", '{"city": "Par')]).failures == ("bad_tool_call",)
    assert check_answer("ok", "", [ToolCall("f", "[1, 2]")]).failures == ("bad_tool_call",)
    assert check_answer("  ", "all the reasoning", []).failures == ("empty_final",)
