"""Files made safely beside their final name: built under a temporary name in the same folder,
then published by a hard link, which never replaces an existing file (a copy opened with
``O_EXCL`` where the file system has no hard links), and the folder synced; or renamed over the
final name (:func:`replacing`), so that a reader sees the old file or the new one, never half
of one."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def temporary_beside(path: Path) -> Path:
    """A new empty file in ``path``'s folder (so it can be linked to ``path``), named after it."""
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(handle)
    return Path(name)


@contextlib.contextmanager
def replacing(path: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """A new temporary file beside ``path`` (ending in ``suffix``, for writers that choose a
    format by the name) to write in the block; renamed over ``path`` when the block succeeds,
    removed when it fails, so ``path`` is never left half-written."""
    path = Path(path)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def publish(source: Path, target: Path) -> None:
    """Give the finished database ``source`` the name ``target`` too, atomically and only if
    ``target`` does not exist (:class:`FileExistsError` otherwise).

    A hard link does both in one step. On a file system without hard links the file is copied
    into a ``target`` opened with ``O_EXCL``, which still never replaces another file (a reader
    may then see it half-written).
    """
    try:
        os.link(source, target)
    except FileExistsError:
        raise
    except OSError:  # no hard links here (FAT, some network shares)
        with open(target, "xb") as out:
            try:
                with open(source, "rb") as data:
                    shutil.copyfileobj(data, out)
                out.flush()
                os.fsync(out.fileno())
            except BaseException:
                out.close()
                target.unlink()  # the file this process created, half-written
                raise
    sync_folder(target.parent)


def sync_folder(folder: Path) -> None:
    """Make a new name in ``folder`` durable (where the OS can open a folder)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - Windows cannot open a folder
        return
    try:
        os.fsync(handle)
    except OSError:  # a file system that cannot sync a folder; the name is there all the same
        pass
    finally:
        os.close(handle)


def remove_database(path: Path) -> None:
    """Remove a database this process created under a temporary name, and its side files."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
