"""Writing a checkpoint directory all at once: a staging folder, moved into place with interrupts held back.

A write stages its files in ``.tandem-<pid>-<host>-XXXXXXXX/`` inside the destination (same filesystem, so
each move is a rename). Before moving anything it records the moves in a journal inside that folder; then
it removes the destination's ``config.json``, removes the old weights, moves the new weights in and moves
``config.json`` in last. So a process killed outright (SIGKILL, power cut of the process) leaves either its
staging folder beside the untouched old checkpoint, or, killed during the moves, a destination without a
``config.json`` (which no loader accepts) and a journal that says how to finish. SIGINT and SIGTERM unwind
the write and remove the folder; they are held back while the files move.

Every write first sweeps the destination: a staging folder whose writer is gone (its pid, recorded in the
name, is not running on this host) is finished from its journal when its moves had begun, else removed. A
folder of another host, or one without a pid (written by an older tandem), is swept only after an hour
without a change, so a write still running elsewhere is never disturbed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

Commit = Callable[[list[str], Callable[[str], bool]], None]

_JOURNAL = ".commit.json"
_MARKER = "config.json"  # removed first and moved in last: no loader accepts a directory without it
_ABANDONED_AFTER = 3600.0  # seconds without a change after which a folder of unknown owner counts as dead
_HOST = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())[:64] or "host"
_OURS = re.compile(r"\.tandem-(?P<pid>\d+)-(?P<host>[A-Za-z0-9._]*)-(?P<suffix>[a-z0-9_]{8})")


class _Terminated(BaseException):
    """SIGTERM, raised where the write stands so that its staging folder is removed before the process ends."""


@contextlib.contextmanager
def staging(directory: Path) -> Iterator[tuple[Path, Commit]]:
    """A staging folder inside ``directory`` and ``commit(names, stale)`` that moves its files into place.

    ``commit`` moves the named files from the folder into ``directory`` and removes the files there that
    ``stale(name)`` claims and the new checkpoint does not have. Leaving the block removes the folder, and the
    folders made for ``directory`` when nothing was committed to them.
    """
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"{directory} is a file; a checkpoint is written into a directory")
    created = [d for d in (directory, *directory.parents) if not d.exists()]  # deepest first
    directory.mkdir(parents=True, exist_ok=True)
    sweep(directory)
    with _sigterm_unwinds():
        stage = Path(tempfile.mkdtemp(prefix=f".tandem-{os.getpid()}-{_HOST}-", dir=directory))

        def commit(names: list[str], stale: Callable[[str], bool]) -> None:
            with _interrupts_held():
                remove = sorted(p.name for p in directory.iterdir() if p.is_file() and stale(p.name))
                journal = {"files": names, "remove": [name for name in remove if name not in names]}
                (stage / _JOURNAL).write_text(json.dumps(journal))  # a torn journal reads as "not begun"
                _apply(directory, stage, journal)

        try:
            yield stage, commit
        finally:
            with _interrupts_held():
                shutil.rmtree(stage, ignore_errors=True)
                for folder in created:  # folders made for a checkpoint that was not written
                    if any(folder.iterdir()):
                        break
                    folder.rmdir()


def sweep(directory: Path) -> None:
    """Finish or remove the staging folders in ``directory`` whose writers are gone."""
    for folder in sorted(directory.glob(".tandem-*")):
        if not folder.is_dir() or _running(folder):
            continue
        # Claim the folder by renaming it to our pid, so that two sweeps never finish the same write.
        claimed = folder.with_name(f".tandem-{os.getpid()}-{_HOST}-{folder.name[-8:]}")
        try:
            folder.rename(claimed)
            journal = _read_journal(claimed)
            if journal is not None:
                _apply(directory, claimed, journal)
            shutil.rmtree(claimed)
        except OSError as err:  # another sweep claimed it first, or the files cannot be moved: leave it
            if folder.exists() or claimed.exists():
                warnings.warn(f"could not clear the abandoned staging folder {folder}: {err}", stacklevel=3)


def _apply(directory: Path, stage: Path, journal: dict[str, Any]) -> None:
    """The moves of ``journal``; each step is skipped when already done, so a killed commit can be redone."""
    files: list[str] = journal["files"]
    if _MARKER in files and (stage / _MARKER).exists():
        (directory / _MARKER).unlink(missing_ok=True)
    for name in journal["remove"]:
        (directory / name).unlink(missing_ok=True)
    for name in sorted(files, key=lambda name: name == _MARKER):  # the marker last
        if (stage / name).exists():
            os.replace(stage / name, directory / name)


def _read_journal(stage: Path) -> dict[str, Any] | None:
    """The journal of a commit that had begun, or None (none written, or torn: no file had moved yet)."""
    try:
        journal = json.loads((stage / _JOURNAL).read_text())
    except (OSError, ValueError):
        return None
    lists = [journal.get(key) for key in ("files", "remove")] if isinstance(journal, dict) else [None]
    if not all(isinstance(names, list) and all(_plain(name) for name in names) for names in lists):
        return None  # not a journal tandem wrote: never let it move or remove files outside the folder
    return journal


def _plain(name: Any) -> bool:
    """Whether ``name`` names a file in a folder (no separator, not ``.`` or ``..``)."""
    return isinstance(name, str) and Path(name).name == name and name not in ("", ".", "..")


def _running(folder: Path) -> bool:
    """Whether the write that made ``folder`` may still be running."""
    match = _OURS.fullmatch(folder.name)
    if match is not None and match["host"] == _HOST:
        pid = int(match["pid"])
        if pid == os.getpid():
            return True  # another write of this process (a thread)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # a process of another user
            return True
        return True
    try:
        changed = max(p.stat().st_mtime for p in (folder, *folder.iterdir()))
    except OSError:
        return True
    return time.time() - changed < _ABANDONED_AFTER


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """Turn SIGTERM into an exception while the block runs, then end the process by SIGTERM as it would have.

    Only where SIGTERM has its default action (it ends the process) and only in the main thread, which alone
    can set handlers; a program's own SIGTERM handler is left alone.
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def terminate(_signum: int, _frame: Any) -> None:
        raise _Terminated

    try:
        signal.signal(signal.SIGTERM, terminate)
        yield
    except _Terminated:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)  # the staging folder is gone: end as SIGTERM ends a process
        raise
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def _interrupts_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back while the block runs and deliver them on exit.

    By handlers that note the signal, not by a signal mask: a mask holds a signal back from one thread only,
    and the kernel hands a process-wide signal to any thread that does not block it (numpy's BLAS threads).
    Handlers can be set in the main thread only; elsewhere the block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.signal(signum, lambda signum, _frame: caught.append(signum)) for signum in held}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        for signum in dict.fromkeys(caught):
            signal.raise_signal(signum)
