"""Writing a checkpoint directory all at once: a temporary folder, moved into place with interrupts held back."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

Commit = Callable[[list[str], Callable[[str], bool]], None]


@contextlib.contextmanager
def staging(directory: Path) -> Iterator[tuple[Path, Commit]]:
    """A temporary folder inside ``directory`` and ``commit(names, stale)`` that moves its files into place.

    ``commit`` moves the named files from the folder into ``directory``, then removes the files there that
    ``stale(name)`` claims and the new checkpoint does not have. Leaving the block removes the folder, and the
    folders made for ``directory`` when nothing was committed to them.
    """
    created = [d for d in (directory, *directory.parents) if not d.exists()]  # deepest first
    directory.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".tandem-", dir=directory))

    def commit(names: list[str], stale: Callable[[str], bool]) -> None:
        with _interrupts_held():
            for name in names:
                os.replace(stage / name, directory / name)
            for old in directory.iterdir():
                if old.is_file() and stale(old.name) and old.name not in names:
                    old.unlink()

    try:
        yield stage, commit
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        for folder in created:  # folders made for a checkpoint that was not written
            if any(folder.iterdir()):
                break
            folder.rmdir()


@contextlib.contextmanager
def _interrupts_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back (delivered on exit) where the platform allows it."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
