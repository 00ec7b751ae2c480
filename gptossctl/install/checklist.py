"""The checks an install runs on the host before it changes anything, in one list: install runs them and
stops at the first that fails; `install --dry-run` runs the same list and reports every failure, with the
code (and exit code) the install would have stopped with.

Each check is a step of the install (its name in the step list), reads the plan being made (`Preflight`)
and returns what it found, or raises the install's own error. A check that needs the chosen profile (its
replicas, their ports) is skipped, and says so, when the hardware preflight failed. Adding a check is adding
one `Check` to CHECKS (and, for a new port, one line in `wanted_ports`).
"""

from __future__ import annotations

import errno
import os
import platform
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from packaging.tags import Tag
from packaging.utils import InvalidWheelFilename, parse_wheel_filename

from gptossctl.adapters.gpus import Captures
from gptossctl.adapters.proc_net import listeners
from gptossctl.bundle.verify import VerifiedBundle
from gptossctl.errors import CheckFailed, EnvironmentNotReady, Finding, GptossctlError
from gptossctl.hardware.check import ProfileFit
from gptossctl.hardware.layout import NO_OVERRIDES, LayoutRequest
from gptossctl.install.layout import Layout
from gptossctl.install.listen import EdgeInput, ListenRequest, describe, kept_listen, load_edge
from gptossctl.install.preflight import check_host_libraries, check_router, preflight
from gptossctl.install.release import ReleaseRecord, ReplicaRecord, current_record, read_release
from gptossctl.install.replicas import check_names, plan_replicas
from gptossctl.install.steps import Steps

DISK_MARGIN = 64 << 20  # kept free beyond the release's size (as unpack_release)
WHEEL_DIRS = ("wheels", "kernels")


@dataclass
class Preflight:
    """What the checks read (the request, the verified bundle, the host) and what they decide."""

    bundle: VerifiedBundle
    layout: Layout
    port: int
    python: Path  # the interpreter the release's venv is built on, as the target sees it
    vllm_python: Path | None  # the site's own environment: no venv is built
    profile: str = "auto"
    captures: Captures = Captures()
    request: LayoutRequest = NO_OVERRIDES
    previous: ReleaseRecord | None = None  # the instance's current release (its ports are its own)
    repair: bool = False
    pending_bytes: int = 0  # written on this disk before the release (a dry run's bundle rebuilt elsewhere)
    kept: str = ""  # how the layout request was chosen (said in the preflight step)
    listen: ListenRequest | None = None  # install --listen; None: keep the installed release's listener, if any
    router_host: str = "127.0.0.1"  # the router's loopback address (the replicas' too)
    # decided by the checks
    router: Path | None = None
    fit: ProfileFit | None = None
    replicas: tuple[ReplicaRecord, ...] = field(default=())
    edge: EdgeInput | None = None  # the router's TLS listener on the site's network, judged

    @property
    def live(self) -> bool:
        return not self.layout.staged


@dataclass(frozen=True)
class Check:
    step: str  # the install step it is recorded as
    doing: str
    run: Callable[[Preflight], str]
    applies: Callable[[Preflight], bool] = lambda _p: True
    needs_fit: bool = False  # reads the chosen profile and replicas


def _router(p: Preflight) -> str:
    p.router = check_router(p.layout.root)
    return f"nginx at {p.router}"


def _hardware(p: Preflight) -> str:
    fit = preflight(p.bundle, p.layout, profile=p.profile, captures=p.captures, request=p.request)
    replicas = plan_replicas(fit.layout.replicas if fit.layout else (), port=p.port, gpus=fit.gpus)
    check_names(p.layout, len(replicas))
    p.fit, p.replicas = fit, replicas
    return (f"profile {fit.profile.name} at tensor parallel {fit.tensor_parallel or 1}; {len(replicas)} replica(s) "
            f"on ports {replicas[0].port}-{replicas[-1].port} behind the router on {p.port}" + p.kept)


def _libraries(p: Preflight) -> str:
    assert p.fit is not None
    return check_host_libraries(p.fit.profile.match.vendor)


