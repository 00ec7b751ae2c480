"""A week of canaries on a timer: `canary schedule` lays a hardened `gptoss-canary@NAME.timer` and
`.service` that run the canary every interval for a duration, keep each run's reports in their own folder,
and stop by themselves.

Flow: (1) check the inputs (suite, baseline, key files, times) before anything is written; (2) render:
the shipped templates (systemd/gptoss-canary@.{service,timer}) plus two drop-ins of this schedule, one
listing every run as an absolute `OnCalendar=` time in UTC, so systemd itself stops firing after the last
(no state to keep, nothing to disable, a reboot cannot extend it), one giving the service its API keys as
credentials (`LoadCredential=`: the service runs as a dynamic user that cannot read /etc/gptoss) and the
addresses it may reach; (3) write the schedule record and the suite next to it in /etc/gptoss/canary;
(4) enable and start the timer; (5) grade the service with `systemd-analyze security` (at most 2.0).

At each firing the service runs `gptossctl canary run --scheduled NAME`: it reads the record, runs, and
writes report.json, report.html, junit.xml and canary.prom into
/var/lib/gptoss-canary/NAME/runs/<UTC time>/. The first run becomes the baseline unless one was given.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gptossctl.adapters.systemd import Systemd
from gptossctl.errors import EnvironmentNotReady, UsageError
from gptossctl.fsutil import atomic_write
from gptossctl.probe.canary.run import CanaryReport, RunRequest, Thresholds, check_request, run_request
from gptossctl.probe.canary.suite import builtin_dir
from gptossctl.resources import data_dir
from gptossctl.templates import check_python, check_unit_value, fill_template

SCHEDULE_SCHEMA = "gptossctl.canary-schedule/1"
UNITS = ("gptoss-canary@.service", "gptoss-canary@.timer")
MAX_RUNS = 10080  # every minute for a week
MAX_EXPOSURE = 2.0
NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
STAMP = "%Y%m%dT%H%M%SZ"
START_DELAY_S = 15  # the first run: time for daemon-reload and the timer to start


@dataclass(frozen=True)
class ScheduleLayout:
    """Every path of a schedule, under a root ("/" live, a staging tree otherwise)."""

    root: Path = Path("/")

    @property
    def config_dir(self) -> Path:
        return self.root / "etc/gptoss/canary"

    @property
    def state_root(self) -> Path:
        return self.root / "var/lib/gptoss-canary"

    @property
    def unit_dir(self) -> Path:
        return self.root / "etc/systemd/system"

    def record(self, name: str) -> Path:
        return self.config_dir / f"{name}.json"

    def state(self, name: str) -> Path:
        return self.state_root / name

    def live(self, p: Path) -> str:
        return "/" + str(p.relative_to(self.root)).lstrip("/") if self.root != Path("/") else str(p)


class ScheduleRecord(BaseModel):
    """What the timer's service runs, written once by `canary schedule` (0644: it holds no secret)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    schema_: str = Field(alias="schema", pattern=r"^gptossctl\.canary-schedule/1$")
    name: str = Field(pattern=NAME_PATTERN)
    url: str
    api_key_file: str | None = None
    model: str | None = None
    suite: str  # the copy next to the record
    compare_url: str | None = None
    compare_api_key_file: str | None = None
    compare_model: str | None = None
    requests: int | None = None
    concurrency: int = 1
    timeout: float = 120.0
    thresholds: dict[str, float] = {}
    baseline: str | None = None  # the copy next to the record; None: the first run
    every_s: int
    for_s: int
    runs: list[datetime]
    created: datetime


@dataclass(frozen=True)
class ScheduleRequest:
    name: str
    run: RunRequest  # url, keys, suite, compare, thresholds: as for `canary run`
    every_s: int
    for_s: int
    start: datetime | None = None  # default: a few seconds from now
    root: Path | None = None  # stage into this tree (nothing started)
    dry_run: bool = False


@dataclass
class Schedule:
    name: str
    runs: list[datetime]
    files: dict[str, str]
    state_dir: str
    exposure: float | None = None
    started: bool = False
    notes: list[str] = field(default_factory=list)
    units: dict[str, str] = field(default_factory=dict)

    @property
    def findings(self) -> list[Any]:
        return []

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "runs": [t.isoformat() for t in self.runs], "first": self.runs[0].isoformat(),
                "last": self.runs[-1].isoformat(), "files": self.files, "state_dir": self.state_dir,
                "exposure": self.exposure, "started": self.started, "notes": self.notes, "units": self.units}


def _first_run(start: datetime | None) -> datetime:
    now = datetime.now(UTC)
    if start is None:
        return now + timedelta(seconds=START_DELAY_S)
    try:
        aware = start if start.tzinfo is not None else start.astimezone()  # naive: this host's local time
    except OverflowError:
        raise UsageError(f"--start {start.isoformat()} is out of range", code="usage.bad_time",
                         hint="give a time within the next years") from None
    if aware < now:
        raise UsageError(f"--start {start.isoformat()} is in the past: no run would fire",
                         code="usage.bad_time", hint="give a time to come, or leave --start out (a few seconds "
                                                     "from now)")
    return aware


