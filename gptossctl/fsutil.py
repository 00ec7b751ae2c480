"""Files as a careful installer handles them: inputs read once with limits and refused cleanly when they are
not what they claim to be, outputs written whole or not at all (fsync, atomic rename, no link followed), and
one lock for changes to a host.

Every refusal is a gptossctl error that names the path and says what to give instead; nothing here lets an
OSError, UnicodeDecodeError or RecursionError from a hostile file reach the user as a crash.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from gptossctl.errors import EnvironmentNotReady, ServiceUnavailable, UsageError

TEXT_LIMIT = 16 << 20  # recipes, profiles, captures, suites, reports: far below this
JSON_DEPTH = 64  # deeper than any document gptossctl reads or writes


def read_bytes(path: Path, *, what: str, code: str = "input.unreadable", limit: int = TEXT_LIMIT) -> bytes:
    """The bytes of one regular file, at most `limit` of them (links are followed: a sysadmin may point at one)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise UsageError(f"{what} {path} does not exist", code=code, hint=f"give the path of an existing {what}") from None
    except IsADirectoryError:
        raise UsageError(f"{what} {path} is a directory", code=code, hint=f"give the path of the {what} file") from None
    except PermissionError:
        raise EnvironmentNotReady(f"{what} {path} is not readable by this user", code=code,
                                  hint="run as a user that may read it (root for files under /etc/gptoss)") from None
    except OSError as exc:
        raise UsageError(f"cannot open {what} {path}: {exc.strerror}", code=code,
                         hint=f"give the path of a readable {what}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise UsageError(f"{what} {path} is a directory", code=code, hint=f"give the path of the {what} file")
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"{what} {path} is not a regular file (a device, FIFO or socket)", code=code,
                             hint=f"give the path of a regular {what} file")
        if st.st_size > limit:
            raise UsageError(f"{what} {path} is {st.st_size} bytes, more than the {limit} a {what} can be",
                             code=code, hint=f"check that {path} is the {what} you meant")
        chunks, total = [], 0
        while chunk := os.read(fd, 1 << 20):
            total += len(chunk)
            if total > limit:
                raise UsageError(f"{what} {path} grew past {limit} bytes while being read", code=code,
                                 hint=f"check that {path} is the {what} you meant")
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror}", code=code,
                         hint=f"give the path of a readable {what}") from None
    finally:
        os.close(fd)


def decode_text(data: bytes, *, path: Path | str, what: str, code: str = "input.not_text") -> str:
    """UTF-8 text without NUL bytes, or a refusal that says the file is binary."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{what} {path} is not UTF-8 text (byte {exc.start}): a binary or damaged file",
                         code=code, hint=f"give the {what} itself, not an archive or a binary file") from None
    if "\x00" in text:
        raise UsageError(f"{what} {path} contains NUL bytes: a binary or damaged file", code=code,
                         hint=f"give the {what} itself, not an archive or a binary file")
    return text


def read_text(path: Path, *, what: str, code: str = "input.unreadable", limit: int = TEXT_LIMIT) -> str:
    return decode_text(read_bytes(path, what=what, code=code, limit=limit), path=path, what=what, code=code)


def parse_json(text: str | bytes, *, where: str, what: str, code: str = "input.invalid_json",
               max_depth: int = JSON_DEPTH) -> Any:
    """json.loads with the nesting bounded (a 100,000-deep array is an attack, not a document)."""
    raw = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    depth = deepest = 0
    in_string = escaped = False
    for ch in raw:  # cheap pre-scan: refuse before the recursive parser can blow the stack
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > max_depth:
                raise UsageError(f"{what} {where} nests deeper than {max_depth} levels", code=code,
                                 hint=f"give a {what} written by the tool that makes it; this one is damaged or hostile")
        elif ch in "]}":
            depth -= 1
        deepest = max(deepest, depth)
    try:
        return json.loads(raw, parse_constant=_refuse_constant, object_pairs_hook=refuse_duplicate_keys)
    except (json.JSONDecodeError, ValueError, RecursionError) as exc:
        detail = f"{exc.msg} at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else str(exc)[:120]
        raise UsageError(f"{what} {where} is not valid JSON ({detail})", code=code,
                         hint=f"give the {what} as written by the tool that makes it") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


class DuplicateKey(ValueError):
    """A JSON object that names one key twice: which value counts depends on the reader, so none does."""


def refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """object_pairs_hook for json.loads: a dict, or DuplicateKey naming the first key given twice."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKey(f"key {key[:60]!r} is given twice in one object")
        out[key] = value
    return out


