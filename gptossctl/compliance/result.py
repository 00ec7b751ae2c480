"""One check's result and the report of a run: evidence, remediation and controls per check."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from gptossctl import __version__
from gptossctl.compliance.rules import REPORT_SCHEMA, RULE, Rule
from gptossctl.errors import Finding


@dataclass(frozen=True)


class CheckResult:
    id: str
    status: str  # pass | warn | fail
    evidence: tuple[str, ...]
    locations: tuple[str, ...] = ()  # paths as the booted host sees them

    @property
    def rule(self) -> Rule:
        return RULE[self.id]

    def to_dict(self, instance: str) -> dict[str, Any]:
        r = self.rule
        return {"id": self.id, "title": r.title, "severity": r.severity, "status": self.status,
                "evidence": list(self.evidence), "remediation": r.remediation.replace("INSTANCE", instance),
                "controls": list(r.controls), "locations": list(self.locations)}


@dataclass


class ComplianceReport:
    instance: str
    root: Path
    release: int | None
    generated: datetime
    checks: list[CheckResult] = field(default_factory=list)
    host: str = ""  # the machine that ran the check (the staged tree's, when root is not /)
    bundle: str = ""  # the current release's bundle name, and the SHA-256 of its signed manifest
    bundle_sha256: str = ""

    @property
    def counts(self) -> dict[str, int]:
        return {s: sum(c.status == s for c in self.checks) for s in ("pass", "warn", "fail")}

    @property
    def ok(self) -> bool:
        return not any(c.status == "fail" for c in self.checks)

    @property
    def findings(self) -> list[Finding]:
        return [Finding(f"compliance.{c.id}", ", ".join(c.locations) or c.id, "; ".join(c.evidence),
                        hint=c.rule.remediation.replace("INSTANCE", self.instance))
                for c in self.checks if c.status != "pass"]

    def to_dict(self) -> dict[str, Any]:
        return {"schema": REPORT_SCHEMA, "instance": self.instance, "root": str(self.root),
                "release": self.release, "generated": self.generated.isoformat(timespec="seconds"),
                "host": self.host, "bundle": self.bundle, "bundle_sha256": self.bundle_sha256,
                "gptossctl": __version__, "ok": self.ok, "counts": self.counts,
                "checks": [c.to_dict(self.instance) for c in self.checks]}
