"""Hashing at the speed of the machine: every core, each byte read once, no copy through read() buffers.

hashlib's SHA-256 is OpenSSL's and releases the GIL on large buffers, so plain threads scale with
cores. Files larger than the shard size are hashed shard by shard, so one 4 GiB file keeps every core
busy during verification (the scheme of OpenSSF model signing).

Flow of one byte:
  hash (verify, parts, deltas):  page cache -> mmap slice -> SHA-256. No read() copy into user space.
  copy (pack, unpack, split, join, copy, apply):  copy_file_range copies inside the kernel (a reflink
      where the filesystem can), then the destination's pages are hashed through mmap: what is hashed
      is what landed, and nothing passes through a user-space buffer. Where the kernel refuses
      copy_file_range (another filesystem type, FAT32 sticks), the source is mapped and written with
      pwrite: still one copy, and the destination is hashed the same way.
A read error under mmap ends the process with SIGBUS (it fails closed, never passes); on flaky media
set GPTOSSCTL_NO_MMAP=1 to read with preadv instead and get the error as a finding.
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

SHARD_SIZE = 1 << 30  # 1 GiB: files above this carry per-shard digests in the manifest
_CHUNK = 4 << 20  # preadv buffer where mmap is not used
SLICE = 32 << 20  # bytes mapped, copied and hashed per step: progress granularity and readahead window
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
# copy_file_range refusals that mean "not between these files": fall back to mmap + pwrite.
_NO_CFR = {errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EBADF, errno.EPERM}

Progress = Callable[[int], None]
_local = threading.local()


class Hasher(Protocol):
    """Anything fed bytes in order: hashlib's objects, and the shard splitter below."""

    def update(self, data: Any, /) -> None: ...


def _use_mmap() -> bool:
    return os.environ.get("GPTOSSCTL_NO_MMAP", "") != "1"


def _buffer() -> memoryview:
    """One reusable read buffer per thread for the preadv path."""
    buf = getattr(_local, "buf", None)
    if buf is None:
        buf = _local.buf = memoryview(bytearray(_CHUNK))
    return buf


def _no_progress(_n: int) -> None:
    return None


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def shard_count(size: int, shard_size: int = SHARD_SIZE) -> int:
    """Files above one shard are split; a file of exactly one shard or less has no shard list."""
    return 0 if size <= shard_size else -(-size // shard_size)


class ShortFile(OSError):
    """The file ended before the range to hash or copy did."""


def hash_fd(fd: int, offset: int, length: int, hashers: Sequence[Hasher], progress: Progress = _no_progress) -> None:
    """Feed bytes [offset, offset+length) of fd to every hasher; raise ShortFile if the file is shorter.

    Mapped slice by slice (no copy into user space); the next slice is read ahead while this one is
    hashed, so a cold disk and the CPU work at the same time.
    """
    if length <= 0:
        return
    if os.fstat(fd).st_size < offset + length:
        raise ShortFile(errno.EIO, "file is shorter than the manifest says")
    if not _use_mmap():
        _hash_fd_read(fd, offset, length, hashers, progress)
        return
    end = offset + length
    pos = offset
    while pos < end:
        n = min(SLICE - pos % SLICE, end - pos)  # slices on SLICE boundaries: aligned maps
        if pos + n < end and hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, pos + n, min(SLICE, end - pos - n), os.POSIX_FADV_WILLNEED)
        base = pos - pos % mmap.ALLOCATIONGRANULARITY
        with (mmap.mmap(fd, pos + n - base, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ, offset=base) as m,
              memoryview(m) as view):
            part = view[pos - base:]
            try:
                for h in hashers:
                    h.update(part)
            finally:
                part.release()
        pos += n
        progress(n)


def _hash_fd_read(fd: int, offset: int, length: int, hashers: Sequence[Hasher], progress: Progress) -> None:
    view = _buffer()
    pos, end = offset, offset + length
    while pos < end:
        n = os.preadv(fd, [view[: min(_CHUNK, end - pos)]], pos)
        if n == 0:
            raise ShortFile(errno.EIO, "file is shorter than the manifest says")
        for h in hashers:
            h.update(view[:n])
        pos += n
        progress(n)


def open_read(path: Path) -> int:
    # O_NOFOLLOW: the tree walk refuses links, and this closes the race of one appearing since.
    return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | _O_CLOEXEC)


