"""One canary run, in named steps: (1) resolve the model of each endpoint, (2) build the requests (a suite,
or vllm bench's random workload), (3) scrape each server's /metrics, (4) drive the load against the
gpt-oss service and, when given, the current stack, interleaved, while sampling the servers' gauges,
(5) scrape again, (6) summarise each endpoint, (7) put them side by side, (8) verdict: thresholds, the
current stack, the baseline.

The report (`gptossctl.canary-report/3`) keeps the gpt-oss endpoint's metrics at the top level, where
/1 had them (so a /1 report still serves as a baseline), the current stack's under `current`, and the
comparison under `side_by_side`. /3 over /2: throughput is each endpoint's own (over its busy span,
`throughput.span_s`; /2 divided both by the run's wall time), a workflow's latency is over every answer of it,
and each side-by-side row carries its bootstrap interval, tolerance and sample counts (judgements
"inconclusive" and "not enough data" are new). /1 and /2 reports are still read as baselines and by the trend.
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

from gptossctl.adapters.openai_http import Client, Endpoint, bad_response, check_service_url, read_api_key
from gptossctl.errors import Finding, ServiceUnavailable, UsageError
from gptossctl.fsutil import atomic_write
from gptossctl.probe.canary import metrics as prom
from gptossctl.probe.canary.baseline import compare, load_baseline
from gptossctl.probe.canary.compare import side_by_side, worse_reasons
from gptossctl.probe.canary.load import RequestResult, RequestSpec, Target, run_load
from gptossctl.probe.canary.report import junit, write_reports
from gptossctl.probe.canary.suite import Suite, load_suite
from gptossctl.probe.canary.summary import Workload, summarise_endpoint

REPORT_SCHEMA = "gptossctl.canary-report/3"
MAX_INPUT_LEN = 131_072  # gpt-oss's context window: a longer synthetic prompt cannot be served
MAX_OUTPUT_LEN = 131_072
PRIMARY, CURRENT = "gpt-oss", "current"
_WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november "
          "oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu the of "
          "and to in is ").split()


@dataclass(frozen=True)
class Thresholds:
    min_correctness: float = 1.0
    max_safety_incidents: int = 0
    max_error_rate: float = 0.0
    max_regression: float = 0.20  # relative: p95 TTFT/E2EL up, throughput down by more than this
    max_harmony_failures: int = 0


@dataclass(frozen=True)
class CanaryOptions:
    model: str | None = None
    suite: Suite | None = None
    requests: int | None = None
    duration: float | None = None
    concurrency: int = 1
    rate: float | None = None
    random_input_len: int | None = None
    random_output_len: int = 16
    ignore_eos: bool = False
    seed: int = 0
    thresholds: Thresholds = Thresholds()
    compare: Endpoint | None = None  # the current stack, any OpenAI-compatible endpoint
    compare_model: str | None = None


@dataclass
class CanaryReport:
    data: dict[str, Any]
    reasons: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.reasons

    @property
    def findings(self) -> list[Finding]:
        return [Finding("canary.threshold", "canary", r, hint="open report.html (canary run --out DIR) for the "
                        "failed cases and requests; fix the service, or the threshold if it was wrong")
                for r in self.reasons]

    def to_dict(self) -> dict[str, Any]:
        return {**self.data, "ok": self.ok, "reasons": self.reasons}


def _suite_work(suite: Suite) -> tuple[list[RequestSpec], Workload]:
    specs: list[RequestSpec] = []
    cases, safety, prompts = {}, {}, {}
    for wf in suite.workflows:
        for case in wf.cases:
            key = f"{wf.name}/{case.id}"
            msgs = ([{"role": "system", "content": case.system}] if case.system else []) + \
                [{"role": "user", "content": case.prompt}]
            specs.append(RequestSpec(key, tuple(msgs), case.max_tokens))
            cases[key], prompts[key] = case, case.prompt
    for s in suite.safety:
        key = f"safety/{s.id}"
        specs.append(RequestSpec(key, ({"role": "user", "content": s.prompt},), s.max_tokens))
        safety[key], prompts[key] = s, s.prompt
    return specs, Workload("suite", cases, safety, prompts)


def _random_specs(client: Client, model: str, n: int, opts: CanaryOptions) -> list[RequestSpec]:
    """vllm bench's random dataset, same option names: prompts of exactly --random-input-len tokens
    (cut with the server's own tokenizer), --random-output-len tokens out, --ignore-eos."""
    assert opts.random_input_len is not None
    rng = random.Random(opts.seed)
    specs = []
    for i in range(n):
        text = " ".join(rng.choice(_WORDS) for _ in range(opts.random_input_len * 2))
        tok = client.request("POST", "/tokenize", body={"model": model, "prompt": text, "add_special_tokens": False})
        if not tok.ok:
            raise ServiceUnavailable(f"POST /tokenize -> {tok.status}", code="canary.tokenize_failed",
                                     hint="the random workload needs vLLM's /tokenize; use --suite on other servers")
        tokens = tok.body.get("tokens") if isinstance(tok.body, dict) else None
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            raise bad_response("POST /tokenize", "no list of token ids")
        det = client.request("POST", "/detokenize", body={"model": model, "tokens": tokens[: opts.random_input_len]})
        prompt = det.body.get("prompt") if isinstance(det.body, dict) else None
        if not det.ok or not isinstance(prompt, str):
            raise bad_response("POST /detokenize", f"HTTP {det.status} and no prompt text")
        specs.append(RequestSpec(f"random-{i}", ({"role": "user", "content": prompt},),
                                 opts.random_output_len, opts.ignore_eos, temperature=None))
    return specs


def _workload(client: Client, model: str, opts: CanaryOptions) -> tuple[list[RequestSpec], Workload]:
    if opts.random_input_len is not None:
        return _random_specs(client, model, opts.requests or 100, opts), Workload("random", {}, {}, {})
    if opts.suite is None:
        raise UsageError("no suite and no --random-input-len", code="canary.no_workload",
                         hint="pass --suite NAME|FILE or the synthetic options")
    base, work = _suite_work(opts.suite)
    n = max(opts.requests or len(base), len(base))
    return [base[i % len(base)] for i in range(n)], work


class _Gauges:
    """The servers' /metrics during the run, once a second, on a thread (a missed sample is not a failure).
    Kept as text and parsed after the run: parsing holds the GIL for milliseconds, which would delay the
    load generator's event loop and so its timestamps."""

    def __init__(self, clients: dict[str, Client]) -> None:
        self.clients = clients
        self.texts: dict[str, list[str]] = {k: [] for k in clients}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            for label, client in self.clients.items():
                try:
                    self.texts[label].append(_metrics_text(client))
                except Exception:  # noqa: BLE001, S110 - a missed sample is not a failed run
                    pass

    def samples(self, label: str) -> list[prom.Scrape]:
        return [prom.parse(t) for t in self.texts[label]]

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _drive(targets: Sequence[Target], clients: dict[str, Client], specs: list[RequestSpec], opts: CanaryOptions,
           on_progress: Callable[[int, int], None]) -> tuple[list[RequestResult], float, dict[str, Any]]:
    before = {label: prom.parse(_metrics_text(c)) for label, c in clients.items()}
    done = [0]
    total = len(specs) * len(targets) if opts.duration is None else 0

    def progress(_r: RequestResult) -> None:
        done[0] += 1
        on_progress(done[0], total)

    with _Gauges(clients) as gauges:
        results, wall = run_load(targets, specs, concurrency=opts.concurrency, rate=opts.rate, seed=opts.seed,
                                 duration=opts.duration, on_done=progress)
    server = {}
    for label, c in clients.items():
        after = prom.parse(_metrics_text(c))
        server[label] = prom.delta(before[label], after, [*gauges.samples(label), after])
    return results, wall, server


def run_canary(endpoint: Endpoint, opts: CanaryOptions, *, baseline: dict[str, Any] | None = None,
               on_progress: Callable[[int, int], None] = lambda _d, _t: None) -> CanaryReport:
    clients = {PRIMARY: Client(endpoint)}
    if opts.compare is not None:
        clients[CURRENT] = Client(opts.compare)
    try:
        targets = [Target(PRIMARY, endpoint, opts.model or _first_model(clients[PRIMARY]))]
        if opts.compare is not None:
            targets.append(Target(CURRENT, opts.compare, opts.compare_model or _first_model(clients[CURRENT])))
        specs, work = _workload(clients[PRIMARY], targets[0].model, opts)
        started = datetime.now(UTC)
        results, wall, server = _drive(targets, clients, specs, opts, on_progress)
    finally:
        for c in clients.values():
            c.close()
    data = _header(opts, work, started, wall)
    for t in targets:
        summary = summarise_endpoint([r for r in results if r.target == t.label], wall, work)
        summary.update(url=t.endpoint.url, model=t.model, server=server[t.label])
        if t.label == PRIMARY:
            data.update(summary)
        else:
            data[CURRENT] = summary
    if CURRENT in data:
        data["side_by_side"] = side_by_side(data, data[CURRENT], max_regression=opts.thresholds.max_regression)
    report = CanaryReport(data)
    _verdict(report, opts.thresholds, baseline)
    return report


def _header(opts: CanaryOptions, work: Workload, started: datetime, wall: float) -> dict[str, Any]:
    return {
        "schema": REPORT_SCHEMA, "mode": work.mode,
        "suite": opts.suite.name if opts.suite and work.mode == "suite" else None,
        "started": started.isoformat(), "duration_s": wall, "concurrency": opts.concurrency, "rate": opts.rate,
        "random": {"input_len": opts.random_input_len, "output_len": opts.random_output_len,
                   "ignore_eos": opts.ignore_eos} if work.mode == "random" else None,
        "thresholds": opts.thresholds.__dict__,
    }


def _first_model(client: Client) -> str:
    r = client.request("GET", "/v1/models")
    try:
        return str(r.body["data"][0]["id"])
    except (KeyError, IndexError, TypeError):
        raise ServiceUnavailable(f"cannot list models at {client.endpoint.url}: HTTP {r.status}",
                                 code="canary.no_model", hint="check the API key file and the URL") from None


def _metrics_text(client: Client) -> str:
    try:
        r = client.request("GET", "/metrics", key=False)
    except ServiceUnavailable:
        return ""
    return r.body if isinstance(r.body, str) and r.ok else ""


def _verdict(report: CanaryReport, t: Thresholds, baseline: dict[str, Any] | None) -> None:
    d = report.data
    rate = d["correctness"]["rate"]
    if rate is not None and rate < t.min_correctness:
        failed = [r["case"] for w in d["correctness"]["workflows"].values() for r in w["results"] if not r["passed"]]
        report.reasons.append(f"first-pass correctness {rate:.0%} < {t.min_correctness:.0%} (failed: {', '.join(failed)})")
    incidents = len(d["safety"]["incidents"])
    if incidents > t.max_safety_incidents:
        report.reasons.append(f"{incidents} safety incident(s): "
                              + ", ".join(i["case"] for i in d["safety"]["incidents"]))
    h = d["harmony"]
    if h["failed"] > t.max_harmony_failures:
        report.reasons.append(f"{h['failed']} answer(s) break the harmony format (leaked markers {h['leaked_marker']}, "
                              f"bad tool calls {h['bad_tool_call']}, empty final answers {h['empty_final']}): "
                              + ", ".join(a["case"] for a in h["answers"]))
    if d["errors"]["rate"] > t.max_error_rate:
        report.reasons.append(f"error rate {d['errors']['rate']:.1%} ({d['errors']['by_class']})")
    if "side_by_side" in d:
        report.reasons += worse_reasons(d["side_by_side"])
    if baseline is not None:

        d["baseline"] = compare(d, baseline, t.max_regression)
        report.reasons += [c["message"] for c in d["baseline"] if c["regressed"]]


@dataclass(frozen=True)
class RunRequest:
    """What `canary run` was asked, before anything is read or sent."""

    url: str
    api_key_file: Path | None = None
    model: str | None = None
    suite: str | None = None
    compare_url: str | None = None
    compare_api_key_file: Path | None = None
    compare_model: str | None = None
    requests: int | None = None
    duration: float | None = None
    concurrency: int = 1
    rate: float | None = None
    random_input_len: int | None = None
    random_output_len: int = 16
    ignore_eos: bool = False
    baseline: Path | None = None
    out: Path | None = None
    junit: Path | None = None
    timeout: float = 120.0
    thresholds: Thresholds = Thresholds()


def check_thresholds(t: Thresholds) -> None:
    """Every gate a number that can fail: NaN makes every comparison false, and so would switch a gate off."""
    def bad(option: str, value: float, rule: str) -> UsageError:
        return UsageError(f"{option} {value}: {rule}", code="usage.bad_threshold",
                          hint=f"give {option} as {rule}")

    if not (math.isfinite(t.min_correctness) and 0.0 <= t.min_correctness <= 1.0):
        raise bad("--min-correctness", t.min_correctness, "a number from 0 to 1 (1 = every case must pass)")
    if not (math.isfinite(t.max_regression) and 0.0 <= t.max_regression <= 100.0):
        raise bad("--max-regression", t.max_regression, "a number from 0 to 100 (0.2 = 20 %)")
    if not (math.isfinite(t.max_error_rate) and 0.0 <= t.max_error_rate <= 1.0):
        raise bad("the error rate", t.max_error_rate, "a number from 0 to 1")
    for option, n in (("--max-safety-incidents", t.max_safety_incidents),
                      ("--max-harmony-failures", t.max_harmony_failures)):
        if not 0 <= n <= 10_000_000:
            raise bad(option, n, "a whole number from 0 up")


def check_request(req: RunRequest) -> tuple[Suite | None, dict[str, Any] | None]:
    """Everything `canary run` and `canary schedule` are given, checked the same way before anything is sent
    or written; returns the suite and the baseline."""
    if req.duration is not None and req.requests is not None:
        raise UsageError("give --requests or --duration, not both", code="usage.conflict")
    if (req.compare_api_key_file or req.compare_model) and not req.compare_url:
        raise UsageError("--compare-api-key-file and --compare-model need --compare-url", code="usage.conflict")
    check_service_url(req.url)
    if req.compare_url is not None:
        check_service_url(req.compare_url, option="--compare-url")
    check_thresholds(req.thresholds)
    if req.random_input_len is not None and not 1 <= req.random_input_len <= MAX_INPUT_LEN:
        raise UsageError(f"--random-input-len {req.random_input_len}: at most {MAX_INPUT_LEN} tokens",
                         code="usage.bad_length", hint="give a prompt length the model's context can hold")
    if not 1 <= req.random_output_len <= MAX_OUTPUT_LEN:
        raise UsageError(f"--random-output-len {req.random_output_len}: at most {MAX_OUTPUT_LEN} tokens",
                         code="usage.bad_length", hint="give an output length the model's context can hold")
    suite = load_suite(req.suite) if req.suite else (None if req.random_input_len else load_suite("demo"))
    base = load_baseline(req.baseline) if req.baseline else None
    for key in (req.api_key_file, req.compare_api_key_file):
        if key is not None:
            read_api_key(key)
    return suite, base


def run_request(req: RunRequest, *, on_progress: Callable[[int, int], None] = lambda _d, _t: None) -> CanaryReport:
    """Check every input (suite, baseline, key files) before the first request, run, write the reports."""
    suite, base = check_request(req)
    endpoint = Endpoint(req.url, read_api_key(req.api_key_file) if req.api_key_file else None, req.timeout)
    compare = Endpoint(req.compare_url, read_api_key(req.compare_api_key_file) if req.compare_api_key_file else None,
                       req.timeout) if req.compare_url else None
    opts = CanaryOptions(model=req.model, suite=suite, requests=req.requests, duration=req.duration,
                         concurrency=req.concurrency, rate=req.rate, random_input_len=req.random_input_len,
                         random_output_len=req.random_output_len, ignore_eos=req.ignore_eos,
                         thresholds=req.thresholds, compare=compare, compare_model=req.compare_model)
    report = run_canary(endpoint, opts, baseline=base, on_progress=on_progress)
    if req.out:
        report.data["files"] = write_reports(report, req.out)
    if req.junit:
        atomic_write(req.junit, junit(report.to_dict()))
    return report