def _interpreter(p: Preflight) -> str:
    """The interpreter build_env runs (install.no_python there, before anything is built)."""
    root = p.layout.root
    where = f" under {root}" if p.layout.staged else ""
    hint = "install python3 (and its venv support) or pass --python PATH"
    try:
        host = resolve_in_root(root, p.python)
    except OSError as exc:
        raise EnvironmentNotReady(f"Python {p.python}{where}: {exc.strerror or exc}", code="install.no_python",
                                  hint=hint) from None
    if not host.exists():
        raise EnvironmentNotReady(f"Python {p.python} not found{where}", code="install.no_python", hint=hint)
    version, arch = interpreter_facts(p.python, root)
    return f"{p.python}" + (f": Python {version[0]}.{version[1]}" if version else "") + (f" on {arch}" if arch else "")


def _wheels(p: Preflight) -> str:
    """The bundle carries the wheels build_env installs, built for the target's interpreter and machine."""
    wheels = [f.path for f in p.bundle.manifest.files if f.component in WHEEL_DIRS and f.path.endswith(".whl")]
    if not wheels:
        raise CheckFailed("the bundle carries no wheels to build an environment from", code="install.no_wheels",
                          hint="pack with a vllm pin or a wheelhouse, or install with --vllm-python PATH "
                               "(an environment you maintain)")
    version, arch = interpreter_facts(p.python, p.layout.root)
    if arch is None and p.live:
        arch = _machine(platform.machine())
    misfits = [Finding("install.wheels_mismatch", name, why) for name in wheels
               if (why := wheel_misfit(Path(name).name, version, arch))]
    if misfits:
        target = " ".join(x for x in ((f"Python {version[0]}.{version[1]}" if version else ""), arch or "") if x)
        raise CheckFailed(f"{len(misfits)} of the bundle's {len(wheels)} wheels cannot be installed for {target}",
                          code="install.wheels_mismatch", findings=misfits,
                          hint="pack for this host (target.python and target.platform in the recipe), or pass "
                               "--python with the interpreter the bundle was packed for")
    checked = ", ".join(x for x in ((f"Python {version[0]}.{version[1]}" if version else ""), arch or "") if x)
    return f"{len(wheels)} wheel(s)" + (f", each installable for {checked}" if checked else
                                        " (the interpreter's version is unknown: tags not checked)")


def _listen(p: Preflight) -> str:
    """The site's TLS listener (install --listen, or the one the installed release has): its certificate judged
    before anything changes, its port apart from the router's and the replicas'."""
    prev = p.previous
    listen = p.listen if p.listen is not None or prev is None or prev.edge is None else \
        kept_listen(p.layout, prev.edge, prev.version)
    p.edge = None if listen is None or listen.closes else \
        load_edge(listen, router_host=p.router_host, taken={p.port, *(r.port for r in p.replicas)})
    edge = p.edge
    return "; ".join([describe(edge.record() if edge else None)
                      + (f" (kept as release {edge.kept} has it; --listen none closes it)"
                         if edge and edge.kept is not None else ""),
                      *(f"warning: {f.message}" for f in (edge.report.findings if edge else ()))])


def wanted_ports(p: Preflight) -> list[tuple[int, str]]:
    """Every port the new release listens on, with what listens there."""
    return [(p.port, "the router")] + [(r.port, f"replica r{r.index}") for r in p.replicas] + \
        ([(p.edge.port, "the TLS listener")] if p.edge is not None else [])


def _ports_of(rec: ReleaseRecord) -> set[int]:
    return {rec.port, *(r.port for r in rec.replicas), *((rec.edge.port,) if rec.edge is not None else ())}


def _ports(p: Preflight) -> str:
    """No other instance is configured on these ports, and (on this host) nothing else listens on them: the
    instance's own running release may (it is replaced)."""
    own = _ports_of(p.previous) if p.previous is not None else set()
    others: dict[int, str] = {}
    for name in p.layout.instances():
        if name == p.layout.instance:
            continue
        rec = current_record(Layout(p.layout.root, name))
        for port in _ports_of(rec) if rec is not None else ():
            others.setdefault(port, name)
    findings = []
    for port, what in wanted_ports(p):
        if port in others:
            findings.append(Finding("install.port_in_use", str(port), f"{what}'s port {port} belongs to instance "
                                    f"{others[port]} (address already in use once both run)"))
        elif p.live and port not in own and (held := listeners(port)):
            findings.append(Finding("install.port_in_use", str(port), f"{what}'s port {port}: address already in "
                                    f"use (something listens on {', '.join(held)})"))
    if findings:
        raise CheckFailed(f"port(s) {', '.join(f.subject for f in findings)} already in use: "
                          + "; ".join(f.message for f in findings), code="install.port_in_use", findings=findings,
                          hint="choose another --port (the router takes --port, replica k --port+1+k), or stop what "
                               "listens there ('ss -ltnp' names it)")
    return "ports " + ", ".join(str(port) for port, _w in wanted_ports(p)) + " free" + \
        ("" if p.live else " of every other instance in the staged tree")


