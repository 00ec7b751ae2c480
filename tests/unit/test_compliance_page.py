"""The compliance page (`compliance check --html`): one self-contained document an auditor reads, verdict
first, each failed check with its evidence, fix and NIST SP 800-53 controls, passed checks folded away,
every value from the host escaped. Built from a report made here, no install needed."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

from gptossctl.compliance.outputs import FORMATS, to_html, write_reports
from gptossctl.compliance.result import CheckResult, ComplianceReport
from gptossctl.compliance.rules import RULE, RULES
from tests.integration.test_canary_vllm import check_self_contained

DIGEST = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
HOSTILE = ('Dec 07 10:00:01 host vllm[42]: <script>alert(1)</script><img src="https://evil.example/x.png">'
           '</details></main><style>body{display:none}</style>&amp; "quoted" \'single\'')


def _report() -> ComplianceReport:
    r = ComplianceReport("tiny-gpt-oss", Path("/"), 5, datetime(2026, 12, 7, 10, 30, tzinfo=UTC),
                         host="gpu-07.example", bundle="tiny-gpt-oss", bundle_sha256=DIGEST)
    r.checks = [CheckResult(rule.id, "pass", (f"{rule.id} is fine",)) for rule in RULES]
    i = [c.id for c in r.checks].index("config.unit")
    r.checks[i] = CheckResult("config.unit", "fail", ("+ Environment=FOO=1", HOSTILE),
                              ("/etc/systemd/system/gptoss@tiny-gpt-oss-r0.service",))
    j = [c.id for c in r.checks].index("bundle.expiry")
    r.checks[j] = CheckResult("bundle.expiry", "warn", ("expires in 12 days",))
    return r


def _text(html: str) -> str:
    return unescape(re.sub(r"<[^>]+>", " ", html))


class _Markup(HTMLParser):
    """What a browser would build from the page: every element with its attributes, and the style text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.style = ""
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.style += data


PAGE_TAGS = {"html", "head", "meta", "title", "style", "body", "main", "h1", "h2", "h3", "div", "b", "dl", "dt",
             "dd", "section", "span", "ul", "li", "details", "summary", "p", "table", "tr", "th", "td"}
PAGE_ATTRS = {"lang", "charset", "http-equiv", "content", "name", "class", "id"}


def assert_self_contained(page: str) -> None:
    """As the canary's check_self_contained, read the way a browser reads it (evidence may show `src=` and URLs
    as text): only the page's own elements and attributes, one style sheet with no url() or @import, no
    script, and the CSP that forbids every load."""
    m = _Markup()
    m.feed(page)
    assert {t for t, _ in m.tags} <= PAGE_TAGS, {t for t, _ in m.tags} - PAGE_TAGS
    assert {a for _, attrs in m.tags for a in attrs} <= PAGE_ATTRS
    assert [t for t, _ in m.tags].count("style") == 1 and [t for t, _ in m.tags].count("main") == 1
    assert not re.search(r"(?i)url\(|@import|expression\(|https?:", m.style)
    csp = [a.get("content") or "" for t, a in m.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert len(csp) == 1 and "default-src 'none'" in csp[0] and "script-src" not in csp[0]
    assert "<script" not in page.lower() and "javascript:" not in page.lower()


def test_the_page_is_self_contained_and_escapes_every_host_value() -> None:
    page = to_html(_report()).decode()
    assert_self_contained(page)  # no script, no src/href/url(), a CSP that forbids every load
    assert "<img" not in page and "<style>body{display:none}" not in page and "</details></main><style" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # shown to the auditor, as text
    assert HOSTILE in _text(page)  # every character of the evidence survives, escaped


def test_the_verdict_comes_first_with_instance_host_time_release_and_whole_digest() -> None:
    page = to_html(_report()).decode()
    body = page[page.index("<body"):]
    verdict = body.index("FAIL")
    first_check = body.index("config.unit")
    assert verdict < first_check
    head = _text(body[:first_check])
    for fact in ("tiny-gpt-oss", "gpu-07.example", "2026-12-07 10:30:00 UTC", "release 5", DIGEST, "tiny-gpt-oss v5"):
        assert fact in head, fact
    assert f"1 of {len(RULES)} checks failed" in head


def test_a_failed_check_shows_its_evidence_fix_and_controls_and_passed_ones_are_folded() -> None:
    page = to_html(_report()).decode()
    failed = page[page.index('id="failed"'):page.index('id="passed"')]
    rule = RULE["config.unit"]
    assert "config.unit" in failed and rule.title in _text(failed)
    assert "+ Environment=FOO=1" in _text(failed)
    assert rule.remediation.replace("INSTANCE", "tiny-gpt-oss") in _text(failed)
    assert all(c in failed for c in rule.controls)
    assert "<details" not in failed  # what failed is open
    assert "expires in 12 days" in _text(failed)  # a warning is shown open too, after the failures
    passed = page[page.index('id="passed"'):]
    assert passed.count("<details") == len(RULES) - 2 and "<details open" not in passed
    assert "drift.payload is fine" in _text(passed)
    controls = page[page.index('id="controls"'):]
    for r in RULES:  # every rule's NIST SP 800-53 controls are listed
        assert all(c in controls for c in r.controls), r.id


def test_a_passing_report_says_pass_first() -> None:
    r = _report()
    r.checks = [CheckResult(rule.id, "pass", ()) for rule in RULES]
    page = to_html(r).decode()
    body = _text(page[page.index("<body"):])
    assert body.index("PASS") < body.index("release.current")
    assert "FAIL" not in body
    check_self_contained(page)  # no host text that looks like a reference: the canary pages' own check holds


def test_the_page_is_one_row_of_the_table_of_report_formats() -> None:
    fmts = {f.name: f for f in FORMATS}
    assert set(fmts) >= {"report", "sarif", "junit", "textfile", "html"}
    html = fmts["html"]
    assert html.option == "--html" and html.mode == 0o600
    assert html.render(_report()) == to_html(_report())
    assert len({f.option for f in FORMATS}) == len(FORMATS)


def test_the_page_is_written_0600_like_every_format_that_carries_evidence(tmp_path: Path) -> None:
    """The page holds the same (redacted) evidence as the JSON, SARIF and JUnit reports: as private as they."""
    targets = {name: tmp_path / f"out.{name}" for name in ("report", "sarif", "junit", "html")}
    write_reports(_report(), targets)
    modes = {name: path.stat().st_mode & 0o777 for name, path in targets.items()}
    assert modes == {"report": 0o600, "sarif": 0o600, "junit": 0o600, "html": 0o600}
