"""The audit chain's append, verify and reset rules on plain files (no install): a broken chain is refused
before anything is written, never re-anchored."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, tzinfo
from pathlib import Path

import pytest

from gptossctl.errors import CheckFailed, UsageError
from gptossctl.install import audit


def _dirs(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "var/log/gptoss", tmp_path / "var/lib/gptossctl/audit.anchor"


def _append(tmp_path: Path, n: int, **kw: object) -> None:
    log_dir, anchor = _dirs(tmp_path)
    for i in range(n):
        audit.append(log_dir, command=["x", str(i)], result="ok", anchor=anchor, **kw)  # type: ignore[arg-type]


def _files(tmp_path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(tmp_path)): p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}


def test_append_refuses_a_cut_tail_and_writes_nothing(tmp_path: Path) -> None:
    _append(tmp_path, 3)
    log_dir, anchor = _dirs(tmp_path)
    log = log_dir / audit.LOG
    log.write_bytes(b"".join(log.read_bytes().splitlines(keepends=True)[:-1]))
    before = _files(tmp_path)
    with pytest.raises(CheckFailed) as exc:
        audit.append(log_dir, command=["refused"], result="failed: x", anchor=anchor)
    assert exc.value.code == "audit.tampered" and "audit.truncated" in [f.code for f in exc.value.findings]
    assert "audit reset" in (exc.value.hint or "")
    assert _files(tmp_path) == before


@pytest.mark.parametrize("damage", ["anchor", "head", "garbage"])
def test_append_refuses_every_finding_verify_reports(tmp_path: Path, damage: str) -> None:
    _append(tmp_path, 2)
    log_dir, anchor = _dirs(tmp_path)
    if damage == "anchor":
        anchor.unlink()
    elif damage == "head":
        (log_dir / audit.HEAD).unlink()
    else:
        with (log_dir / audit.LOG).open("ab") as f:
            f.write(b"\x00\xff not an entry\n")
    with pytest.raises(CheckFailed):
        audit.verify(log_dir, anchor=anchor)
    before = _files(tmp_path)
    with pytest.raises(CheckFailed) as exc:
        audit.append(log_dir, command=["refused"], result="failed: x", anchor=anchor)
    assert exc.value.code == "audit.tampered"
    assert _files(tmp_path) == before


def test_a_missing_log_with_an_instance_installed_is_tampered_and_not_restarted(tmp_path: Path) -> None:
    log_dir, anchor = _dirs(tmp_path)
    assert audit.verify(log_dir, anchor=anchor).entries == 0  # nothing installed: an empty history is fine
    with pytest.raises(CheckFailed) as exc:
        audit.verify(log_dir, anchor=anchor, installed=("tiny",))
    assert [f.code for f in exc.value.findings] == ["audit.missing"] and "tiny" in exc.value.findings[0].message
    with pytest.raises(CheckFailed):
        audit.append(log_dir, command=["refused"], result="failed: x", anchor=anchor, installed=("tiny",))
    assert not (log_dir / audit.LOG).exists() and not anchor.exists()


def test_attached_records_are_hashed_and_cannot_replace_entry_fields(tmp_path: Path) -> None:
    log_dir, anchor = _dirs(tmp_path)
    e = audit.append(log_dir, command=["i"], result="ok", anchor=anchor, attach={"seal": {"schema": "s/1"}})
    assert e["seal"] == {"schema": "s/1"} and audit.verify(log_dir, anchor=anchor).entries == 1
    log = log_dir / audit.LOG
    log.write_text(log.read_text().replace('"s/1"', '"s/2"'))
    with pytest.raises(CheckFailed) as exc:
        audit.verify(log_dir, anchor=anchor)
    assert "audit.entry_modified" in [f.code for f in exc.value.findings]
    with pytest.raises(ValueError):
        audit.append(log_dir, command=["i"], result="ok", anchor=anchor, attach={"prev": "0" * 64})


def test_a_reset_is_pending_until_acknowledged(tmp_path: Path) -> None:
    _append(tmp_path, 2)
    log_dir, anchor = _dirs(tmp_path)
    with pytest.raises(UsageError) as exc:
        audit.reset(tmp_path, reason="nothing is wrong")
    assert exc.value.code == "audit.nothing_to_reset"
    old = json.loads(anchor.read_text())
    (log_dir / audit.HEAD).write_text("9 " + "f" * 64 + "\n")
    event = audit.reset(tmp_path, reason="head replaced")
    assert event.entry["reset"]["previous"] == {"seq": old["seq"], "hash": old["hash"], "from": "anchor"}
    report = audit.verify(log_dir, anchor=anchor)
    assert report.pending_reset is not None and report.pending_reset["seq"] == 1
    ack = audit.acknowledge(tmp_path)
    assert ack.entry["acknowledge"]["reset_hash"] == event.entry["hash"]
    assert audit.verify(log_dir, anchor=anchor).pending_reset is None
    assert len(list(log_dir.glob("audit.*.broken-*"))) == 2 and len(list(anchor.parent.glob("*.broken-*"))) == 1


@pytest.mark.parametrize("reason", [None, "", "   ", "a\nb", "a\x1bb", "x" * 5000, "\udcff"])
def test_a_reset_reason_must_be_one_line_of_text(reason: str | None) -> None:
    with pytest.raises(UsageError) as exc:
        audit.check_reason(reason)
    assert exc.value.code == "audit.bad_reason"


def _forge(log_dir: Path, **fields: object) -> None:
    """Append a correctly chained, correctly hashed entry (and the head) as root could, outside gptossctl."""
    last = json.loads((log_dir / audit.LOG).read_bytes().splitlines()[-1])
    e = {"seq": last["seq"] + 1, "time": last["time"], "user": "sec-officer", "command": ["rollback"],
         "instance": "i", "bundle_sha256": None, "result": "ok", "detail": None, "prev": last["hash"], **fields}
    e["hash"] = audit._digest(e)
    with (log_dir / audit.LOG).open("a") as f:
        f.write(json.dumps(e, sort_keys=True) + "\n")
    (log_dir / audit.HEAD).write_text(f"{e['seq']} {e['hash']}\n")


def test_an_entry_appended_past_the_anchor_is_tampering(tmp_path: Path) -> None:
    """Red-team 06: the anchor must record the newest entry (every append rewrites it), not just one the log holds."""
    _append(tmp_path, 2)
    log_dir, anchor = _dirs(tmp_path)
    audit.verify(log_dir, anchor=anchor)
    _forge(log_dir)
    with pytest.raises(CheckFailed) as exc:
        audit.verify(log_dir, anchor=anchor)
    assert exc.value.code == "audit.tampered" and [f.code for f in exc.value.findings] == ["audit.beyond_anchor"]
    before = _files(tmp_path)
    with pytest.raises(CheckFailed):
        audit.append(log_dir, command=["refused"], result="failed: x", anchor=anchor)
    assert _files(tmp_path) == before


def test_a_reset_chain_and_its_first_entry_still_verify(tmp_path: Path) -> None:
    _append(tmp_path, 1)
    log_dir, anchor = _dirs(tmp_path)
    assert audit.verify(log_dir, anchor=anchor).entries == 1
    _forge(log_dir)
    root = tmp_path
    audit.reset(root, reason="forged entry past the anchor, investigated in INC-1")
    assert audit.verify_root(root).entries == 1


def test_an_entry_dated_before_its_predecessor_is_tampering(tmp_path: Path) -> None:
    """Red-team 34: entries more than CLOCK_SLACK older than the entry they follow are backdated; a few seconds
    (clock steps, hosts sharing a log) are not."""
    _append(tmp_path, 2)
    log_dir, anchor = _dirs(tmp_path)
    last = audit.entry_time(json.loads((log_dir / audit.LOG).read_bytes().splitlines()[-1]))
    assert last is not None
    _forge(log_dir, time=(last - audit.CLOCK_SLACK / 2).isoformat(timespec="seconds"))
    _forge(log_dir, time=(last - audit.CLOCK_SLACK * 2).isoformat(timespec="seconds"))
    state = audit.inspect(log_dir, anchor=None)
    assert [f.code for f in state.findings] == ["audit.time_reversed"]
    assert f":{state.entries}" in state.findings[0].subject


def test_the_clock_behind_the_chain_is_refused_and_nothing_backdated_is_written(tmp_path: Path) -> None:
    """Red-team 24/34: now before the newest entry (minus the slack) fails checked_now, require_intact and
    append (clock.behind_audit); the chain stays as it was."""
    _append(tmp_path, 2)
    log_dir, anchor = _dirs(tmp_path)
    records = audit.verify(log_dir, anchor=anchor).records
    newest = audit.newest_time(records)
    assert newest is not None
    assert audit.checked_now(records, newest - audit.CLOCK_SLACK / 2) == newest - audit.CLOCK_SLACK / 2
    assert audit.checked_now((), newest - timedelta(days=30)) == newest - timedelta(days=30)
    with pytest.raises(CheckFailed) as exc:
        audit.checked_now(records, newest - timedelta(days=1))
    assert exc.value.code == "clock.behind_audit" and "clock" in (exc.value.hint or "")

    class Back(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> Back:
            return cls.fromtimestamp((datetime.now(tz) - timedelta(days=30)).timestamp(), tz)

    before = _files(tmp_path)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(audit, "datetime", Back)
        for call in (lambda: audit.require_intact(tmp_path),
                     lambda: audit.append(log_dir, command=["x"], result="ok", anchor=anchor)):
            with pytest.raises(CheckFailed) as exc:
                call()
            assert exc.value.code == "clock.behind_audit"
    assert _files(tmp_path) == before
    audit.verify(log_dir, anchor=anchor)


def test_a_chain_written_while_the_clock_ran_ahead_can_be_reset_once_the_clock_is_right(tmp_path: Path) -> None:
    """An entry written with the clock a day ahead (no NTP on an air-gapped host): once the clock is set right,
    every change is refused as backdated (clock.behind_audit). `audit reset` is the audited way out; before, it
    refused the chain as intact and the host was stuck until real time passed that entry."""

    class Ahead(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> Ahead:
            return cls.fromtimestamp((datetime.now(tz) + timedelta(days=1)).timestamp(), tz)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(audit, "datetime", Ahead)
        _append(tmp_path, 2)
    with pytest.raises(CheckFailed) as exc:
        audit.require_intact(tmp_path)
    assert exc.value.code == "clock.behind_audit"
    event = audit.reset(tmp_path, reason="hardware clock ran a day ahead; NTP fixed")
    assert "clock.behind_audit" in [f["code"] for f in event.entry["reset"]["findings"]]
    audit.require_intact(tmp_path)  # the new chain starts from the right clock
