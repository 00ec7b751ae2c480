"""Build a release's Python environment offline from the bundle's own wheels.

The bundle's wheel set is the lock: pack resolved it for the target, so install takes exactly those
wheels (`--no-deps`), from files only (`--offline --no-index`). uv does it (fast, hard-links from its
cache; gptossctl.adapters.uv runs it); the uv binary comes from PATH or from the uv wheel the bundle ships.
The environment's own manifest (every file's SHA-256) is recorded so compliance can find drift in it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Collection
from pathlib import Path

from gptossctl.adapters import uv as uvtool
from gptossctl.bundle.hashing import hash_pieces, pieces_for
from gptossctl.errors import CheckFailed, EnvironmentNotReady, Finding
from gptossctl.fsutil import acl_write_grants

VENV = "venv"


def wheels_in(release: Path) -> list[Path]:
    return sorted((release / "payload" / "wheels").glob("*.whl")) + sorted((release / "payload" / "kernels").glob("*.whl"))


def build_env(release: Path, *, python: Path, cache: Path, root: Path = Path("/")) -> Path:
    """Create release/venv from the release's wheels with `python` (a path on the target, found under
    the staging `root`); return the new venv's interpreter. The venv is relocatable: renaming the release
    directory into place keeps it working."""
    wheels = wheels_in(release)
    if not wheels:
        raise CheckFailed("the bundle carries no wheels to build an environment from", code="install.no_wheels",
                          hint="pack with a vllm pin or a wheelhouse, or install with --vllm-python PATH "
                               "(an environment you maintain)")
    host_python = root / python.relative_to("/") if python.is_absolute() else python
    if not host_python.exists():
        raise EnvironmentNotReady(f"Python {python} not found{' under ' + str(root) if root != Path('/') else ''}",
                                  code="install.no_python", hint="install python3 (and its venv support) or pass "
                                  "--python PATH")
    cache.mkdir(parents=True, exist_ok=True)
    uv = uvtool.find_uv(wheels, cache / "bin")
    venv = release / VENV
    uvtool.run(uv, "venv", "--relocatable", "--python", str(host_python), str(venv), cache=cache)
    uvtool.run(uv, "pip", "install", "--python", str(venv / "bin" / "python"), "--no-index", "--no-deps",
        "--compile-bytecode", *map(str, wheels), cache=cache)
    if root != Path("/"):
        _relocate(venv, python)
    _not_writable_by_others(venv)
    return venv / "bin" / "python"


def _not_writable_by_others(tree: Path) -> None:
    """uv leaves its venv lock file 0666; nothing the service runs may be writable by anyone but root."""
    for d, dirs, files in os.walk(tree):
        for name in dirs + files:
            p = os.path.join(d, name)
            st = os.lstat(p)
            if not os.path.islink(p) and st.st_mode & 0o022:
                os.chmod(p, st.st_mode & 0o7755)


def _relocate(venv: Path, python: Path) -> None:
    """A staged venv points at the interpreter as the booted tree will see it, not through the root."""
    cfg = venv / "pyvenv.cfg"
    lines = [f"home = {python.parent}" if ln.startswith("home =") else ln for ln in cfg.read_text().splitlines()]
    cfg.write_text("\n".join(lines) + "\n")
    link = venv / "bin" / "python"
    link.unlink()
    link.symlink_to(python)


def check_imports(python: Path, module: str = "vllm.entrypoints.openai.api_server") -> None:
    """Import the server in the new environment before touching the running service."""
    uvtool.import_check(python, module)


def check_flags(python: Path, keys: Collection[str]) -> int:
    """Every key of the `vllm serve --config` document is exactly one of the release's own vLLM's option
    strings, spelled in full (argparse would take an abbreviation; an exact match cannot be one). Runs where
    `check_imports` runs: an environment install built, on a booted host; a staged install or an environment
    given with --vllm-python is checked only against the shipped lists (hardware/vllm_flags.py)."""
    options = uvtool.serve_options(python)
    unknown = sorted(k for k in keys if f"--{k}" not in options)
    if unknown:
        near = {k: [o for o in sorted(options) if o.startswith(f"--{k}")][:3] for k in unknown}
        raise CheckFailed(f"vLLM in the new environment has no option {', '.join('--' + k for k in unknown)}",
                          code="install.vllm_flag_unknown",
                          findings=[Finding("install.vllm_flag_unknown", k, "not an option of this vLLM, spelled in "
                                            "full" + (f" (it abbreviates {', '.join(near[k])})" if near[k] else ""))
                                    for k in unknown],
                          hint="write vLLM's own option name in full in the profile, repack and install again")
    return len(keys)


# ---------------------------------------------------------------- the environment's own manifest

LISTING = "venv-manifest.json"


def _walk(tree: Path) -> tuple[dict[str, int], dict[str, str], list[str]]:
    """(regular files -> size, symlinks -> target, anything else) under `tree`, never following links."""
    files: dict[str, int] = {}
    links: dict[str, str] = {}
    other: list[str] = []
    for d, dirs, names in os.walk(tree):
        for name in dirs + names:
            p = os.path.join(d, name)
            rel = os.path.relpath(p, tree)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                links[rel] = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                files[rel] = st.st_size
            elif not stat.S_ISDIR(st.st_mode):
                other.append(rel)
    return files, links, other


def _digests(tree: Path, files: dict[str, int]) -> dict[str, str | None]:
    whole = 1 << 62  # one digest per file, whatever its size; files are hashed in parallel
    pieces = [p for rel, size in files.items() for p in pieces_for(tree / rel, rel, size, whole)]
    return {k[0]: d.sha256 for k, d in hash_pieces(pieces).items()}


def listing(venv: Path) -> dict[str, object]:
    """Every file (SHA-256) and link (target) of a built environment, recorded at install: the bundle's
    manifest covers the wheels, this covers what uv made of them, so a changed module is drift too."""
    files, links, _other = _walk(venv)
    return {"schema": "gptossctl.venv-manifest/1", "files": dict(sorted(_digests(venv, files).items())),
            "links": dict(sorted(links.items()))}


def compare_listing(venv: Path, recorded: dict[str, object]) -> list[tuple[str, str, str]]:
    """(kind, path, detail) for every difference: changed, missing, extra, link, special."""
    want_files: dict[str, str] = dict(recorded.get("files", {}))  # type: ignore[call-overload]
    want_links: dict[str, str] = dict(recorded.get("links", {}))  # type: ignore[call-overload]
    files, links, other = _walk(venv)
    out = [("special", rel, "device, FIFO or socket") for rel in other]
    out += [("missing", rel, "recorded at install, now absent") for rel in sorted(set(want_files) - set(files))]
    out += [("extra", rel, "not there at install") for rel in sorted(set(files) - set(want_files))]
    got = _digests(venv, {rel: size for rel, size in files.items() if rel in want_files})
    out += [("changed", rel, "SHA-256 differs from install time" if got[rel] else "unreadable")
            for rel in sorted(got) if got[rel] != want_files[rel]]
    for rel in sorted(set(links) | set(want_links)):
        if links.get(rel) != want_links.get(rel):
            out.append(("link", rel, f"points to {links.get(rel, '(absent)')}, "
                                     f"was {want_links.get(rel, '(absent)')}"))
    return out


# uv's venv lock file: 0666 by design, never imported or run (build_env tightens it in the venvs it builds).
_UV_LOCK = ".lock"


def interpreter_exposure(python: Path, owners: frozenset[int]) -> list[str]:
    """What makes an interpreter run code of someone else's choosing: every link on the way to it, the file it
    execs, its venv (the whole tree, site-packages included), its base prefix's lib/python* (that base's
    site-packages only when the venv includes it), and every directory above them up to /, each owned by one of
    `owners` and not group- or world-writable (a root-owned sticky parent such as /tmp excepted). Never runs it."""
    bad: dict[str, str] = {}
    climbed: set[Path] = set()

    def strict(p: Path, st: os.stat_result, *, parent: bool = False) -> None:
        mode, wrong = stat.S_IMODE(st.st_mode), []
        if st.st_uid not in owners:
            wrong.append(f"owned by uid {st.st_uid}")
        sticky_ok = parent and stat.S_ISDIR(st.st_mode) and mode & stat.S_ISVTX and st.st_uid in owners
        if mode & 0o022 and not sticky_ok:
            wrong.append("writable by group or others")
        wrong += acl_write_grants(p, owners)
        if wrong:
            bad.setdefault(str(p), f"{p} ({mode:04o}): {', '.join(wrong)}")

    def parents(p: Path) -> None:
        for d in p.parents:
            if d in climbed:
                return
            climbed.add(d)
            try:
                strict(d, d.lstat() if d.is_symlink() else d.stat(), parent=True)
            except OSError:
                continue

    def tree(top: Path, skip: tuple[str, ...] = ()) -> None:
        parents(top)
        for d, dirs, files in os.walk(top):
            dirs[:] = [n for n in dirs if n not in skip]
            for name in dirs + files:
                p = Path(d) / name
                if p.parent == top and name == _UV_LOCK:
                    continue
                try:
                    st = p.lstat()
                except OSError:
                    continue
                if stat.S_ISLNK(st.st_mode):
                    if st.st_uid not in owners:
                        bad.setdefault(str(p), f"{p} is a link owned by uid {st.st_uid}")
                    continue
                strict(p, st)
            try:
                strict(Path(d), Path(d).lstat())
            except OSError:
                continue

    p, chain = Path(os.path.abspath(python)), []
    for _hop in range(40):
        chain.append(p)
        parents(p)
        try:
            st = p.lstat()
        except OSError:
            bad.setdefault(str(p), f"{p} is missing")
            break
        if not stat.S_ISLNK(st.st_mode):
            strict(p, st)
            break
        if st.st_uid not in owners:
            bad.setdefault(str(p), f"{p} is a link owned by uid {st.st_uid}")
        p = Path(os.path.normpath(p.parent / os.readlink(p)))
    system_site = True
    for link in chain:
        cfg = link.parent.parent / "pyvenv.cfg"
        if cfg.is_file():
            text = cfg.read_text(errors="replace")
            system_site = "include-system-site-packages = true" in text
            tree(link.parent.parent)
            break
    prefix = chain[-1].parent.parent
    for lib in sorted(prefix.glob("lib*/python*")):
        if lib.is_dir():
            tree(lib, () if system_site else ("site-packages", "dist-packages"))
    return [bad[k] for k in sorted(bad)]