def run_times(start: datetime, every_s: int, for_s: int) -> list[datetime]:
    """Every `every_s` from `start` while within `for_s` (the first at `start`)."""
    if every_s < 10:
        raise UsageError("--every must be at least 10s", code="usage.bad_duration")
    if for_s < every_s:
        raise UsageError("--for must be at least --every (one run)", code="usage.bad_duration")
    n = (for_s - 1) // every_s + 1
    if n > MAX_RUNS:
        raise UsageError(f"{n} runs: more than {MAX_RUNS}", code="usage.bad_duration",
                         hint="run less often (--every) or for less long (--for)")
    try:
        first = start.astimezone(UTC).replace(microsecond=0)
        return [first + timedelta(seconds=k * every_s) for k in range(n)]
    except OverflowError:
        raise UsageError(f"a run from {start.isoformat()} every {every_s}s for {for_s}s falls after the year 9999",
                         code="usage.bad_time", hint="give a --start within the next years") from None


def render_timer_dropin(runs: list[datetime]) -> str:
    lines = [f"OnCalendar={t.strftime('%Y-%m-%d %H:%M:%S')} UTC" for t in runs]
    return ("# Written by `gptossctl canary schedule`: one line per run, in UTC. After the last, the timer has\n"
            "# nothing left to fire and goes to 'elapsed' by itself.\n[Timer]\n" + "\n".join(lines) + "\n")


def _allowed_addresses(urls: list[str]) -> tuple[list[str], list[str]]:
    """IPAddressAllow= entries for the endpoints, and notes for hosts given by name (no address filter)."""
    allow, notes = ["localhost"], []
    for url in urls:
        host = urlsplit(url).hostname or ""
        if host in ("localhost", ""):
            continue
        try:
            allow.append(str(ipaddress.ip_address(host)))
        except ValueError:
            notes.append(f"{host} is a name, not an address: the service may reach any address "
                         "(give the URL with an IP address to restrict it)")
            return [], notes
    return allow, notes


def render_service_dropin(record: ScheduleRecord) -> tuple[str, list[str]]:
    for what, value in (("--api-key-file", record.api_key_file), ("--compare-api-key-file",
                                                                   record.compare_api_key_file)):
        if value is not None:
            check_unit_value(value, what)  # a newline would add directives (ExecStartPre=, User=root)
    lines = ["# Written by `gptossctl canary schedule`: the API keys as credentials (read by systemd as root,",
             "# handed to the dynamic user) and the only addresses the canary may reach.", "[Service]"]
    if record.api_key_file:
        lines.append(f"LoadCredential=api-key:{record.api_key_file}")
    if record.compare_api_key_file:
        lines.append(f"LoadCredential=compare-api-key:{record.compare_api_key_file}")
    allow, notes = _allowed_addresses([record.url] + ([record.compare_url] if record.compare_url else []))
    lines += [f"IPAddressAllow={a}" for a in allow] if allow else ["IPAddressDeny="]
    return "\n".join(lines) + "\n", notes


def _record(req: ScheduleRequest, runs: list[datetime], layout: ScheduleLayout) -> ScheduleRecord:
    r = req.run
    for label, p in (("--api-key-file", r.api_key_file), ("--compare-api-key-file", r.compare_api_key_file)):
        if p is not None and not p.is_absolute():
            raise UsageError(f"{label} {p} must be an absolute path (the service reads it from anywhere)",
                             code="canary.bad_schedule")
    base = layout.config_dir / f"{req.name}"
    return ScheduleRecord(
        schema_=SCHEDULE_SCHEMA, name=req.name, url=r.url, model=r.model,
        api_key_file=str(r.api_key_file) if r.api_key_file else None,
        suite=layout.live(base.with_suffix(".suite.yaml")), compare_url=r.compare_url,
        compare_api_key_file=str(r.compare_api_key_file) if r.compare_api_key_file else None,
        compare_model=r.compare_model, requests=r.requests, concurrency=r.concurrency, timeout=r.timeout,
        thresholds={k: float(v) for k, v in r.thresholds.__dict__.items()},
        baseline=layout.live(base.with_suffix(".baseline.json")) if r.baseline else None,
        every_s=req.every_s, for_s=req.for_s, runs=runs, created=datetime.now(UTC))