def free_bytes(path: Path) -> int | None:
    """Free bytes on the filesystem that would hold `path` (its nearest existing parent)."""
    probe = path.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return None


def _disk(p: Preflight) -> str:
    """Room for the release (unpack_release checks it again as it starts: install.insufficient_disk)."""
    m, release = p.bundle.manifest, p.layout.release(p.bundle.manifest.version)
    if read_release(release) is not None and not p.repair:
        return f"release {m.version} is on disk already: reused, nothing to copy"
    free = free_bytes(p.layout.releases)
    need = m.total_size + DISK_MARGIN + p.pending_bytes
    if free is not None and need > free:
        rebuilt = " (the bundle is rebuilt there first)" if p.pending_bytes else ""
        raise CheckFailed(f"not enough disk at {p.layout.releases}: {need / 2**30:.2f} GiB needed{rebuilt}, "
                          f"{free / 2**30:.2f} GiB free", code="install.insufficient_disk",
                          hint="free space, or remove old releases once the current one is healthy")
    return f"{need / 2**30:.2f} GiB needed, " + (f"{free / 2**30:.2f} GiB free" if free is not None else "free unknown")


def _builds_env(p: Preflight) -> bool:
    return p.vllm_python is None


# The order is install's: the first to fail is the error install stops with.
CHECKS: tuple[Check, ...] = (
    Check("router", "the router (nginx) on the host", _router),
    Check("preflight", "hardware, profile and replicas", _hardware),
    Check("libraries", "host libraries the profile's vLLM loads", _libraries, applies=lambda p: p.live,
          needs_fit=True),
    Check("wheels", "the bundle's wheels for the target's interpreter", _wheels, applies=_builds_env),
    Check("interpreter", "the interpreter the release's environment is built on", _interpreter, applies=_builds_env),
    Check("listen", "the router's listeners", _listen, needs_fit=True),
    Check("ports", "the router's, every replica's and the TLS listener's port", _ports, needs_fit=True),
    Check("disk", "room for the release", _disk),
)


def run_checks(p: Preflight, steps: Steps, *, every: bool = False) -> None:
    """Run CHECKS in order. Install (every=False) stops at the first failure, raising its error; a dry run
    (every=True) runs them all and raises one error with the first failure's class and code (what install
    would stop with) that carries every failure as a finding."""
    failed: list[tuple[Check, GptossctlError]] = []
    for check in _applicable(p):
        if check.needs_fit and p.fit is None:
            steps.skip(check.step, "not checked: it needs the profile the hardware preflight did not choose")
            continue
        try:
            with steps(check.step, check.doing) as detail:
                detail.append(check.run(p))
        except GptossctlError as exc:
            if not every:
                raise
            failed.append((check, exc))
    if not failed:
        return
    if len(failed) == 1:
        raise failed[0][1]
    first = failed[0][1]
    findings = [f for _c, exc in failed for f in exc.findings] + \
        [Finding(exc.code, check.step, exc.message, hint=exc.hint) for check, exc in failed]
    raise type(first)(f"the install would be refused by {len(failed)} checks: "
                      + "; ".join(f"{check.step}: {exc.message} ({exc.code})" for check, exc in failed),
                      code=first.code, findings=findings, hint=first.hint)


def _applicable(p: Preflight) -> Iterator[Check]:
    return (c for c in CHECKS if c.applies(p))


# ---------------------------------------------------------------- the interpreter, read without running it

_ELF_MACHINES = {0x3E: "x86_64", 0xB7: "aarch64", 0x15: "ppc64le", 0x16: "s390x"}


def _machine(name: str) -> str:
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(name.lower(), name.lower())


LINK_HOPS = 40  # as the kernel's (MAXSYMLINKS): more means a loop


