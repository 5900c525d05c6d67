"""Atomic file writes: a temporary file in the target's folder, fsync, then ``os.replace``.

A crash or an exception leaves either the old file or the new one, never a half-written one,
and no temporary file behind. Also the checks every writer shares: a target must be absent or a
regular file (never a FIFO, device, socket or folder), the finished file gets the mode an
ordinary ``open()`` would give (``0o666 & ~umask``, not ``mkstemp``'s 0600), and SIGTERM
interrupts a writer the way Ctrl-C does, so its temporary file is removed.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import tempfile
import threading
from pathlib import Path
from typing import BinaryIO, Callable, Iterator


class TargetError(OSError):
    """An output path that must not be written; ``str()`` is one line ``PATH: problem``."""

    def __str__(self) -> str:
        return self.args[0] if self.args else "bad output path"


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so that cleanup runs the same way."""


_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def special_kind(path: str | Path) -> str | None:
    """What non-regular thing exists at ``path`` (following links), e.g. ``"a FIFO"``; None when
    nothing is there or it is a regular file."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def check_target(path: str | Path) -> Path:
    """Raise TargetError unless ``path`` is absent or a regular file (what an output may replace)."""
    path = Path(path)
    kind = special_kind(path)
    if kind is not None:
        raise TargetError(f"{path}: exists and is {kind}, not a regular file; refusing to replace it")
    return path


def probe_writable(path: str | Path) -> Path:
    """Check before any work that a file can be written at ``path``: ``check_target``, then create
    and delete a hidden temporary file in its nearest existing folder. TargetError names ``path``."""
    path = check_target(path)
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise TargetError(f"{path}: cannot write here ({folder} is not a folder)")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=folder)
    except OSError as exc:
        raise TargetError(f"{path}: cannot write here ({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(tmp)
    return path


def current_umask() -> int:
    """The process umask (read from /proc where possible, which leaves it untouched)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def make_temp(path: str | Path, suffix: str = ".tmp") -> tuple[int, Path]:
    """``(fd, name)`` of a new hidden temporary file beside ``path`` with mode ``0o666 & ~umask``.

    The folder is made if missing. A failure is an OSError naming ``path``, not the temporary file.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    return fd, Path(tmp)


def write_atomic(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(fh)`` on a temporary binary file beside ``path``, then rename it to ``path``.

    Refuses (TargetError) a ``path`` that is a folder, FIFO, device or socket.
    """
    path = check_target(path)
    fd, tmp = make_temp(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        check_target(path)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    write_atomic(path, lambda fh: fh.write(data))


def write_json_atomic(obj, path: str | Path) -> None:
    """``obj`` as indented JSON with a final newline."""
    write_bytes_atomic(path, (json.dumps(obj, indent=1) + "\n").encode())


# ------------------------------------------------------------------------------------ signals
def _raise_terminated(signum, frame) -> None:
    raise Terminated(f"signal {signum}")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (a KeyboardInterrupt) in the main
    thread, so a writer's Ctrl-C cleanup also runs on SIGTERM. No-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def interrupt_status(exc: BaseException) -> int:
    """Exit status after an interruption: 143 for SIGTERM, 130 for Ctrl-C."""
    return 128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)


def make_dirs(path: str | Path) -> list[Path]:
    """``mkdir -p path``; returns the folders this call created, deepest first."""
    path = Path(path)
    missing = []
    p = path
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    path.mkdir(parents=True, exist_ok=True)
    return missing


def remove_empty_dirs(dirs: list[Path]) -> None:
    """Remove each folder of ``dirs`` (deepest first) that is empty; leave the others."""
    for d in dirs:
        try:
            d.rmdir()
        except OSError:
            return