def load_json(path: Path, *, what: str, code: str = "input.invalid_json", limit: int = TEXT_LIMIT,
              expect: type | tuple[type, ...] = dict) -> Any:
    doc = parse_json(read_text(path, what=what, code=code, limit=limit), where=str(path), what=what, code=code)
    if not isinstance(doc, expect):
        kinds = " or ".join(t.__name__ for t in (expect if isinstance(expect, tuple) else (expect,)))
        raise UsageError(f"{what} {path} holds a JSON {type(doc).__name__}, not a {kinds}", code=code,
                         hint=f"give the {what} as written by the tool that makes it")
    return doc


# ---------------------------------------------------------------- writing


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: str | bytes, mode: int = 0o644, *, replace_link: bool = True) -> None:
    """Write a whole file or nothing: a temporary file beside it, fsync, rename over, fsync the directory.

    The rename replaces a symbolic link at `path` itself rather than writing through it (never following a
    link planted where an output goes).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if not replace_link and path.is_symlink():
        raise UsageError(f"{path} is a symbolic link", code="output.is_link",
                         hint="give a path that is not a link; gptossctl never writes through one")
    _refuse_special(path, what="output")  # a rename over /dev/null would replace the device node itself
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # the umask must not loosen or tighten what we mean
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        discard(tmp)
        raise write_error(path, exc) from None
    except BaseException:  # Ctrl-C mid-write: no temporary file left beside the output
        discard(tmp)
        raise


def discard(path: Path) -> None:
    """Remove a temporary file on an error path, where a second error (a read-only disk) must not replace the
    first."""
    with suppress(OSError):
        path.unlink(missing_ok=True)


def os_error(exc: BaseException) -> Exception | None:
    """An error the operating system raised about a path the user gave (too long, a link loop, not a
    directory, no rights, a full or read-only disk) as the error a sysadmin can act on; None for anything else
    (a bug of ours). The last net under every command: the commands check their own paths first."""
    if isinstance(exc, RuntimeError) and str(exc).startswith("Symlink loop"):  # pathlib's resolve()
        return UsageError(f"a path is a symbolic link loop ({exc})", code="path.link_loop",
                          hint="fix or remove the link, or give another path")
    if not isinstance(exc, OSError):
        return None
    where = exc.filename if exc.filename is not None else "a path"
    if exc.errno == errno.ENAMETOOLONG:
        return UsageError(f"a path is too long: {str(where)[:200]}...", code="path.too_long",
                          hint="shorten it: a name may have at most 255 bytes, a path 4096")
    if exc.errno == errno.ELOOP:
        return UsageError(f"{where} is a symbolic link loop", code="path.link_loop",
                          hint="fix or remove the link, or give another path")
    if exc.errno in (errno.ENOTDIR, errno.EISDIR, errno.ENOENT, errno.EEXIST):
        return UsageError(f"{where}: {exc.strerror}", code="path.invalid",
                          hint="check the path: every part before the last must be a directory, and an output "
                               "must not exist yet")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EIO):
        return write_error(Path(str(where)), exc) if exc.errno != errno.EACCES or exc.filename is None else \
            EnvironmentNotReady(f"no permission for {where}: {exc.strerror}", code="path.not_permitted",
                                hint="run as a user that may read and write there (root for system paths)")
    return None


def write_error(path: Path, exc: OSError) -> Exception:
    """An OSError from writing `path` as the error a sysadmin can act on: a full or failing disk is exit 4, no
    rights exit 3, anything else exit 2."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ServiceUnavailable(f"disk full while writing {path}", code="output.disk_full",
                                  hint="free space and run the command again; nothing half-written was kept")
    if exc.errno == errno.EIO:
        return ServiceUnavailable(f"I/O error while writing {path}", code="output.io_error",
                                  hint="check the disk (dmesg, smartctl) and run the command again; nothing "
                                       "half-written was kept")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return EnvironmentNotReady(f"cannot write {path}: {exc.strerror}", code="output.not_writable",
                                   hint="run as a user that may write there (root for system paths), or choose "
                                        "another path")
    return UsageError(f"cannot write {path}: {exc.strerror}", code="output.unwritable",
                      hint="give a path in an existing, writable directory")


