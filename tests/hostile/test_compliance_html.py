"""`compliance check --html` through the installed console script on a staged install: a unit a tamperer
edited (a journal-looking line of markup and the real API key in it) fails config.unit; the page says FAIL
first, shows that evidence escaped and redacted with its fix and controls, loads nothing, and renders in
headless Chromium. SARIF carries whole digests. Each test was run on the code before the change and failed.
"""

# ruff: noqa: F811 - `world` is the fixture imported from test_hostile_inputs, taken as a parameter
from __future__ import annotations

import json
import re
import shutil
import stat
import tempfile
from html import unescape
from pathlib import Path

import pytest

from tests.conftest import KeyPair
from tests.hostile.test_hostile_inputs import (  # noqa: F401 - `world` is a fixture: importing registers it
    World,
    _root_copy,
    _run,
    world,
)
from tests.integration.test_canary_vllm import screenshot
from tests.unit.test_compliance_page import assert_self_contained

pytestmark = pytest.mark.integration
INSTANCE = "tiny-gpt-oss"
MARKUP = '<script>alert(1)</script><img src="https://evil.example/x.png"></details><style>*{display:none}</style>'


def _tamper_unit(root: Path) -> str:
    api_key = (root / "etc/gptoss" / INSTANCE / "api-key").read_text().strip()
    unit = root / "etc/systemd/system" / f"gptoss@{INSTANCE}-r0.service"
    unit.write_text(unit.read_text().replace(
        "[Service]\n", f"[Service]\n# Dec 07 10:00:01 host vllm[42]: {MARKUP}\nEnvironment=VLLM_API_KEY={api_key}\n", 1))
    return api_key


def _text(html: str) -> str:
    return unescape(re.sub(r"<[^>]+>", " ", html))


def test_html_page_of_a_failing_run(world: World, tmp_path: Path) -> None:
    root = _root_copy(world, tmp_path)
    api_key = _tamper_unit(root)
    page_path = tmp_path / "out" / "compliance.html"
    page_path.parent.mkdir()
    r = _run(["compliance", "check", "--root", str(root), "--html", str(page_path)], {})
    doc = json.loads(r.stdout)
    assert r.returncode == 1, doc
    failed = {c["id"] for c in doc["data"]["checks"] if c["status"] == "fail"}
    assert "config.unit" in failed, failed
    assert any("alert(1)" in e for c in doc["data"]["checks"] if c["id"] == "config.unit" for e in c["evidence"])
    page = page_path.read_text()
    assert oct(stat.S_IMODE(page_path.stat().st_mode)) == "0o600"  # evidence, like --report (the old 0644 was the bug)
    assert sorted(p.name for p in page_path.parent.iterdir()) == ["compliance.html"]  # no temporary left
    assert_self_contained(page)
    assert "<script" not in page and "<img" not in page and "evil.example/x.png\">" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert api_key not in page and "VLLM_API_KEY" in page  # the drifted line is shown, its value redacted
    body = page[page.index("<body"):]
    assert body.index("FAIL") < body.index("config.unit")
    rec = json.loads(next((root / "opt/gptoss" / INSTANCE / "releases").glob("*/release.json")).read_text())
    head = _text(body[:body.index('id="failed"')])
    assert rec["manifest_sha256"] in head and f"release {rec['version']}" in head and INSTANCE in head
    failed_part = page[page.index('id="failed"'):page.index('id="passed"')]
    unit_card = failed_part[failed_part.index("config.unit"):]
    assert "install BUNDLE --trust KEY.pub --repair" in _text(unit_card) and "CM-6" in unit_card
    assert "# Dec 07 10:00:01 host vllm[42]: " + MARKUP in _text(unit_card)
    png = tmp_path / "compliance.png"
    screenshot(page_path, png)
    assert png.stat().st_size > 20_000  # a rendered page, not a blank one
    shutil.copyfile(png, Path(tempfile.gettempdir()) / "gptossctl-compliance-page.png")  # for a person to look at


def test_html_to_a_directory_is_refused_and_nothing_is_written(world: World, tmp_path: Path) -> None:
    root = _root_copy(world, tmp_path)
    target = tmp_path / "d"
    target.mkdir()
    report = tmp_path / "r.json"
    r = _run(["compliance", "check", "--root", str(root), "--report", str(report), "--html", str(target)], {})
    doc = json.loads(r.stdout)
    assert r.returncode == 2 and doc["error"]["code"] == "output.is_directory", doc  # not "no such option"
    assert doc["error"]["hint"] and "--html" in doc["error"]["message"]
    assert not report.exists() and list(target.iterdir()) == []


def test_sarif_evidence_carries_whole_digests(world: World, keys: dict[str, KeyPair], tmp_path: Path) -> None:
    root = _root_copy(world, tmp_path)
    sarif = tmp_path / "r.sarif"
    r = _run(["compliance", "check", "--root", str(root), "--sarif", str(sarif)], {})
    assert r.returncode == 0, r.stdout[-2000:]
    rec = json.loads(next((root / "opt/gptoss" / INSTANCE / "releases").glob("*/release.json")).read_text())
    results = {res["ruleId"]: res for res in json.loads(sarif.read_text())["runs"][0]["results"]}
    msg = results["bundle.signatures"]["message"]["text"]
    assert re.search(rf"\b{rec['manifest_sha256']}\b", msg), msg
    assert "…" not in msg, msg
    assert f"alice ({keys['alice'].keyid})" in msg, msg  # the signer's key id, whole
