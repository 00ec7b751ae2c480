"""Unsigned transport files are hints: a transfer journal line is looked at only for a planned destination."""

from __future__ import annotations

import json
import os
from pathlib import Path

from gptossctl.bundle.transfer import JOURNAL_NAME, JOURNAL_SCHEMA, _read_journal


def test_a_journal_line_for_an_unplanned_destination_is_never_looked_at(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "outside").write_bytes(b"x" * 100)  # exists, so its size would "back" the record
    (work / "a.part").write_bytes(b"y" * 100)
    lines = [{"schema": JOURNAL_SCHEMA},
             {"dst": "../outside", "offset": 0, "length": 10, "sha256": "0" * 64},
             {"dst": "a.part", "offset": 0, "length": 10, "sha256": "1" * 64}]
    (work / JOURNAL_NAME).write_text("".join(json.dumps(x) + "\n" for x in lines))
    work_fd = os.open(work, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with open(work / JOURNAL_NAME, "a+", encoding="utf-8") as journal:
            done, reset = _read_journal(work, work_fd, journal, {"a.part"})
    finally:
        os.close(work_fd)
    assert reset is None
    assert {r.dst for r in done} == {"a.part"}