def plan_schedule(req: ScheduleRequest) -> tuple[ScheduleRecord, dict[Path, tuple[bytes, int]], list[str]]:
    """Check every input and render every file (path -> (bytes, mode)); nothing is written."""
    import re
    import sys


    if not re.fullmatch(NAME_PATTERN, req.name):
        raise UsageError(f"schedule name {req.name!r}: lower-case letters, digits, '.', '_', '-'",
                         code="canary.bad_schedule")
    r = req.run
    if r.suite is None:
        r = replace(r, suite="demo")
    check_request(r)  # exactly what `canary run` checks (URLs, thresholds, suite, baseline, keys), exit 2
    check_python(sys.executable, option="gptossctl's own interpreter (the canary service runs it)")
    layout = ScheduleLayout(req.root or Path("/"))
    runs = run_times(_first_run(req.start), req.every_s, req.for_s)
    record = _record(req, runs, layout)
    service_dropin, notes = render_service_dropin(record)
    # The suite travels with the schedule (a copy next to the record): editing or removing the file it came
    # from must not change a week already running.
    suite_path = Path(r.suite) if r.suite and Path(r.suite).is_file() else builtin_dir() / f"{r.suite or 'demo'}.yaml"
    files: dict[Path, tuple[bytes, int]] = {
        layout.record(req.name): (record.model_dump_json(by_alias=True, indent=1).encode(), 0o644),
        layout.config_dir / f"{req.name}.suite.yaml": (suite_path.read_bytes(), 0o644),
        layout.unit_dir / f"gptoss-canary@{req.name}.timer.d" / "schedule.conf": (render_timer_dropin(runs).encode(), 0o644),
        layout.unit_dir / f"gptoss-canary@{req.name}.service.d" / "canary.conf": (service_dropin.encode(), 0o644),
    }
    if r.baseline:
        files[layout.config_dir / f"{req.name}.baseline.json"] = (r.baseline.read_bytes(), 0o644)
    for unit in UNITS:
        text = fill_template((data_dir("systemd") / unit).read_text(), {"python": sys.executable})
        files[layout.unit_dir / unit] = (text.encode(), 0o644)
    return record, files, notes


def schedule_canary(req: ScheduleRequest, *, systemd: Systemd | None = None) -> Schedule:
    """Lay the timer and service of one schedule, start the timer (live), and grade the service."""
    layout = ScheduleLayout(req.root or Path("/"))
    sd = systemd or Systemd(req.root)
    if req.root is None and not req.dry_run:
        sd.require_running()
        if os.geteuid() != 0:
            raise EnvironmentNotReady("laying a systemd timer needs root", code="canary.not_root",
                                      hint="run with sudo, or stage it with --root DIR")
    record, files, notes = plan_schedule(req)
    out = Schedule(req.name, record.runs, {layout.live(p): f"{mode:o}" for p, (_, mode) in files.items()},
                   layout.live(layout.state(req.name)), notes=notes,
                   units={p.name if p.parent == layout.unit_dir else f"{p.parent.name}/{p.name}": data.decode()
                          for p, (data, _) in files.items() if "systemd" in str(p)})
    if req.dry_run:
        return out
    for path, (data, mode) in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data)
        path.chmod(mode)
    timer = f"gptoss-canary@{req.name}.timer"
    sd.daemon_reload()
    if sd.live:
        sd.systemctl("restart", timer)  # a re-scheduled NAME picks up its new times at once
    sd.enable(timer)
    out.started = sd.live
    exposure = sd.security(f"gptoss-canary@{req.name}.service")
    out.exposure = exposure.score if exposure else None
    if exposure is not None and exposure.score is not None and exposure.score > MAX_EXPOSURE:
        out.notes.append(f"systemd-analyze security exposure {exposure.score} > {MAX_EXPOSURE}")
    return out


def load_record(path: Path) -> ScheduleRecord:
    try:
        return ScheduleRecord.model_validate_json(path.read_bytes())
    except OSError as exc:
        raise UsageError(f"no canary schedule at {path}: {exc.strerror}", code="canary.no_schedule",
                         hint="lay one with 'gptossctl canary schedule'") from None
    except ValidationError as exc:
        raise UsageError(f"{path} is not a canary schedule: {exc.errors()[0]['msg']}", code="canary.no_schedule",
                         hint="lay it again with 'gptossctl canary schedule'") from None


def _credential(name: str, fallback: str | None) -> Path | None:
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds and (Path(creds) / name).is_file():
        return Path(creds) / name  # the copy systemd made for the dynamic user
    return Path(fallback) if fallback else None


def run_scheduled(name: str, *, layout: ScheduleLayout | None = None,
                  on_progress: Callable[[int, int], None] = lambda _d, _t: None) -> CanaryReport:
    """One firing of the timer: run the schedule's canary and keep its reports in runs/<UTC time>/."""
    lay = layout or ScheduleLayout()
    rec = load_record(lay.record(name))
    state = Path(os.environ.get("STATE_DIRECTORY") or lay.state(name))
    baseline = Path(rec.baseline) if rec.baseline else state / "baseline.json"
    out = state / "runs" / datetime.now(UTC).strftime(STAMP)
    t = rec.thresholds
    req = RunRequest(url=rec.url, api_key_file=_credential("api-key", rec.api_key_file), model=rec.model,
                     suite=rec.suite, compare_url=rec.compare_url,
                     compare_api_key_file=_credential("compare-api-key", rec.compare_api_key_file),
                     compare_model=rec.compare_model, requests=rec.requests, concurrency=rec.concurrency,
                     timeout=rec.timeout, baseline=baseline if baseline.is_file() else None, out=out,
                     thresholds=Thresholds(**{k: type(getattr(Thresholds(), k))(v) for k, v in t.items()}))
    report = run_request(req, on_progress=on_progress)
    if not baseline.is_file():
        shutil.copyfile(out / "report.json", baseline)  # the first run is the baseline of the week
    return report