def open_write(path: Path, *, truncate: bool) -> int:
    """Open for writing and for mapping back (the written bytes are hashed through mmap)."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | _O_CLOEXEC | (os.O_TRUNC if truncate else 0)
    return os.open(path, flags, 0o644)


@dataclass(frozen=True)
class Piece:
    """A byte range of a file to hash: a whole small file, or one shard of a big one."""

    path: Path
    offset: int
    length: int
    key: tuple[str, int]  # (manifest path, shard index or -1 for the whole file)


@dataclass(frozen=True)
class PieceDigest:
    key: tuple[str, int]
    sha256: str | None  # None: the file ended early or could not be read
    read: int
    error: str | None = None


def _hash_piece(piece: Piece, progress: Progress) -> PieceDigest:
    h = hashlib.sha256()
    done = [0]

    def counted(n: int) -> None:
        done[0] += n
        progress(n)

    try:
        fd = open_read(piece.path)
    except OSError as exc:
        return PieceDigest(piece.key, None, 0, exc.strerror or str(exc))
    try:
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, piece.offset, piece.length, os.POSIX_FADV_SEQUENTIAL)
        hash_fd(fd, piece.offset, piece.length, [h], counted)
        # A file longer than recorded is caught by the size check before hashing; still, be exact.
        return PieceDigest(piece.key, h.hexdigest(), done[0])
    except OSError as exc:
        return PieceDigest(piece.key, None, done[0], exc.strerror or str(exc))
    finally:
        os.close(fd)


def pieces_for(path: Path, manifest_path: str, size: int, shard_size: int = SHARD_SIZE) -> list[Piece]:
    n = shard_count(size, shard_size)
    if n == 0:
        return [Piece(path, 0, size, (manifest_path, -1))]
    return [
        Piece(path, i * shard_size, min(shard_size, size - i * shard_size), (manifest_path, i))
        for i in range(n)
    ]


class HashRun:
    """Hashing started in the background: verification starts reading the disks first and does the
    rest (imports, strict parsing, signatures) while the bytes stream through SHA-256."""

    def __init__(self, pieces: Iterable[Piece], *, workers: int | None = None,
                 progress: Progress = _no_progress) -> None:
        ordered = sorted(pieces, key=lambda p: p.length, reverse=True)  # largest first: no idle tail
        self.total = sum(p.length for p in ordered)
        self._pool = ThreadPoolExecutor(max_workers=workers or default_workers())
        self._futures = [self._pool.submit(_hash_piece, p, progress) for p in ordered]

    def results(self) -> dict[tuple[str, int], PieceDigest]:
        try:
            return {r.key: r for r in (f.result() for f in self._futures)}
        finally:
            self._pool.shutdown(wait=True)

    def cancel(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def hash_pieces(
    pieces: Iterable[Piece], *, workers: int | None = None, progress: Progress = _no_progress
) -> dict[tuple[str, int], PieceDigest]:
    """Hash every piece in parallel and wait for all of them."""
    return HashRun(pieces, workers=workers, progress=progress).results()


def copy_range(src_fd: int, src_off: int, dst_fd: int, dst_off: int, length: int) -> int:
    """Copy up to length bytes inside the kernel; return how many were copied (less only at the
    source's end). Falls back to mmap + pwrite where copy_file_range is refused."""
    done = 0
    while done < length:
        try:
            n = os.copy_file_range(src_fd, dst_fd, length - done, src_off + done, dst_off + done)
        except OSError as exc:
            if exc.errno not in _NO_CFR:
                raise
            return done + _write_mapped(src_fd, src_off + done, dst_fd, dst_off + done, length - done)
        if n == 0:
            break
        done += n
    return done


def _write_mapped(src_fd: int, src_off: int, dst_fd: int, dst_off: int, length: int) -> int:
    length = max(0, min(length, os.fstat(src_fd).st_size - src_off))
    if length == 0:
        return 0
    base = src_off - src_off % mmap.ALLOCATIONGRANULARITY
    with mmap.mmap(src_fd, src_off + length - base, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ,
                   offset=base) as m, memoryview(m) as view:
        data = view[src_off - base:]
        try:
            written = 0
            while written < length:
                written += os.pwrite(dst_fd, data[written:], dst_off + written)
        finally:
            data.release()  # before the map closes, or a write error would turn into a BufferError
    return length


def copy_verified(src_fd: int, src_off: int, dst_fd: int, dst_off: int, length: int, *,
                  progress: Progress = _no_progress, slice_size: int = SLICE) -> str:
    """Copy a range and return the SHA-256 of the bytes as they landed in the destination.

    Raises ShortFile if the source ends early and OSError for write errors (ENOSPC, EIO).
    """
    h = hashlib.sha256()
    pos = 0
    while pos < length:
        n = min(slice_size, length - pos)
        if copy_range(src_fd, src_off + pos, dst_fd, dst_off + pos, n) != n:
            raise ShortFile(errno.EIO, "source file is shorter than recorded")
        hash_fd(dst_fd, dst_off + pos, n, [h])
        pos += n
        progress(n)
    return h.hexdigest()


@dataclass(frozen=True)
class CopyResult:
    size: int
    sha256: str
    shards: tuple[str, ...]


class _ShardHasher:
    """Shard digests from a stream of slices (shard and slice boundaries need not meet)."""

    def __init__(self, shard_size: int) -> None:
        self.shard_size = shard_size
        self.state = hashlib.sha256()
        self.fill = 0
        self.digests: list[str] = []

    def update(self, view: Any) -> None:
        view = memoryview(view)
        start = 0
        while start < len(view):
            take = min(len(view) - start, self.shard_size - self.fill)
            self.state.update(view[start : start + take])
            self.fill += take
            start += take
            if self.fill == self.shard_size:
                self.digests.append(self.state.hexdigest())
                self.state = hashlib.sha256()
                self.fill = 0
        view.release()

    def finish(self) -> tuple[str, ...]:
        if self.fill:
            self.digests.append(self.state.hexdigest())
        return tuple(self.digests)


def copy_and_hash(
    src: Path, dst: Path, *, shard_size: int = SHARD_SIZE, progress: Progress = _no_progress
) -> CopyResult:
    """Copy src to dst (a new file) and hash it on the way: one read of every byte.

    The whole-file digest (for `sha256sum -c`) and the shard digests (for parallel verify) are
    computed from the destination's pages as they land. The kernel copies the next slice while one
    thread hashes the whole file and another the shards, so the copy is bound by the disk or by
    SHA-256 on one core, whichever is slower.
    """
    whole = hashlib.sha256()
    src_fd = os.open(src, os.O_RDONLY | _O_CLOEXEC)
    try:
        size = os.fstat(src_fd).st_size
        sharded = shard_count(size, shard_size) > 0
        shards = _ShardHasher(shard_size)
        dst_fd = open_write(dst, truncate=True)
        try:
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(src_fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            if not sharded and size <= 4 * SLICE:
                total = _copy_small(src_fd, dst_fd, whole, progress)
            else:
                total = _copy_pipelined(src_fd, dst_fd, [whole, shards] if sharded else [whole], progress)
        finally:
            os.close(dst_fd)
    finally:
        os.close(src_fd)
    return CopyResult(total, whole.hexdigest(), shards.finish() if sharded else ())


def _copy_small(src_fd: int, dst_fd: int, whole: Hasher, progress: Progress) -> int:
    """A few slices: copy, then hash the destination, on this thread; threads would only add overhead."""
    total = 0
    while n := copy_range(src_fd, total, dst_fd, total, SLICE):
        hash_fd(dst_fd, total, n, [whole])
        total += n
        progress(n)
    return total


def _copy_pipelined(src_fd: int, dst_fd: int, hashers: Sequence[Hasher], progress: Progress) -> int:
    """Copy slice k+1 while one thread per hasher digests slice k of the destination, in order."""
    pools = [ThreadPoolExecutor(1) for _ in hashers]
    inflight: list[list[Future[None]]] = []
    total = 0
    try:
        while n := copy_range(src_fd, total, dst_fd, total, SLICE):
            inflight.append([pool.submit(hash_fd, dst_fd, total, n, [h]) for pool, h in zip(pools, hashers, strict=False)])
            total += n
            progress(n)
            if len(inflight) > 2:
                for fut in inflight.pop(0):
                    fut.result()
        for futs in inflight:
            for fut in futs:
                fut.result()
    finally:
        for pool in pools:
            pool.shutdown(wait=True, cancel_futures=True)
    return total


def sha256_file(path: Path) -> str:
    """Hash one small file (keys, manifests): the parallel machinery is for payloads."""
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | _O_CLOEXEC)
    try:
        hash_fd(fd, 0, os.fstat(fd).st_size, [h])
    finally:
        os.close(fd)
    return h.hexdigest()