def _refuse_special(path: Path, *, what: str) -> None:
    """Refuse a path that exists as something other than a regular file or a link (a device, FIFO, socket or
    directory): an output renamed over it would destroy it (a copy of /dev/null, /dev/full)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise UsageError(f"cannot look at {what} {path}: {exc.strerror}", code="output.unwritable",
                         hint=f"give a path for the {what} in an existing, readable directory") from None
    if stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{what} {path} is a directory", code="output.is_directory",
                         hint=f"give a file name for the {what}")
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
        raise UsageError(f"{what} {path} exists and is not a regular file (a device, FIFO or socket)",
                         code="output.not_a_file", hint=f"give a new file name for the {what}; gptossctl never "
                         "replaces a device, FIFO or socket")


def check_output_path(path: Path, *, what: str, force: bool = True) -> Path:
    """The one check for a file a command writes on request (reports, archives, JUnit, textfiles), before any
    work is done: not a link, not a directory, device, FIFO or socket, in a directory that exists, and (unless
    `force`) not an existing file."""
    if path.is_symlink():
        raise UsageError(f"{what} {path} is a symbolic link", code="output.is_link",
                         hint="give a path that is not a link; gptossctl never writes through one")
    _refuse_special(path, what=what)
    if path.exists() and not force:
        raise UsageError(f"{what} {path} already exists", code="output.exists",
                         hint="choose a new path, or pass --force to replace it")
    if not path.parent.is_dir():
        raise UsageError(f"the directory of {what} {path} does not exist", code="output.no_directory",
                         hint=f"create {path.parent} first, or give another path")
    return path


def check_work_dir(path: Path, *, what: str = "work directory") -> None:
    """Refuse a work path an output is assembled in (OUT.partial, an incoming directory) that already exists as
    a symbolic link, as something other than a directory, or owned by another user: whoever planted it would
    have gptossctl delete and write files wherever it points (run as root in a shared inbox). Checked with
    lstat, before anything there is deleted or written; a missing path is fine (gptossctl creates it)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise UsageError(f"cannot look at the {what} {path}: {exc.strerror}", code="output.unwritable",
                         hint="give an output in an existing, readable directory") from None
    remove = f"remove {path} (after checking what put it there) and run the same command again"
    if stat.S_ISLNK(st.st_mode):
        raise UsageError(f"the {what} {path} is a symbolic link", code="output.work_is_link",
                         hint=f"{remove}; gptossctl never deletes or writes through a link")
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"the {what} {path} exists and is not a directory", code="output.work_not_directory",
                         hint=remove)
    if st.st_uid != os.geteuid():
        raise UsageError(f"the {what} {path} is owned by uid {st.st_uid}, not by the user running gptossctl "
                         f"(uid {os.geteuid()})", code="output.work_not_owned",
                         hint=f"{remove}; a work directory someone else owns may hold links they planted")


def check_output_paths(outputs: Sequence[tuple[Path | None, str]]) -> None:
    """check_output_path for each named output, and no file named twice (the second would silently replace the
    first): `outputs` is (path or None, the option that named it)."""
    seen: dict[Path, str] = {}
    for path, what in outputs:
        if path is None:
            continue
        check_output_path(path, what=what)
        same = Path(os.path.realpath(path.parent)) / path.name
        if same in seen:
            raise UsageError(f"{seen[same]} and {what} name the same file {path}", code="output.same_path",
                             hint="give each output its own path")
        seen[same] = what


