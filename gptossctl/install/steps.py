"""Named steps with their outcome and duration: what install, rollback and the demo report, step by step,
also when one fails (the error carries every step recorded so far)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from gptossctl.errors import GptossctlError

StepCallback = Callable[[str, str], None]  # (step, what it is doing): progress for people


@dataclass
class StepRecord:
    step: str
    status: str  # ok | failed | skipped
    detail: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "status": self.status, "detail": self.detail, "seconds": round(self.seconds, 2)}


class Steps:
    """`with steps("name", "doing ...") as detail:` records ok (with detail[-1]) or failed (with the error)."""

    def __init__(self, on_step: StepCallback | None = None) -> None:
        self.records: list[StepRecord] = []
        self.on_step = on_step

    @contextmanager
    def __call__(self, name: str, doing: str) -> Iterator[list[str]]:
        if self.on_step:
            self.on_step(name, doing)
        t0, detail = time.monotonic(), [doing]
        try:
            yield detail
        except BaseException as exc:
            msg = exc.message if isinstance(exc, GptossctlError) else f"{type(exc).__name__}: {exc}"
            self.records.append(StepRecord(name, "failed", msg, time.monotonic() - t0))
            raise
        self.records.append(StepRecord(name, "ok", detail[-1], time.monotonic() - t0))

    def skip(self, name: str, why: str) -> None:
        self.records.append(StepRecord(name, "skipped", why, 0.0))

    def to_dicts(self) -> list[dict[str, Any]]:
        return [r.to_dict() for r in self.records]
