"""Hashing at the speed of the machine: every core, each byte read once.

hashlib's SHA-256 is OpenSSL's and releases the GIL on large buffers, so plain threads scale with
cores. Files larger than the shard size are hashed shard by shard, so one 4 GiB file keeps every core
busy during verification (the scheme of OpenSSF model signing). Pack copies and hashes in one pass.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

SHARD_SIZE = 1 << 30  # 1 GiB: files above this carry per-shard digests in the manifest
_CHUNK = 4 << 20

Progress = Callable[[int], None]
_local = threading.local()


def _buffer() -> memoryview:
    """One reusable read buffer per thread: allocating (and zero-filling) one per file costs more
    than hashing a small file."""
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
    view = _buffer()
    remaining = piece.length
    done = 0
    try:
        # O_NOFOLLOW: the tree walk refuses links, and this closes the race of one appearing since.
        fd = os.open(piece.path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        return PieceDigest(piece.key, None, 0, exc.strerror or str(exc))
    try:
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, piece.offset, piece.length, os.POSIX_FADV_SEQUENTIAL)
        pos = piece.offset
        while remaining > 0:
            n = os.preadv(fd, [view[: min(_CHUNK, remaining)]], pos)
            if n == 0:
                return PieceDigest(piece.key, None, done, "file is shorter than the manifest says")
            h.update(view[:n])
            pos += n
            done += n
            remaining -= n
            progress(n)
        # A file longer than recorded is caught by the size check before hashing; still, be exact.
        return PieceDigest(piece.key, h.hexdigest(), done)
    except OSError as exc:
        return PieceDigest(piece.key, None, done, exc.strerror or str(exc))
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


@dataclass(frozen=True)
class CopyResult:
    size: int
    sha256: str
    shards: tuple[str, ...]


def copy_and_hash(
    src: Path, dst: Path, *, shard_size: int = SHARD_SIZE, progress: Progress = _no_progress
) -> CopyResult:
    """Copy src to dst (a new file) and hash it on the way: one read of every byte.

    The whole-file digest (for `sha256sum -c`) and the shard digests (for parallel verify) are
    computed from the same buffers. Writing and shard hashing run on their own threads so the copy
    is bound by the disk, not by the hash.
    """
    size = src.stat().st_size
    if shard_count(size, shard_size) == 0 and size <= 4 * _CHUNK:
        return _copy_small(src, dst, progress)
    whole = hashlib.sha256()
    shard_digests: list[str] = []
    shard_state = [hashlib.sha256()]  # mutable cell for the shard thread
    shard_fill = [0]
    sharded = shard_count(size, shard_size) > 0

    def shard_update(view: memoryview) -> None:
        start = 0
        while start < len(view):
            take = min(len(view) - start, shard_size - shard_fill[0])
            shard_state[0].update(view[start : start + take])
            shard_fill[0] += take
            start += take
            if shard_fill[0] == shard_size:
                shard_digests.append(shard_state[0].hexdigest())
                shard_state[0] = hashlib.sha256()
                shard_fill[0] = 0

    buffers = [bytearray(_CHUNK) for _ in range(3)]
    pending: list[list[Future[object]]] = [[] for _ in buffers]
    total = 0
    with ThreadPoolExecutor(1) as writer, ThreadPoolExecutor(1) as sharder:
        src_fd = os.open(src, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        dst_fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(src_fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            i = 0
            while True:
                for fut in pending[i]:
                    fut.result()  # the buffer is free again; re-raises a write error
                view = memoryview(buffers[i])
                n = os.readv(src_fd, [view])
                if n == 0:
                    break
                chunk = view[:n]
                pending[i] = [writer.submit(_write_all, dst_fd, chunk)]
                if sharded:
                    pending[i].append(sharder.submit(shard_update, chunk))
                whole.update(chunk)
                total += n
                progress(n)
                i = (i + 1) % len(buffers)
            for futs in pending:
                for fut in futs:
                    fut.result()
        finally:
            os.close(src_fd)
            os.close(dst_fd)
    if sharded and shard_fill[0]:
        shard_digests.append(shard_state[0].hexdigest())
    return CopyResult(total, whole.hexdigest(), tuple(shard_digests))


def _copy_small(src: Path, dst: Path, progress: Progress) -> CopyResult:
    """Files of a few chunks: read, hash, write on this thread; threads would only add overhead."""
    h = hashlib.sha256()
    view = _buffer()
    total = 0
    src_fd = os.open(src, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        dst_fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            while n := os.readv(src_fd, [view]):
                h.update(view[:n])
                _write_all(dst_fd, view[:n])
                total += n
                progress(n)
        finally:
            os.close(dst_fd)
    finally:
        os.close(src_fd)
    return CopyResult(total, h.hexdigest(), ())


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        written = os.write(fd, view)
        view = view[written:]


def sha256_file(path: Path) -> str:
    """Hash one small file (keys, manifests): the parallel machinery is for payloads."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()

