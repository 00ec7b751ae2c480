"""`gptossctl install`: one command on the air-gapped host, and either a healthy hardened service or the
previous state untouched with a clear reason.

The named steps, in an order chosen for what a failure leaves behind:
  (1) validate the request  (2) verify the bundle, once  (3) plan: downgrade check, then the host checks of
  install/checklist.py (router, hardware on the bundle's own profiles, libraries, wheels, interpreter, ports,
  disk; a dry run runs the same list and reports every failure)  (4) unpack into releases/.N.partial,
  re-hashing every byte, build the offline environment and render unit, config and environment file from the
  verified copy; rename: a whole release
  (5) the service user, and with --listen the TLS listener's files (put back on any failure up to (8))
  (6) the units  (7) restart, /health, smoke  (8) switch `current` and commit the
  records (trust, API key): only now is it "installed"  (9) the daily compliance timer.
A failure after (6) puts back the previous release's unit and proves it healthy; a failure before it touched
nothing that serves. Running the same command again after an interruption converges: finished releases are
reused, partial ones discarded.

Every release is one serving set (install/serving.py): the router on --port and one or more replicas behind
it (every GPU of the host, or --replicas/--tp), each its own unit, port and GPUs. (6)-(7) are
install/rolling.py's: onto a running instance of the same shape replica by replica (drained at the router
first), else all at once. An instance installed before the router was always in front (one vLLM unit on the
port) moves behind it in one install, through the same health gate and rollback; the plan says so first
(its old unit stops before the new replica starts: on a one-GPU host it holds the memory).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

from gptossctl import __version__
from gptossctl.adapters.gpus import Captures
from gptossctl.adapters.systemd import Systemd
from gptossctl.bundle.manifest import parse_manifest
from gptossctl.bundle.materialize import delta_base, inspect_source, is_bundle, materialize
from gptossctl.bundle.verify import TrustPolicy, VerifiedBundle, read_envelope, verify_bundle
from gptossctl.errors import CheckFailed, EnvironmentNotReady, Finding, GptossctlError, Interrupted, UsageError
from gptossctl.fsutil import atomic_write, check_not_inside, discard
from gptossctl.hardware.check import ProfileFit
from gptossctl.hardware.layout import LayoutRequest
from gptossctl.install import audit
from gptossctl.install.activate import wipe_kernel_caches
from gptossctl.install.checklist import Preflight, free_bytes, run_checks
from gptossctl.install.environment import (
    LISTING,
    build_env,
    check_flags,
    check_imports,
    interpreter_exposure,
    listing,
    wheels_in,
)
from gptossctl.install.layout import (
    SERVICE_USER,
    Layout,
    check_confined,
    check_instance,
    check_writable,
    install_lock,
)
from gptossctl.install.listen import (
    EdgeInput,
    ListenRequest,
    describe,
    edge_installed,
    has_listener_files,
    load_edge,
    remove_edge,
)
from gptossctl.install.release import (
    DEFAULT_PORT,
    LOOPBACK,
    EdgeRecord,
    ReleaseRecord,
    ReplicaRecord,
    current_version,
    default_instance,
    endpoint_url,
    installed_versions,
    read_release,
    served_name,
    switch_current,
    write_release,
)
from gptossctl.install.render import ships_vocab
from gptossctl.install.rolling import (
    Activation,
    bring_up,
    can_roll,
    install_serving_units,
    journal_findings,
    restore_release,
    roll,
    serving_units,
)
from gptossctl.install.router import reload_router
from gptossctl.install.seal import high_water, make_seal, require_as_sealed, require_edge_as_sealed
from gptossctl.install.serving import render_set
from gptossctl.install.steps import StepCallback, StepRecord, Steps
from gptossctl.install.timer import install_compliance_timer
from gptossctl.install.trust import TrustPlan, choose_api_key, commit_state, plan_trust, release_api_key
from gptossctl.install.units import check_shipped
from gptossctl.install.unpack import unpack_release
from gptossctl.templates import check_python

SYSUSERS = f'u {SERVICE_USER} - "gpt-oss vLLM service" /var/lib/gptoss /usr/sbin/nologin\n'
Progress = Callable[[int], None]


@dataclass(frozen=True)
class InstallRequest:
    bundle: Path
    policy: TrustPolicy | None  # --trust/--threshold; None: the instance's trust root (or --trust-root)
    instance: str | None = None
    profile: str = "auto"
    root: Path = Path("/")
    host: str = LOOPBACK
    port: int = DEFAULT_PORT
    start: bool = True
    dry_run: bool = False
    allow_downgrade: bool = False
    health_timeout: float = 1800.0
    captures: Captures = Captures()
    python: Path = Path("/usr/bin/python3")  # the interpreter the release's venv is built on
    vllm_python: Path | None = None  # an environment the site maintains, for bundles without wheels
    smoke: bool = True
    repair: bool = False  # unpack the release again even if it is there (drift found by compliance check)
    base: Path | None = None  # for a delta: the bundle it was made against (default: an installed release)
    replicas: int | None = None  # default: as many as the host holds (the hardware check's layout)
    tensor_parallel: int | None = None  # default: the smallest size that fits
    drain_timeout: float = 600.0  # rolling upgrade: how long a drained replica may finish its requests
    trust_root: Path | None = None  # a signed root file for a first install (instead of --trust)
    listen: ListenRequest | None = None  # the router's TLS listener on the site's network; None: loopback only

    @property
    def layout_request(self) -> LayoutRequest:
        return LayoutRequest(replicas=self.replicas, tensor_parallel=self.tensor_parallel)

    def command(self) -> list[str]:
        """The request as the audit log records it (no secrets: keys come from files, never flags)."""
        return ["install", str(self.bundle), f"--profile={self.profile}", f"--port={self.port}"] + \
            ([f"--instance={self.instance}"] if self.instance else []) + \
            (["--allow-downgrade"] if self.allow_downgrade else []) + (["--repair"] if self.repair else []) + \
            self.layout_request.overrides + (self.listen.args if self.listen else [])


@dataclass
class InstallResult:
    instance: str
    version: int
    previous: int | None
    profile: str
    endpoint: str
    unit: str
    release: Path
    staged: bool
    started: bool
    changed: bool = True
    dry_run: bool = False
    steps: list[StepRecord] = field(default_factory=list)
    smoke: dict[str, Any] | None = None
    bundle_sha256: str | None = None
    replicas: tuple[ReplicaRecord, ...] = ()  # behind the router (`unit`)
    trust: TrustPlan | None = None  # the root this install verified against, and whether it set one
    signed_by: tuple[dict[str, str | None], ...] = ()
    edge: EdgeRecord | None = None  # the router's listener on the site's network; None: loopback only
    edge_removed: str = ""  # what a switch to a release without the listener removed (audited)

    def to_dict(self) -> dict[str, Any]:
        return {"instance": self.instance, "version": self.version, "previous": self.previous,
                "profile": self.profile, "endpoint": self.endpoint, "unit": self.unit, "release": str(self.release),
                "staged": self.staged, "started": self.started, "changed": self.changed, "dry_run": self.dry_run,
                "steps": [s.to_dict() for s in self.steps], "smoke": self.smoke,
                "replicas": [r.to_dict() for r in self.replicas], "signed_by": [dict(s) for s in self.signed_by],
                "trust": self.trust.to_dict() if self.trust else None,
                "listen": self.edge.to_dict() if self.edge else None, "open": describe(self.edge)}


@dataclass(frozen=True)
class Plan:
    """Everything decided before the host is changed."""

    req: InstallRequest
    bundle: VerifiedBundle
    layout: Layout
    systemd: Systemd
    fit: ProfileFit
    previous: int | None
    trust: TrustPlan
    replicas: tuple[ReplicaRecord, ...]  # one or more, behind the router on --port
    router: Path  # the nginx the router unit runs
    moving: str = ""  # the previous release is a legacy single: what moving it behind the router does
    edge: EdgeInput | None = None  # install --listen, judged: the router's TLS listener

    @property
    def edge_record(self) -> EdgeRecord | None:
        return self.edge.record() if self.edge else None

    @property
    def version(self) -> int:
        return self.bundle.manifest.version

    @property
    def release(self) -> Path:
        return self.layout.release(self.version)

    @property
    def live_start(self) -> bool:
        return self.req.start and not self.layout.staged


INCOMING = ".incoming"  # under opt/gptoss: where parts and deltas are rebuilt into a bundle before install
# Refusals of the root itself: its audit log would be written inside a bundle or outside the root.
_ROOT_REFUSED = frozenset({"install.out_inside_source", "install.link_escapes_root"})


def install(req: InstallRequest, *, on_step: StepCallback | None = None, progress: Progress | None = None,
            on_total: Progress | None = None) -> InstallResult:
    """Install or upgrade one instance; every step is recorded, also in the error when one fails."""
    steps = Steps(on_step)
    try:
        with _assembled_removed_on_failure(req), _dry_run_scratch(req) as scratch:
            result, checked = _install(req, steps, progress, on_total, scratch)
    except KeyboardInterrupt:
        raise _interrupted(req, steps) from None
    except GptossctlError as exc:
        exc.data.setdefault("steps", steps.to_dicts())
        if not req.dry_run and exc.code not in _ROOT_REFUSED:
            audit.record(req.root, req.command(), f"failed: {exc.code}", instance=exc.data.get("instance", req.instance),
                         digest=exc.data.get("bundle_sha256"), detail=exc.message, failure=exc)
        raise
    if not req.dry_run:
        sealed = make_seal(Layout(req.root, result.instance), result.version)
        audit.record(req.root, req.command(), "ok" if result.changed else "unchanged", instance=result.instance,
                     digest=result.bundle_sha256, detail=f"release {result.version} ({result.profile})"
                     + (", started" if result.started else "") + f", signed by {_signed_by(result)}"
                     # The install that sets (or migrates) the root is the trust change's audit entry.
                     + (f"; trust {result.trust.audit_detail()}" if result.trust and result.trust.change else "")
                     + (f"; {result.edge_removed}" if result.edge_removed else ""),
                     attach={"seal": sealed} if sealed else None, checked=checked)
    return result


def _signed_by(result: InstallResult) -> str:
    return ", ".join(f"{s['name'] or '?'} ({str(s['keyid'])[:16]})" for s in result.signed_by) or "-"


def _interrupted(req: InstallRequest, steps: Steps) -> Interrupted:
    """Ctrl-C during an install: the steps that finished go into the audit log (a second Ctrl-C is ignored
    while it is written), so what changed is on record; the error is one result document, exit 130. Running
    the same install again converges."""
    with suppress(ValueError):  # not the main thread: nothing to ignore there
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    done = [s["step"] for s in steps.to_dicts() if s.get("status") == "ok"]
    exc = Interrupted("install interrupted" + (f" after: {', '.join(done)}" if done else " before any change"),
                      code="install.interrupted",
                      hint="run the same install again (it converges); 'gptossctl status' and 'gptossctl audit "
                           "verify' show where it stopped")
    exc.data["steps"] = steps.to_dicts()
    if not req.dry_run:
        audit.record(req.root, req.command(), "interrupted", instance=req.instance, detail=exc.message, failure=exc)
    return exc


@contextmanager
def _assembled_removed_on_failure(req: InstallRequest) -> Iterator[None]:
    """A refused or failed install from parts or a delta leaves nothing of what it assembled: the rebuilt
    bundle in opt/gptoss/.incoming, and the folders made for it on a fresh root, go ("nothing changed").
    What was there before (an earlier run's leftovers) is not ours to remove."""
    if req.dry_run or is_bundle(req.bundle):
        yield
        return
    scratch = Layout(req.root).base / INCOMING
    fresh = [d for d in (scratch, scratch.parent, scratch.parent.parent) if not d.exists()]  # deepest first
    before = set(scratch.iterdir()) if scratch.is_dir() else set()
    try:
        yield
    except BaseException:
        for p in sorted(set(scratch.iterdir()) - before) if scratch.is_dir() else []:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                discard(p)
        for d in fresh:
            with suppress(OSError):
                d.rmdir()  # only when empty: the lock file or a release keeps it
        raise


DRY_RUN_PREFIX = "gptossctl-dry-run-"  # then the dry run's pid: gptossctl-dry-run-<pid>-<random>
_DRY_RUN_SCRATCH = re.compile(re.escape(DRY_RUN_PREFIX) + r"([0-9]{1,10})-[A-Za-z0-9_]+")
DRY_RUN_MARGIN = 16 << 20  # the envelope, the parts' bookkeeping


@contextmanager
def _dry_run_scratch(req: InstallRequest) -> Iterator[Path | None]:
    """A dry run on parts or a delta rebuilds the bundle in a temporary folder (TMPDIR), never in the install
    tree, to verify and plan it as install would; the folder goes when the dry run ends, whatever happened. A
    killed dry run's folder is removed by the next one (remove_stale_scratch); too little room in TMPDIR for
    the whole bundle is exit 3 before anything is copied."""
    if not req.dry_run or is_bundle(req.bundle):
        yield None
        return
    tmp = Path(tempfile.gettempdir())
    remove_stale_scratch(tmp, started=time.time())
    _require_scratch_room(req.bundle, tmp)
    scratch = Path(tempfile.mkdtemp(prefix=f"{DRY_RUN_PREFIX}{os.getpid()}-", dir=tmp))
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def remove_stale_scratch(tmp: Path, *, started: float) -> list[Path]:
    """The rebuilt copies earlier dry runs left in `tmp` when they were killed (SIGKILL runs no cleanup): a
    folder named gptossctl-dry-run-<pid>-*, not a link, owned by this user (root on a target), older than
    `started` (this run's start) and whose process is gone. Anything else is left alone."""
    removed = []
    for p in tmp.iterdir() if tmp.is_dir() else ():
        m = _DRY_RUN_SCRATCH.fullmatch(p.name)
        try:
            st = p.lstat()
        except OSError:
            continue
        if m is None or not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mtime >= started \
                or _alive(int(m.group(1))):
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process (or a number no pid can be): not ours to judge gone
    return True


def _require_scratch_room(source: Path, tmp: Path) -> None:
    """Room in TMPDIR for the whole rebuilt bundle (its size read from the parts' or delta's manifest); what
    cannot be read is left for materialize to report."""
    try:
        need = inspect_source(source).manifest.total_size + DRY_RUN_MARGIN
    except GptossctlError:
        return
    free = free_bytes(tmp)
    if free is not None and need > free:
        raise EnvironmentNotReady(f"a dry run rebuilds the bundle in {tmp} (TMPDIR) first: {need} bytes needed, "
                                  f"{free} free", code="install.dry_run_no_room",
                                  hint=f"point TMPDIR at a folder with {need} bytes free (TMPDIR=/var/tmp "
                                       "gptossctl install ... --dry-run), or run the install itself, which "
                                       "checks its own disk")


def _install(req: InstallRequest, steps: Steps, progress: Progress | None, on_total: Progress | None,
             scratch: Path | None = None) -> tuple[InstallResult, audit.AuditReport | None]:
    validate_request(req)  # (1)
    checked = _audit_intact(req, steps)  # no change is made that its audit entry could not record
    rebuilt = materialized(req, steps, progress, on_total, scratch)  # parts joined, a delta applied to its base
    layout = Layout(req.root, check_instance(req.instance or _named_instance(rebuilt.bundle)))
    now = audit.checked_now(checked.records if checked is not None else ())  # expiry judged at a checked time
    with steps("trust", "the instance's trust root") as d:
        trust = plan_trust(layout, policy=req.policy, root_file=req.trust_root, now=now)  # nothing written yet
        d.append(trust.change or f"root version {trust.root.root.version} ({trust.root.root.digest[:16]})")
    bundle = verify(replace(rebuilt, policy=replace(trust.policy, now=now)), steps, progress, on_total)  # (2)
    if layout.instance != check_instance(req.instance or default_instance(bundle.manifest)):
        raise CheckFailed("the bundle names another instance once verified", code="install.instance_changed",
                          hint="obtain a clean copy of the bundle")  # the peek read the same signed bytes: never
    try:
        # A dry run rebuilt parts or a delta elsewhere: the install would write that bundle on its disk first.
        pending = bundle.manifest.total_size if req.dry_run and rebuilt.bundle != req.bundle else 0
        plan = make_plan(rebuilt, steps, bundle, layout, trust, pending_bytes=pending)  # (3)
        if checked is not None and not req.allow_downgrade:
            _refuse_below_high_water(layout, plan.version, checked.records)
        result = _result(plan, steps)
        if req.dry_run:
            return dry_run(plan, steps, result), None
        if checked is not None and not req.repair:  # a release reused as it stands must be as it was sealed
            require_as_sealed(layout, plan.version, checked.records, code="install.record_changed",
                              hint=f"reinstall it from the signed bundle: gptossctl install {req.bundle} --repair")
        if checked is not None and plan.edge is not None and plan.edge.kept is not None:
            kept = read_release(layout.release(plan.edge.kept))  # the listener kept is re-sealed: as sealed first
            if kept is not None:
                require_edge_as_sealed(layout, kept, checked.records)
        with install_lock(layout):
            try:
                result = apply(plan, steps, result)  # (4)-(9)
            except BaseException:
                _forget_failed_first_install(layout, plan.previous)
                raise
        if rebuilt.bundle != req.bundle:  # the release holds it now (a failure removes it too: see install)
            shutil.rmtree(rebuilt.bundle, ignore_errors=True)
        return result, checked
    except GptossctlError as exc:
        exc.data.setdefault("instance", layout.instance)
        exc.data.setdefault("bundle_sha256", verified_digest(bundle))
        raise


def _refuse_below_high_water(layout: Layout, version: int, records: Sequence[Mapping[str, Any]]) -> None:
    """The floor is the highest release ever sealed by an install of the instance in the verified chain: it
    survives uninstall (the log is kept, --purge too), so a still-valid older bundle is not a first install."""
    high = high_water(records, layout.instance)
    if high is not None and version < high:
        raise CheckFailed(f"bundle version {version} is older than release {high}, the highest installed for "
                          f"{layout.instance} (sealed in the audit chain)", code="install.downgrade",
                          hint="install a newer bundle, use 'gptossctl rollback' to go back to a release still on "
                               "disk, or pass --allow-downgrade on purpose")


def _audit_intact(req: InstallRequest, steps: Steps) -> audit.AuditReport | None:
    """The chain verified before anything changes (exit 1, audit.tampered, when broken); a dry run only says
    whether the install would be refused for it."""
    if req.dry_run:
        try:
            audit.require_intact(req.root)
        except CheckFailed as exc:
            steps.skip("audit", f"dry run: the install would be refused: {exc.message} ({exc.code})")
        return None
    with steps("audit", "verifying the audit chain before changing anything") as d:
        checked = audit.require_intact(req.root)
        d.append(f"{checked.entries} entries, chain, head and anchor intact")
    return checked


def _named_instance(bundle: Path) -> str:
    """The instance a bundle installs as by default, read before verification only to find the instance's trust
    root; verification then checks these same signed bytes, and the name is compared again."""
    try:
        return default_instance(parse_manifest(read_envelope(bundle).payload))
    except CheckFailed:
        verify_bundle(bundle, None)  # the refusal verification gives (every finding), not the peek's
        raise


def validate_request(req: InstallRequest) -> None:
    """(1) Everything that can be judged from the request alone, before any file is read or written."""
    if req.host not in (LOOPBACK, "localhost", "::1"):
        raise UsageError(
            f"refusing to bind vLLM to {req.host}: vLLM's API key guards /v1 only, and /invocations "
            "(and other routes) answer anyone who can reach the port",
            code="install.exposed_bind",
            hint="keep the default 127.0.0.1; open the router (only /v1/* and /health) on the site's network "
                 "with TLS: --listen ADDR:PORT --tls-cert F --tls-key F (README, 'The network edge')")
    if not 1024 <= req.port <= 65535:
        raise UsageError(f"port {req.port} is outside 1024-65535", code="service.bad_port",
                         hint="choose an unprivileged port that nothing else on this host uses, e.g. 8000")
    if req.listen is not None and not req.listen.closes:  # judged before anything is read from the bundle
        load_edge(req.listen, router_host=req.host, taken={req.port})
    req.layout_request  # noqa: B018 - constructing it refuses --replicas 0, --tp 3 as usage errors
    if req.instance is not None:
        check_instance(req.instance)
    if req.root.exists() and not req.root.is_dir():
        raise UsageError(f"--root {req.root} is not a directory", code="install.bad_root",
                         hint="give a directory to stage into (it is created if missing)")
    check_not_inside(req.root, [req.bundle] + ([req.base] if req.base else []), code="install.out_inside_source",
                     option="--root", hint="stage into a folder outside the bundle, its parts and its base")
    if req.root.is_dir():
        check_confined(req.root)
    check_python(req.python, option="--python")
    check_python(sys.executable, option="gptossctl's own interpreter (the compliance timer runs it)")
    if req.vllm_python is not None:
        check_python(req.vllm_python, option="--vllm-python")
    if req.vllm_python is not None and not _on_target(req.root, req.vllm_python).is_file():
        raise UsageError(f"--vllm-python {req.vllm_python} is not a file"
                         + (f" under {req.root} or on this host" if req.root != Path("/") else ""),
                         code="install.no_vllm_python",
                         hint="give the python of an environment that has vLLM installed (.../bin/python)")
    owners = interpreter_owners(req.root)
    interpreters = [(Path(sys.executable), "gptossctl's own interpreter (the compliance timer runs it as root)")]
    if req.vllm_python is not None:
        interpreters.append((_on_target(req.root, req.vllm_python), "--vllm-python"))
    for python, option in interpreters:
        exposed = interpreter_exposure(python, owners)
        if exposed:
            raise CheckFailed(f"{option} {python} can be changed by someone other than root: "
                              + "; ".join(exposed[:5]) + (f" (and {len(exposed) - 5} more)" if len(exposed) > 5 else ""),
                              code="install.interpreter_writable",
                              hint="use an interpreter whose environment, and every directory above it, is owned by "
                                   "root and not group- or world-writable (chown -R root, chmod -R go-w)")
    if not req.dry_run:
        check_writable(Layout(req.root))


def materialized(req: InstallRequest, steps: Steps, progress: Progress | None, on_total: Progress | None,
                 scratch: Path | None = None) -> InstallRequest:
    """What crossed the gap as parts or a delta becomes a whole bundle on the releases' disk first (resumable,
    every piece checked against the signed manifest as it lands); install then verifies it as any bundle.
    A dry run rebuilds it in `scratch` (a temporary folder outside the install tree, removed afterwards)."""
    if is_bundle(req.bundle):
        return req
    layout = Layout(req.root)
    base = req.base or _installed_base(layout, req.bundle)
    if req.dry_run and scratch is None:
        raise AssertionError("a dry run rebuilds in a temporary folder, never in the install tree")
    where = scratch if scratch is not None else layout.base / INCOMING
    with steps("materialize", f"rebuilding the bundle from {req.bundle}"
               + (" in a temporary folder (dry run)" if req.dry_run else "")) as d:
        path = materialize(req.bundle, base=base, scratch=where, policy=req.policy,
                           progress=progress, on_total=on_total)
        d.append(f"{path} rebuilt" + (f" on the base {base}" if base else "")
                 + ("; removed when the dry run ends" if req.dry_run else ""))
    return replace(req, bundle=path)


def _installed_base(layout: Layout, source: Path) -> Path | None:
    """The installed release a delta was made against, if this host has it (matched by signed manifest digest)."""
    ref = delta_base(source)
    if ref is None:
        return None
    for name in layout.instances():
        inst = Layout(layout.root, name)
        for v in installed_versions(inst):
            rec = read_release(inst.release(v))
            if rec is not None and rec.manifest_sha256 == ref.manifest_sha256:
                return inst.release(v)
    return None


def interpreter_owners(root: Path) -> frozenset[int]:
    """Who may own an interpreter the units run: root; when staged, also whoever owns the staging tree."""
    if root == Path("/"):
        return frozenset({0})
    return frozenset({0, root.stat().st_uid if root.exists() else os.getuid()})


def _on_target(root: Path, path: Path) -> Path:
    """A path as the target sees it: under a staging root when it exists there, else on this host."""
    staged = root / path.relative_to("/") if path.is_absolute() else path
    return staged if staged.exists() else path


def verify(req: InstallRequest, steps: Steps, progress: Progress | None, on_total: Progress | None) -> VerifiedBundle:
    """(2) Signatures, expiry and every byte, once: later steps use this verified copy, never the directory."""
    with steps("verify", f"verifying {req.bundle} (signatures, expiry, every byte)") as d:
        bundle = verify_bundle(req.bundle, req.policy, progress=progress, on_total=on_total)
        d.append(f"{bundle.manifest.name} v{bundle.manifest.version}: {len(bundle.manifest.files)} files, "
                 f"{len(bundle.signers)} trusted signature(s): "
                 + ", ".join(f"{s['name']} ({str(s['keyid'])[:16]})" for s in bundle.signed_by))
    return bundle


def verified_digest(bundle: VerifiedBundle) -> str:
    """SHA-256 of the signed manifest as verified (byte-identical to the bundle's manifest.json)."""
    assert bundle.envelope is not None
    return hashlib.sha256(bundle.envelope.payload).hexdigest()


def make_plan(req: InstallRequest, steps: Steps, bundle: VerifiedBundle, layout: Layout, trust: TrustPlan, *,
              pending_bytes: int = 0) -> Plan:
    """(3) Downgrade, templates, then the host checks (install/checklist.py: router, hardware on the bundle's
    own signed profiles, libraries, wheels, interpreter, ports, disk): nothing written yet. `pending_bytes`: what
    is still to be written on the install's disk before the release (a dry run's bundle rebuilt elsewhere)."""
    m = bundle.manifest
    systemd = Systemd(None if not layout.staged else layout.root)
    if req.start and not layout.staged and not req.dry_run:
        systemd.require_running()
    previous = current_version(layout)
    with steps("version", "checking for a downgrade") as d:
        if previous is not None and m.version < previous and not req.allow_downgrade:
            raise CheckFailed(f"bundle version {m.version} is older than the installed {previous}",
                              code="install.downgrade", hint="install a newer bundle, use 'gptossctl rollback' "
                              "to go back to a release still on disk, or pass --allow-downgrade on purpose")
        _refuse_other_build(req, layout.release(m.version), bundle)
        d.append(f"installed {previous if previous is not None else 'none'} -> {m.version}")
    with steps("templates", "the bundle's unit templates are gptossctl's own") as d:
        shipped = check_shipped(bundle.root, m)
        d.append(f"{shipped} unit template(s), each exactly gptossctl's; units are rendered from gptossctl's own")
    prev = read_release(layout.release(previous)) if previous is not None else None
    request, kept = _layout_request(req, prev)
    # The host checks (install/checklist.py): install stops at the first that fails, a dry run runs them all.
    checks = Preflight(bundle, layout, port=req.port, python=req.python, vllm_python=req.vllm_python,
                       profile=req.profile, captures=req.captures, request=request, previous=prev,
                       repair=req.repair, pending_bytes=pending_bytes, kept=kept, listen=req.listen,
                       router_host=req.host)
    run_checks(checks, steps, every=req.dry_run)
    assert checks.fit is not None and checks.router is not None  # run_checks raised otherwise
    fit, replicas, router, edge = checks.fit, checks.replicas, checks.router, checks.edge
    moving = _moving(layout, prev, replicas, port=req.port, live=req.start and not layout.staged)
    if moving:
        with steps("shape", moving) as d:
            d.append(moving)
    return Plan(req, bundle, layout, systemd, fit, previous, trust, replicas, router, moving, edge)


def _moving(layout: Layout, prev: ReleaseRecord | None, replicas: Sequence[ReplicaRecord], *, port: int,
            live: bool) -> str:
    """What moving a legacy instance (one vLLM unit on the port, no router) behind the router does, said before
    it starts: its port goes to the router, and its unit stops before the new replicas start (on a one-GPU host
    it holds the memory the new replica needs), a short outage."""
    if prev is None or not prev.legacy_single:
        return ""
    new = ", ".join(layout.replica_unit_name(r.index) for r in replicas)
    return (f"release {prev.version} runs as one vLLM ({layout.unit_name}) on port {prev.port} without the router: "
            f"this install moves it behind the router ({layout.router_unit_name} takes port {port}, {new} "
            f"on {replicas[0].port}" + (f"-{replicas[-1].port}" if len(replicas) > 1 else "") + "); "
            + (f"{layout.unit_name} stops before {new} start(s): a short outage. A failure puts "
               f"{layout.unit_name} back on port {prev.port}" if live else "the units are laid down, not started"))


def _refuse_other_build(req: InstallRequest, release: Path, bundle: VerifiedBundle) -> None:
    """A release on disk under this version is reused only for the very same signed manifest. Another build
    with the same version (a re-pack, a signer's second build) would otherwise be "reused": the old files keep
    serving while the audit log names the new digest. --repair unpacks this bundle again, whatever is there."""
    rec = read_release(release)
    digest = verified_digest(bundle)
    if rec is None or req.repair or rec.manifest_sha256 == digest:
        return
    raise CheckFailed(f"release {rec.version} on disk was installed from signed manifest {rec.manifest_sha256}; "
                      f"this bundle has the same version but manifest {digest}", code="install.version_conflict",
                      hint="a changed bundle needs a new version: pack it again with a higher --version; if the "
                           "installed release's files or record drifted, pass --repair to unpack this bundle again")


def _layout_request(req: InstallRequest, prev: ReleaseRecord | None) -> tuple[LayoutRequest, str]:
    """What the install asks of the hardware check. An upgrade that names no --replicas keeps the installed
    release's count and tensor-parallel size: the same shape, so replica by replica (a legacy release: one
    replica of its size, behind the router)."""
    if prev is None or req.replicas is not None:
        return req.layout_request, ""
    kept = len(prev.replicas) or 1
    tp = req.tensor_parallel if req.tensor_parallel is not None else prev.tensor_parallel
    return LayoutRequest(replicas=kept, tensor_parallel=tp), f" (--replicas {kept} as release {prev.version} runs)"


def _result(plan: Plan, steps: Steps) -> InstallResult:
    req, layout = plan.req, plan.layout
    return InstallResult(layout.instance, plan.version, plan.previous, plan.fit.profile.name,
                         endpoint_url(req.host, req.port), layout.router_unit_name,
                         plan.release, layout.staged, False, dry_run=req.dry_run, steps=steps.records,
                         bundle_sha256=verified_digest(plan.bundle), replicas=plan.replicas, trust=plan.trust,
                         signed_by=plan.bundle.signed_by, edge=plan.edge_record)


def dry_run(plan: Plan, steps: Steps, result: InstallResult) -> InstallResult:
    layout, release, m = plan.layout, plan.release, plan.bundle.manifest
    for name, what in (("unpack", f"copy {m.total_size / 2**30:.2f} GiB into {release}"),
                       ("environment", "uv venv from the bundle's wheels, offline" if plan.req.vllm_python is None
                        else f"use {plan.req.vllm_python}"),
                       ("render", f"render {len(plan.replicas)} replica unit(s), config(s) and environment "
                        f"file(s) (0600), the router's unit and configuration"),
                       ("caches", "empty the service's kernel caches (torch.compile, inductor, Triton, FlashInfer)"),
                       ("start", f"restart {', '.join(layout.replica_unit_name(r.index) for r in plan.replicas)} and "
                        f"{layout.router_unit_name}, wait for /health, smoke test" if plan.live_start
                        else "enable only (staged or --no-start)"),
                       ("switch", f"{layout.current} -> releases/{plan.version}"),
                       ("edge", f"open {describe(plan.edge_record)}" if plan.edge else
                        "leave the router on loopback only")):
        steps.skip(name, f"dry run: would {what}")
    result.changed = False
    return result


def apply(plan: Plan, steps: Steps, result: InstallResult) -> InstallResult:
    """(4)-(9), under the host's install lock."""
    layout, systemd = plan.layout, plan.systemd
    aside = _set_aside_for_repair(plan)
    existing = read_release(plan.release)
    api_key = choose_api_key(layout, plan.release)
    if plan.previous == plan.version and plan.live_start and existing is not None and \
            _all_active(plan, existing) and _matches(existing, plan, api_key):
        steps.skip("unpack", f"release {plan.version} is current, active and configured as asked")
        commit_state(layout, api_key, plan.trust)
        result.changed, result.started = False, True
        return result
    unpack(plan, steps, existing, api_key, aside)
    with steps("user", f"system user {SERVICE_USER} (sysusers.d)") as d:
        atomic_write(layout.sysusers, SYSUSERS, 0o644)
        systemd.sysusers(layout.sysusers)
        d.append(f"{SERVICE_USER} present")
    try:
        with ExitStack() as stack:
            if plan.edge is not None:  # a failure up to the switch puts the edge's files back as they were
                with steps("edge", "the site's TLS listener: key and certificate root-only, the workers' user") as d:
                    d.append(stack.enter_context(edge_installed(layout, systemd, plan.edge, api_key)))
            _activate_and_switch(plan, steps, result, api_key)
    except BaseException:
        if plan.edge is not None and plan.live_start:  # the restored router rereads the files put back
            with suppress(GptossctlError):
                reload_router(layout, systemd)
        raise
    if plan.edge is None and has_listener_files(layout):  # switched to loopback only: the edge's files go
        with steps("edge", "removing the closed listener's files (the TLS key first)") as d:
            result.edge_removed = remove_edge(layout)
            d.append(result.edge_removed)
    with steps("compliance", f"daily compliance check ({layout.compliance_timer})") as d:
        d.append(install_compliance_timer(layout, systemd))
    return result


def _activate_and_switch(plan: Plan, steps: Steps, result: InstallResult, api_key: str) -> None:
    """(6)-(8): the units started and proven (or enabled only), then `current` switched and the state committed."""
    layout, systemd = plan.layout, plan.systemd
    with steps("caches", "emptying the service's kernel caches (torch.compile, inductor, Triton, FlashInfer)") as d:
        d.append(", ".join(wipe_kernel_caches(layout)) or "none yet")
    if plan.live_start:
        result.smoke = activate(plan, steps, api_key)
        result.started = True
    else:
        with steps("unit", f"installing and enabling {result.unit}") as d:
            units = install_serving_units(layout, systemd, plan.release, api_key)
            d.append(f"{', '.join(units)} enabled" + (" in the staged tree" if layout.staged else ""))
    with steps("switch", f"current -> releases/{plan.version}") as d:
        switch_current(layout, plan.version)
        commit_state(layout, api_key, plan.trust)
        d.append(f"release {plan.version} is current and serving at {result.endpoint}" if result.started else
                 f"current is release {plan.version}; not started ({'staged' if layout.staged else '--no-start'})")


def _set_aside_for_repair(plan: Plan) -> Path | None:
    """--repair unpacks again from the signed bundle: the drifted copy is set aside (the running vLLM keeps its
    open files) and put back only if the fresh unpack fails."""
    if not (plan.req.repair and plan.release.is_dir()):
        return None
    aside = plan.layout.releases / f".{plan.version}.replaced"
    shutil.rmtree(aside, ignore_errors=True)
    os.rename(plan.release, aside)
    return aside


def _all_active(plan: Plan, rec: ReleaseRecord) -> bool:
    return all(plan.systemd.active_state(u) == "active" for u in serving_units(plan.layout, rec))


def _gpus(plan: Plan) -> tuple[int, ...]:
    """The GPUs the release serves on: all of its replicas'."""
    return tuple(g for r in plan.replicas for g in r.gpus)


def _matches(rec: ReleaseRecord, plan: Plan, api_key: str) -> bool:
    return (rec.profile, rec.port, rec.host, rec.gpus, rec.replicas, rec.router, rec.edge) == \
        (plan.fit.profile.name, plan.req.port, plan.req.host, _gpus(plan), plan.replicas, str(plan.router),
         plan.edge_record) \
        and release_api_key(plan.release) == api_key


def _record(plan: Plan, python: str, external: bool) -> ReleaseRecord:
    m, req, fit = plan.bundle.manifest, plan.req, plan.fit
    return ReleaseRecord(version=m.version, bundle=m.name, instance=plan.layout.instance, profile=fit.profile.name,
                         served_name=served_name(m), manifest_sha256=verified_digest(plan.bundle), python=python,
                         installed_at=datetime.now(UTC).isoformat(), expires=m.expires.isoformat(),
                         rendered_by=__version__, host=req.host, port=req.port,
                         tensor_parallel=fit.tensor_parallel or 1, gpus=_gpus(plan), signers=plan.bundle.signers,
                         external_env=external, replicas=plan.replicas, router=str(plan.router),
                         edge=plan.edge_record)


def render_into(plan: Plan, release_dir: Path, python_live: Path, api_key: str, *, external: bool) -> None:
    """Render every replica's unit, config and environment file and the router's files from the release's own
    verified copy, and write the record."""
    layout = plan.layout
    record = _record(plan, str(python_live), external)
    files = render_set(plan.fit.profile, layout, layout.live_path(plan.release), record, api_key,
                       vocab=ships_vocab(plan.bundle.manifest))
    for name, text in files.items():
        atomic_write(release_dir / name, text, 0o600 if name.endswith(".env") else 0o644)  # .env: the key
    write_release(release_dir, replace(record, rendered={
        k: hashlib.sha256(v.encode()).hexdigest() for k, v in files.items()}))


def unpack(plan: Plan, steps: Steps, existing: ReleaseRecord | None, api_key: str, aside: Path | None) -> None:
    """(4) A whole release: unpacked and re-hashed, its environment built, its files rendered; or reused."""
    release, m = plan.release, plan.bundle.manifest
    with steps("unpack", f"unpacking into {release} (hashes re-checked)") as d:
        if existing is not None:
            _refuse_other_build(plan.req, release, plan.bundle)  # checked at plan time; read again under the lock
            d.append(f"release {m.version} already unpacked: reused")
            if not _matches(existing, plan, api_key):  # the same bundle with a new port, profile or key
                render_into(plan, release, Path(existing.python), api_key, external=existing.external_env)
                d.append(f"release {m.version} reused, configuration re-rendered")
            return
        shutil.rmtree(release, ignore_errors=True)  # a directory without a record is not a release
        try:
            unpack_release(plan.bundle, plan.layout, finish=lambda tmp: _finish(plan, steps, tmp, api_key))
        except BaseException:
            if aside is not None and not release.exists():
                os.rename(aside, release)
            raise
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
        d.append(f"{len(m.files)} files, {m.total_size / 2**20:.1f} MiB into {release}"
                 + (" (repaired: unpacked again from the bundle)" if aside is not None else ""))


def _finish(plan: Plan, steps: Steps, tmp: Path, api_key: str) -> None:
    """Inside the partial release, before it is renamed into place: environment, then rendering."""
    req, layout = plan.req, plan.layout
    release_live = layout.live_path(plan.release)
    with steps("environment", "building the Python environment offline") as d:
        if req.vllm_python is not None:
            python_live = req.vllm_python
            d.append(f"using the site's environment {python_live} (not from the bundle)")
        else:
            built = build_env(tmp, python=req.python, cache=layout.uv_cache, root=layout.root)
            if not layout.staged:  # a broken environment is caught before the service is touched
                check_imports(built)
                check_flags(built, ["model", "served-model-name", "host", "port",
                                    *plan.fit.profile.vllm_config(tensor_parallel=plan.fit.tensor_parallel or 1)])
            atomic_write(tmp / LISTING, json.dumps(listing(tmp / "venv"), indent=0) + "\n", 0o644)
            python_live = release_live / "venv" / "bin" / "python"
            d.append(f"{len(wheels_in(tmp))} wheels installed into {release_live / 'venv'} with uv, offline"
                     + ("" if layout.staged else "; vLLM imports"))
    with steps("render", "rendering unit, vLLM config and environment file") as d:
        render_into(plan, tmp, python_live, api_key, external=req.vllm_python is not None)
        d.append(f"profile {plan.fit.profile.name}, bound to {req.host}:{req.port} (the router); "
                 f"{len(plan.replicas)} replica(s) on {LOOPBACK}:{plan.replicas[0].port}-{plan.replicas[-1].port}")


def activate(plan: Plan, steps: Steps, api_key: str) -> dict[str, Any] | None:
    """(6)-(7) Replica by replica onto a running instance of the same shape, else the whole set at once (a first
    install, a new shape, a legacy instance moved behind the router); a failure puts the previous release back
    (the rolled-back replicas, or the whole previous set, whatever its shape) and says how that went."""
    layout, req = plan.layout, plan.req
    act = Activation(layout, plan.systemd, steps, api_key, req.health_timeout, req.smoke, req.drain_timeout)
    new = read_release(plan.release)
    prev = read_release(layout.release(plan.previous)) if plan.previous is not None else None
    if new is not None and prev is not None and plan.previous != plan.version and \
            can_roll(layout, plan.systemd, prev, new):
        return roll(act, plan.release, layout.release(prev.version))  # rolls back by itself on failure
    try:
        return bring_up(act, plan.release)
    except GptossctlError as exc:
        _restore_and_raise(plan, steps, api_key, exc)


def _restore_and_raise(plan: Plan, steps: Steps, api_key: str, exc: GptossctlError) -> NoReturn:
    """The previous release back in service, proven healthy; the error says what failed and how the restore
    went, with the journal tail of the unit that failed."""
    layout, systemd, req = plan.layout, plan.systemd, plan.req
    journal = journal_findings(systemd, exc, layout.router_unit_name)
    act = Activation(layout, systemd, steps, api_key, req.health_timeout, False, req.drain_timeout)
    outcome = restore_release(act, plan.previous)
    findings = list(exc.findings) + [Finding("install.rollback", layout.router_unit_name, outcome)] + journal
    raise CheckFailed(f"release {plan.version} did not come up: {exc.message}; {outcome}",
                      code=exc.code if exc.code.startswith("install.") else "install.failed",
                      findings=findings, hint=exc.hint or "see the journal tail in the findings") from None


def _forget_failed_first_install(layout: Layout, previous: int | None) -> None:
    """A first install that did not succeed leaves no instance behind (no phantom in `status`); an upgrade
    that failed keeps its unpacked release for a quick retry while the previous release serves."""
    if previous is None and current_version(layout) is None:
        shutil.rmtree(layout.opt, ignore_errors=True)
        if not layout.api_key.exists():  # the router's copy of a key that was never committed
            layout.router_key.unlink(missing_ok=True)
