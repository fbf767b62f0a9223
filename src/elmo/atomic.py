"""Publishing files and directories atomically: a reader, or a crash, sees the old content or
the new, never a part.

One policy for every file and directory this package publishes:

- The content is written under a temporary name in the target's own directory (the same
  file system, so that the final rename is atomic): ``.NAME.RANDOM.tmp``, random for every
  call, so two writers in one directory never share a temporary.
- Before the content takes the final name it is flushed and fsync'ed (every file of a
  directory); the rename is :func:`os.replace`; then the parent directory is fsync'ed, so
  that the new name survives a power cut too (skipped where the platform cannot open a
  directory).
- On any exception (Ctrl-C included) the temporary is removed and the exception goes on;
  what was at the path before is left as it was.
- Files and directories get the mode a plain ``open()`` / ``mkdir()`` gives (not the private
  0600 / 0700 of ``mkstemp`` / ``mkdtemp``).

Use :func:`atomic_write` for an open file, :func:`atomic_path` for writers that take a
path (``h5py.File``, ``torch.save``), :func:`atomic_dir` for a directory of files and
:func:`publish` for a file already written in place (a resumable download).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_dir",
    "atomic_path",
    "atomic_write",
    "check_destination",
    "publish",
    "write_json_atomic",
    "write_text_atomic",
]

PathLike = str | os.PathLike[str]


def _sibling(path: Path, kind: str) -> Path:
    """A name beside ``path`` that no other call picks: ``.NAME.RANDOM.KIND``."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.{kind}")


def _fsync(path: Path) -> None:
    """Flush a file's content, or a directory's entries, to the disk."""
    is_dir = path.is_dir()
    try:
        fd = os.open(path, os.O_RDONLY if is_dir else os.O_RDWR)
    except OSError:
        if is_dir:
            return  # some platforms cannot open a directory; the rename is atomic all the same
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not is_dir:
            raise
    finally:
        os.close(fd)


def _parent(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(".")


def publish(src: PathLike, path: PathLike) -> None:
    """Give the finished file ``src`` the name ``path`` (same directory or file system).

    ``src`` is fsync'ed first and the directory after, so ``path`` is whole even after a
    power cut. For a file written in place beforehand (a resumable download); new content
    goes through :func:`atomic_path` or :func:`atomic_write`.
    """
    src, path = Path(src), Path(path)
    _fsync(src)
    os.replace(src, path)
    _fsync(_parent(path))


def check_destination(path: PathLike) -> None:
    """Raise an :class:`OSError` whose message names ``path`` if no file can be published
    there: its folder is missing or not a folder, or ``path`` is a directory.

    Commands call it before their work, so a bad output is refused before time is spent.
    """
    path = Path(path)
    parent = _parent(path)
    if not parent.is_dir():
        if parent.exists():
            raise NotADirectoryError(f"{path}: {parent} is not a folder")
        raise FileNotFoundError(f"{path}: the folder {parent} does not exist")
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a directory; expected a file name")


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """A fresh temporary path beside ``path`` to write the new file to; it becomes ``path``
    when the block ends, and is removed if the block raises.

    For writers that take a path (``h5py.File``, ``torch.save``, ...). The temporary does
    not exist yet when the block starts.
    """
    path = Path(path)
    check_destination(path)  # else the error would name the temporary, not the path
    tmp = _sibling(path, "tmp")
    try:
        yield tmp
        publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_write(
    path: PathLike, mode: str = "wb", encoding: str | None = None, newline: str | None = None
) -> Iterator[IO[Any]]:
    """An open file (``mode`` ``"w"`` or ``"wb"``) whose content becomes ``path`` when the
    block ends; if the block raises, ``path`` is left as it was."""
    if mode not in ("w", "wb"):
        raise ValueError(f"mode: expected 'w' or 'wb', found {mode!r}")
    with atomic_path(path) as tmp, open(tmp, mode.replace("w", "x"), encoding=encoding, newline=newline) as f:
        yield f


def write_text_atomic(path: PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically, line ends as given (no translation)."""
    with atomic_write(path, "w", encoding=encoding, newline="\n") as f:
        f.write(text)


def write_json_atomic(path: PathLike, data: Any, indent: int | None = None) -> None:
    """Write ``data`` as JSON (and a final newline) to ``path`` atomically."""
    write_text_atomic(path, json.dumps(data, indent=indent) + "\n")


@contextlib.contextmanager
def atomic_dir(path: PathLike) -> Iterator[Path]:
    """A fresh empty directory beside ``path`` to fill; it replaces ``path`` (and whatever
    ``path`` held) when the block ends, and is removed if the block raises.

    A directory cannot be renamed over a non-empty one, so an existing ``path`` is first
    renamed aside (put back if the final rename fails) and deleted once the new one is in
    place: there is a moment without ``path``, never one with a part of it.
    """
    path = Path(path)
    tmp = _sibling(path, "tmp")
    tmp.mkdir()
    try:
        yield tmp
        for root, _, files in os.walk(tmp):
            for name in files:
                _fsync(Path(root, name))
            _fsync(Path(root))
        _replace_dir(tmp, path)
        _fsync(_parent(path))
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _replace_dir(tmp: Path, path: Path) -> None:
    old = None
    if path.is_dir() and any(path.iterdir()):
        old = _sibling(path, "old")
        os.replace(path, old)
    elif path.is_dir():
        path.rmdir()
    try:
        os.replace(tmp, path)
    except OSError:
        if old is not None:
            os.replace(old, path)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