def resolve_in_root(root: Path, path: Path) -> Path:
    """`path` as the target names it, resolved inside `root` (a staged tree): each symlink followed with an
    absolute target re-rooted under `root` and `..` never climbing above it, as a chroot would see it (the
    build host's own /etc/alternatives is never read). A relative `path` is the build host's. OSError ELOOP
    after LINK_HOPS links (a loop). A part that does not exist is kept as named (the caller checks it exists)."""
    if not path.is_absolute():
        return Path(os.path.realpath(path))
    done: list[str] = []
    pending = list(path.parts[1:])
    hops = 0
    while pending:
        name = pending.pop(0)
        if name in ("", "."):
            continue
        if name == "..":
            if done:
                done.pop()
            continue
        here = root.joinpath(*done, name)
        if not here.is_symlink():
            done.append(name)
            continue
        hops += 1
        if hops > LINK_HOPS:
            raise OSError(errno.ELOOP, "too many levels of symbolic links (a loop)", str(path))
        target = os.readlink(here)
        if target.startswith("/"):
            done = []
        pending = [part for part in target.split("/") if part] + pending
    return root.joinpath(*done)


def interpreter_facts(python: Path, root: Path = Path("/")) -> tuple[tuple[int, int] | None, str | None]:
    """(Python major.minor, machine) of an interpreter on the target (`python` as the target names it, under
    `root`), read from its files, never run (a staged tree may be another machine's): the version from its name
    (python3.12), its venv's pyvenv.cfg or its prefix's lib/python3.N; the machine from its ELF header. Links
    are followed inside `root` (resolve_in_root); a loop tells nothing: (None, None)."""
    try:
        real = resolve_in_root(root, python)
        cfg = resolve_in_root(root, python.parent).parent / "pyvenv.cfg"
    except OSError:
        return None, None
    if not real.exists():
        return None, None
    version = _version_from_name(python.name) or _version_from_name(real.name)
    if version is None and cfg.is_file():
        for line in cfg.read_text(errors="replace").splitlines():
            key, _, value = line.partition("=")
            if key.strip() in ("version", "version_info"):
                version = _version_from_name("python" + ".".join(value.strip().split(".")[:2]))
    if version is None:
        libs = sorted({v for d in real.parent.parent.glob("lib*/python3.*") if (v := _version_from_name(d.name))})
        version = libs[-1] if len(libs) == 1 else None
    arch = None
    try:
        with open(real, "rb") as f:
            head = f.read(20)
        if head[:4] == b"\x7fELF" and len(head) == 20:
            arch = _ELF_MACHINES.get(int.from_bytes(head[18:20], "little" if head[5] == 1 else "big"))
    except OSError:
        pass
    return version, arch


def _version_from_name(name: str) -> tuple[int, int] | None:
    stem = name.removeprefix("python")
    major, _, minor = stem.partition(".")
    if major == "3" and minor.isdigit():
        return 3, int(minor)
    return None


def wheel_misfit(filename: str, version: tuple[int, int] | None, arch: str | None) -> str:
    """Why a wheel cannot be installed for (version, arch), or "" when it can (or when it cannot be told)."""
    try:
        _name, _ver, _build, tags = parse_wheel_filename(filename)
    except InvalidWheelFilename:
        return ""  # its tags cannot be read: uv judges it (a name packaging refuses is not proof it won't install)
    py_ok = version is None or any(_python_fits(t, version) for t in tags)
    arch_ok = arch is None or any(t.platform == "any" or _machine(t.platform).endswith(f"_{arch}")
                                  or t.platform == arch for t in tags)
    if py_ok and arch_ok:
        return ""
    built = ", ".join(sorted({f"{t.interpreter}-{t.abi}-{t.platform}" for t in tags}))
    want = " ".join(x for x in ((f"Python {version[0]}.{version[1]}" if version and not py_ok else ""),
                                (arch if arch and not arch_ok else "")) if x)
    return f"built for {built}, not for {want}"


def _python_fits(tag: Tag, version: tuple[int, int]) -> bool:
    interp, abi = tag.interpreter, tag.abi
    digits = interp[2:]
    if interp.startswith("py"):
        return digits == "3" or (digits[:1] == "3" and digits[1:].isdigit() and int(digits[1:]) <= version[1])
    if interp.startswith("cp") and digits[:1] == "3" and digits[1:].isdigit():
        minor = int(digits[1:])
        return minor <= version[1] if abi == "abi3" else minor == version[1]
    return False