def new_output(path: Path, *, force: bool, what: str) -> None:
    """Refuse an output path that exists (unless force), is a link or is not a regular file, before any work
    is done."""
    check_output_path(path, what=what, force=force)


def check_output_file(path: Path, *, what: str) -> Path:
    """An output that is rewritten on every run (reports, textfiles): it may exist as a regular file."""
    return check_output_path(path, what=what)


def check_not_inside(out: Path, sources: Sequence[Path], *, code: str, option: str = "--out",
                     hint: str = "write the output outside every source; it would change what it reads") -> None:
    """Refuse an output (or a --root) that is one of the sources or lies inside a source directory: split,
    copy, join, delta, apply and install would write into what they read (the bundle then fails verification
    with an extra file), and pack would pack itself. Links are resolved on both sides."""
    where = Path(os.path.realpath(out))
    for src in sources:
        real = Path(os.path.realpath(src))
        if where == real or (real.is_dir() and where.is_relative_to(real)):
            how = "the same place as" if where == real else "inside"
            raise UsageError(f"{option} {out} is {how} the source {src}", code=code, hint=hint)


@contextmanager
def exclusive_lock(path: Path, *, busy: str, hint: str) -> Iterator[None]:
    """One holder at a time (flock on `path`, released when the process ends, even by SIGKILL)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(busy, code="lock.busy", hint=hint) from None
        yield
    finally:
        os.close(fd)


def existing_dir(path: Path, *, what: str, code: str = "usage.not_a_directory") -> Path:
    if not path.exists():
        raise UsageError(f"{what} {path} does not exist", code=code, hint=f"give an existing {what}")
    if not path.is_dir():
        raise UsageError(f"{what} {path} is not a directory", code=code, hint=f"give the {what}, a directory")
    return path


# POSIX ACLs as the kernel stores them (xattr system.posix_acl_access / _default: a little-endian u32 version 2,
# then (tag u16, perm u16, id u32) entries). Tags: user 2, group 8, group owner 4, other 0x20; perm bit 2: write.
_ACL_XATTRS = ("system.posix_acl_access", "system.posix_acl_default")
_ACL_NAMED, _ACL_CLASS = {2: "user", 8: "group"}, {4: "the group owner", 0x20: "others"}


def acl_write_grants(path: Path, allowed: frozenset[int] = frozenset({0})) -> list[str]:
    """Who a POSIX ACL on `path` (not followed) lets write, beyond root and what the mode bits already show:
    a named user or group other than root (or `allowed`) in the access or default ACL, and, in a directory's default ACL, the
    group owner or others (what every new file under it would inherit)."""
    out: list[str] = []
    for name in _ACL_XATTRS:
        try:
            raw = os.getxattr(path, name, follow_symlinks=False)
        except OSError:  # no ACL, no xattr support, or a link
            continue
        kind = "default ACL" if name.endswith("default") else "ACL"
        for off in range(4, len(raw) - 7, 8):
            tag, perm, ident = int.from_bytes(raw[off:off + 2], "little"), \
                int.from_bytes(raw[off + 2:off + 4], "little"), int.from_bytes(raw[off + 4:off + 8], "little")
            if not perm & 2:
                continue
            if tag in _ACL_NAMED and ident not in allowed:
                out.append(f"its {kind} lets {_ACL_NAMED[tag]} {ident} write")
            elif tag in _ACL_CLASS and kind == "default ACL":
                out.append(f"its {kind} lets {_ACL_CLASS[tag]} write")
    return out


def read_nofollow(path: Path, limit: int = TEXT_LIMIT) -> bytes:
    """A file's bytes, refusing a symbolic link in its place (OSError ELOOP): what gptossctl rendered or wrote
    is never read through a link someone planted there."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        return f.read(limit + 1)[:limit]
