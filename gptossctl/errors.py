"""One error hierarchy with stable codes and exit codes.

Exit codes: 0 pass, 1 checked and failed, 2 usage, 3 cannot check here, 4 external failure, 70 bug,
130 interrupted. A `code` is stable: it appears in `--json` output and scripts match on it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass(frozen=True, order=True)
class Finding:
    """One thing a check found: sortable so every report lists findings in the same order."""

    code: str
    subject: str
    message: str
    hint: str | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "subject": self.subject, "message": self.message}
        if self.hint:
            out["hint"] = self.hint
        return out


class GptossctlError(Exception):
    exit_code: ClassVar[int] = 70
    code: ClassVar[str] = "internal"
    # Said when a raise site has nothing more specific: every refusal tells the user what to do next.
    default_hint: ClassVar[str] = "rerun with --debug and report the traceback"

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        findings: Iterable[Finding] = (),
        code: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint or self.default_hint
        self.findings: Sequence[Finding] = tuple(sorted(findings))
        self.data = data or {}
        if code is not None:
            # A subclass fixes the family; a raise site may refine it (for example "bundle.expired").
            self.code = code  # type: ignore[misc]


class UsageError(GptossctlError):
    """The command line or an input file is wrong: the user must change what they asked for."""

    exit_code = 2
    code = "usage"
    default_hint = "correct the command line or the file it names; the command's --help says what it takes"


class CheckFailed(GptossctlError):
    """It ran and the answer is no (tampering, a profile that does not fit, a failed smoke test)."""

    exit_code = 1
    code = "check_failed"
    default_hint = "each finding says what was wrong; fix it (or use a clean copy) and run the command again"


class EnvironmentNotReady(GptossctlError):
    """Cannot check here: no NVML, no systemd, no rights, a missing tool."""

    exit_code = 3
    code = "environment_not_ready"
    default_hint = "run on the host the check is for, as a user allowed to read what it needs (often root)"


class ServiceUnavailable(GptossctlError):
    """Something outside failed: the server, systemctl, a disk that is full."""

    exit_code = 4
    code = "external_failure"
    default_hint = "check that the service or tool named is running and reachable, then run the command again"


class Interrupted(GptossctlError):
    exit_code = 130
    code = "interrupted"
    default_hint = "run the same command again: interrupted work is resumed or started over, never half-kept"
