"""Reading the small files a model or a run is described by, with a size cap.

Options, layer mixes, manifests, vocabularies and checkpoint state files are read whole
into memory, so each is read through :func:`read_bytes_capped` (or its text and JSON
forms): a file larger than its cap, or something that is not a regular file (a
directory, a FIFO, ``/dev/zero``), is refused with one line before anything is read,
and a file that grows while it is read stops at the cap.

The caps, in one place:

=======================  =========  ==================================================
what                     cap        why
=======================  =========  ==================================================
options / mix / state    16 MiB     the released options files are under 1 KiB
manifests                64 MiB     a resumable run's record of its shards
vocabularies             1 GiB      bilm-tf's 1B Word vocabulary is 6.8 MiB (793 471
                                    words); 1 GiB holds about 100 million words
=======================  =========  ==================================================

Text is read a line at a time, and one line of an input or a training corpus may hold at
most ``LINE_CAP`` (16 MiB): a sentence a line, so a longer one is a file of another kind
(or no line breaks at all), refused naming the file and line before it fills memory.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from elmo.errors import ElmoError

__all__ = [
    "LINE_CAP",
    "MANIFEST_CAP",
    "OPTIONS_CAP",
    "VOCAB_CAP",
    "check_regular_file",
    "parse_json",
    "read_bytes_capped",
    "read_json_capped",
    "read_text_capped",
]

OPTIONS_CAP = 16 * 2**20
MANIFEST_CAP = 64 * 2**20
VOCAB_CAP = 2**30
LINE_CAP = 16 * 2**20  # characters (bytes when read as bytes) in one line of text

PathLike = str | os.PathLike[str]


def _size(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n} bytes"


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _open_regular(path: Path, what: str, error: type[Exception]) -> tuple[int, os.stat_result]:
    """An open descriptor of the regular file ``path`` and its status, or one ``error``."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; the mode check follows.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise error(f"{path}: is a directory; expected the {what}") from None
    except OSError as e:
        raise error(f"{path}: cannot open the {what}: {e.strerror or e}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise error(f"{path}: is {_kind(info.st_mode)}; expected the {what} as a regular file")
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    return fd, info


def check_regular_file(path: PathLike, what: str, error: type[Exception] = ElmoError) -> None:
    """Raise one ``error`` naming ``path`` unless it is a regular file this process can open
    for reading: for readers (``h5py``) whose own messages do not say what is wrong."""
    fd, _ = _open_regular(Path(path), what, error)
    os.close(fd)


def read_bytes_capped(path: PathLike, cap: int, what: str, error: type[Exception] = ElmoError) -> bytes:
    """The content of the regular file ``path``, at most ``cap`` bytes.

    ``what`` names the file in messages (``"options file"``); ``error`` is the exception
    class raised, with one line naming the path: for a missing or unreadable file, a
    directory, FIFO or device, and a file over ``cap`` bytes. A FIFO is never read, so it
    cannot hang the caller.
    """
    path = Path(path)
    fd, info = _open_regular(path, what, error)
    with os.fdopen(fd, "rb") as f:
        if info.st_size > cap:
            raise error(f"{path}: {what} of {_size(info.st_size)}, larger than the {_size(cap)} allowed")
        try:
            data = f.read(cap + 1)
        except OSError as e:
            raise error(f"{path}: cannot read the {what}: {e.strerror or e}") from None
    if len(data) > cap:
        raise error(f"{path}: {what} larger than the {_size(cap)} allowed")
    return data


def read_text_capped(path: PathLike, cap: int, what: str, error: type[Exception] = ElmoError) -> str:
    """:func:`read_bytes_capped` decoded as UTF-8 (a byte order mark dropped); text that is
    not UTF-8 is refused naming the byte offset."""
    data = read_bytes_capped(path, cap, what, error)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise error(f"{path}: {what} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def parse_json(text: str, source: str, error: type[Exception] = ElmoError) -> Any:
    """``json.loads`` whose every failure is one ``error`` naming ``source``: bad syntax (with
    the line and column), nesting too deep for the parser, integers too long to convert."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{source}: not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None
    except RecursionError:
        raise error(f"{source}: JSON nested too deeply") from None
    except ValueError as e:  # e.g. an integer of more digits than Python converts
        raise error(f"{source}: not valid JSON: {' '.join(str(e).split())}") from None


def read_json_capped(path: PathLike, cap: int, what: str, error: type[Exception] = ElmoError) -> Any:
    """The JSON value in the file ``path`` (see :func:`read_text_capped` and :func:`parse_json`)."""
    return parse_json(read_text_capped(path, cap, what, error), str(path), error)
