"""Embedding a text file (one whitespace-tokenized sentence a line) into HDF5.

The output has the layout the old ``allennlp elmo`` command wrote, so existing readers
keep working: one dataset per input line, named by its 0-based line number as a string,
and a ``sentence_to_index`` dataset holding a JSON object from sentence to that name (a
repeated sentence maps to its last line, as AllenNLP's dictionary did). The root group
has the attribute ``elmo_embed``, the mark ``overwrite`` looks for.

This is the one writer of such files: ``elmo embed`` and
:meth:`elmo.allennlp.ElmoEmbedder.embed_file` (through :class:`EmbedJob`'s options) both
write through :func:`write_embeddings`.

- **Streams.** The input is read once, line by line: a pipe, ``-``, ``/dev/stdin``, a
  FIFO or an open file object work like a file. Only a regular file is read a second
  time, beforehand, to count its lines for the progress total (and, with
  ``blank_lines="refuse"``, to find blank lines before any work). A UTF-8 byte-order mark
  at the start is dropped; a line that is not UTF-8 stops the run, naming the line.
- **Resumable.** Work goes into ``OUTPUT.partial/``: shard files, each written under a
  temporary name and renamed when complete, and a manifest recording for every shard its
  SHA-256 and the SHA-256 of the input lines read so far. OUTPUT is published (renamed
  into place) only when every line is embedded, so it either does not exist or is
  complete. ``resume=True`` checks the shards (a damaged one is named and redone, with
  everything after it) and re-reads the lines already done, refusing to continue if
  their digest differs (another input, or the same file rewritten).
- **Never destroys.** OUTPUT may not be the input (compared by device and inode, so links
  count); ``overwrite`` replaces only an output of this writer (the ``elmo_embed``
  attribute) and only a partial folder it made (its ``made-by-elmo-embed`` file). An
  exclusive lock on ``OUTPUT.partial/lock`` makes a second run on the same OUTPUT fail at
  once, naming the process that holds it.
- **Failures.** An I/O error (a full disk, ...) is reported as one line naming the path
  and the errno. After any failure or interruption the temporary files are removed; the
  completed shards stay for ``resume`` (``keep_partial``, the default; a partial folder
  with nothing completed is removed), or everything is removed (``keep_partial=False``).
- **Memory.** Shards are embedded and merged one at a time; ``sentence_to_index`` is
  collected in an SQLite file in the partial folder and assembled on disk, so what grows
  with the input is HDF5's own bookkeeping of the output's datasets (about 0.2 kB a
  line) and the one JSON string while it is stored.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import itertools
import json
import os
import re
import shutil
import socket
import sqlite3
import stat
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, Protocol

import h5py
import numpy as np
import torch

from elmo.atomic import atomic_path, publish, write_json_atomic
from elmo.choices import FILE_LAYERS, STORE_DTYPES, FileLayers, StoreDtype, check_choice
from elmo.embedder import TokenEmbedder, embed_iter
from elmo.errors import ConfigurationError, EmbedFileError
from elmo.files import LINE_CAP, MANIFEST_CAP, read_bytes_capped
from elmo.model import LayerState

try:
    import fcntl
except ImportError:  # not POSIX: no lock (a second run on one OUTPUT is then not refused)
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "FILE_LAYERS",
    "OUTPUT_MARK",
    "EmbedFileError",
    "EmbedJob",
    "FileEmbedder",
    "LineModel",
    "Progress",
    "SentenceIndex",
    "embed_file",
    "small_metadata_cache",
    "write_embeddings",
]

_MANIFEST = "manifest.json"
_MARKER = "made-by-elmo-embed"
_LOCK = "lock"
_INDEX = "sentences.sqlite"
_FORMAT_VERSION = 2
OUTPUT_MARK = "elmo_embed"  # attribute of the root group of every output this writer made
_BOM = "\ufeff"


class FileEmbedder(TokenEmbedder, Protocol):
    """What embedding a file needs of a model (:class:`elmo.ElmoModule` is one): the
    sentence embedder, plus what identifies it and its carried state for resuming."""

    @property
    def precision(self) -> str: ...

    @property
    def device(self) -> torch.device: ...

    carried_state: list[LayerState] | None

    def reset_state(self) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...


class LineModel(Protocol):
    """What :func:`write_embeddings` needs of a model: arrays for token lists, in order,
    plus what identifies the model and its carried state (stateful mode) for resuming."""

    @property
    def stateful(self) -> bool: ...

    def identity(self) -> str: ...

    def embed(self, tokens: list[list[str]]) -> Iterable[np.ndarray]: ...

    def get_state(self) -> list[LayerState] | None: ...

    def set_state(self, state: list[LayerState] | None) -> None: ...


@dataclass
class EmbedJob:
    """What ``elmo embed`` was asked to do.

    The last five fields serve :meth:`elmo.allennlp.ElmoEmbedder.embed_file` (AllenNLP
    0.9's behaviour): ``sentence_keys`` names each dataset by its sentence (a repeated
    one is refused) and writes no ``sentence_to_index``; ``blank_lines="refuse"`` refuses
    blank lines (:class:`elmo.errors.ConfigurationError` naming their 0-based indexes);
    ``reset_state=False`` keeps the model's carried state from before; ``keep_partial=False``
    removes all partial work on failure; ``overwrite_foreign`` replaces OUTPUT even if this
    writer did not make it (never the input).
    """

    input: str | IO[Any]  # a path, "-" for standard input, or an open file (left open)
    output: Path
    layers: FileLayers = "all"
    batch_size: int = 64
    store_dtype: StoreDtype = "float32"  # type of the stored arrays
    encoding_errors: str = "strict"
    resume: bool = False
    overwrite: bool = False
    forget_sentences: bool = False
    shard_size: int = 2048  # lines per shard (rounded to whole batches)
    sentence_keys: bool = False
    blank_lines: Literal["embed", "refuse"] = "embed"
    reset_state: bool = True
    keep_partial: bool = True
    overwrite_foreign: bool = False


@dataclass
class Progress:
    """Callbacks the caller gets: ``start(total_lines or None, lines_done)``,
    ``advance(lines, tokens)``, ``finish()``, and ``warn(text)`` for things worth telling
    (a damaged shard that is redone)."""

    start: Callable[[int | None, int], None] = lambda total, done: None
    advance: Callable[[int, int], None] = lambda lines, tokens: None
    finish: Callable[[], None] = lambda: None
    warn: Callable[[str], None] = field(default=lambda text: warnings.warn(text, stacklevel=3))


def _partial_dir(output: Path) -> Path:
    return output.with_name(output.name + ".partial")


def model_identity(config: Any, tensors: Iterable[torch.Tensor], precision: str) -> str:
    """A digest of a model's options, weights and precision, to refuse resuming with another."""
    digest = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode())
    digest.update(precision.encode())
    for tensor in tensors:
        flat = tensor.detach().reshape(-1)
        # a sample of every tensor is enough to tell models apart, and cheap
        digest.update(flat[:: max(1, flat.numel() // 4096)].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:32]


class _ModuleLines:
    """:class:`LineModel` for an :class:`elmo.ElmoModule` (``elmo embed``)."""

    def __init__(self, module: FileEmbedder, layers: FileLayers, batch_size: int) -> None:
        self.module, self.layers, self.batch_size = module, layers, batch_size

    @property
    def stateful(self) -> bool:
        return self.module.stateful

    def identity(self) -> str:
        return model_identity(self.module.config, self.module.state_dict().values(), self.module.precision)

    def embed(self, tokens: list[list[str]]) -> Iterable[np.ndarray]:
        return embed_iter(self.module, tokens, self.layers, self.batch_size)

    def get_state(self) -> list[LayerState] | None:
        return self.module.carried_state

    def set_state(self, state: list[LayerState] | None) -> None:
        if state is None:
            self.module.reset_state()
        else:
            self.module.carried_state = [
                LayerState(**{k: t.to(self.module.device) for k, t in vars(s).items()}) for s in state
            ]


# --------------------------------------------------------------------------- errors


def _errno_of(e: Exception) -> int | None:
    if isinstance(e, OSError) and e.errno:
        return e.errno
    # h5py puts the C library's errno into the message text only
    found = re.search(r"errno = (\d+)", str(e))
    return int(found.group(1)) if found else None


def _io_error(e: Exception, path: Path | str) -> EmbedFileError:
    code = _errno_of(e)
    if code:
        name = errno.errorcode.get(code, str(code))
        return EmbedFileError(f"{path}: {os.strerror(code)} ({name})")
    return EmbedFileError(f"{path}: {' '.join(str(e).split())}")


class _Where:
    """The path being read or written, for the one-line message of an I/O error."""

    path: Path | str = ""


# --------------------------------------------------------------------------- input


class _Input:
    """The input, read once as a stream of lines; its SHA-256 follows the lines read."""

    def __init__(self, source: str | IO[Any], encoding_errors: str) -> None:
        self.source = source
        self.encoding_errors = encoding_errors
        if isinstance(source, str):
            self.name = "<stdin>" if source == "-" else source
        else:
            self.name = str(getattr(source, "name", "<input>"))
        self.digest = hashlib.sha256()
        self.line_no = 0
        self.regular = False

    def stat(self) -> os.stat_result | None:
        """The input's status (no reading), with the errors a missing input gives."""
        try:
            if self.source == "-":
                st = os.fstat(sys.stdin.fileno())
            elif isinstance(self.source, str):
                st = os.stat(self.source)
            else:
                st = os.fstat(self.source.fileno())
        except FileNotFoundError:
            raise EmbedFileError(f"{self.name}: input file not found") from None
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            return None
        if stat.S_ISDIR(st.st_mode):
            raise EmbedFileError(f"{self.name}: is a directory, expected a text file")
        self.regular = isinstance(self.source, str) and self.source != "-" and stat.S_ISREG(st.st_mode)
        return st

    @contextlib.contextmanager
    def open(self) -> Iterator[IO[Any]]:
        if not isinstance(self.source, str):
            yield self.source  # the caller's: left open
            return
        if self.source == "-":
            yield sys.stdin.buffer
            return
        try:
            stream = open(self.source, "rb")  # noqa: SIM115 (closed by the with below)
        except FileNotFoundError:
            raise EmbedFileError(f"{self.name}: input file not found") from None
        except IsADirectoryError:
            raise EmbedFileError(f"{self.name}: is a directory, expected a text file") from None
        except OSError as e:
            raise EmbedFileError(f"{self.name}: cannot read input: {e.strerror}") from None
        with stream:
            yield stream

    def raw_lines(self, stream: IO[Any]) -> Iterator[bytes | str]:
        """Undecoded lines (bytes, or str from a text stream), counted and digested."""
        while True:
            raw = stream.readline(LINE_CAP + 1)
            if not raw:
                return
            self.line_no += 1
            if len(raw) > LINE_CAP:
                raise EmbedFileError(
                    f"{self.name}: line {self.line_no}: longer than {LINE_CAP // 2**20} MiB; "
                    "expected one sentence a line"
                )
            self.digest.update(raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw)
            yield raw

    def decode(self, raw: bytes | str, line_no: int) -> str:
        """A line's text, stripped; the byte-order mark of line 1 dropped."""
        if isinstance(raw, bytes):
            try:
                text = raw.decode("utf-8", self.encoding_errors)
            except UnicodeDecodeError as e:
                raise EmbedFileError(
                    f"{self.name}: line {line_no}: not valid UTF-8 ({e.reason} at byte {e.start}); "
                    "pass --encoding-errors replace to substitute U+FFFD"
                ) from None
        else:
            text = raw
        if line_no == 1 and text.startswith(_BOM):
            text = text[1:]
        return text.strip()

    def lines(self, raws: Iterator[bytes | str]) -> Iterator[str]:
        for raw in raws:
            yield self.decode(raw, self.line_no)

    def prescan(self, find_blank: bool) -> int | None:
        """Lines of an input that can be read twice (a regular file, a seekable open file),
        read beforehand; None for a stream. With ``find_blank``, blank lines are refused."""
        if isinstance(self.source, str):
            if not self.regular:
                return None
            if not find_blank:
                return _count_lines(self.source)
            with open(self.source, "rb") as f:
                return self._scan(f)
        seekable = getattr(self.source, "seekable", None)
        if not (find_blank and seekable is not None and seekable()):
            return None
        start = self.source.tell()
        count = self._scan(self.source)
        self.source.seek(start)
        return count

    def _scan(self, stream: IO[Any]) -> int:
        scan = _Input(stream, self.encoding_errors)
        scan.name = self.name
        blank = [i for i, text in enumerate(scan.lines(scan.raw_lines(stream))) if not text]
        if blank:
            raise _blank_lines_error(blank)
        return scan.line_no


def _count_lines(path: str) -> int:
    count, last = 0, b"\n"
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            count += chunk.count(b"\n")
            last = chunk
    return count + (not last.endswith(b"\n"))


def _blank_lines_error(blank: list[int]) -> ConfigurationError:
    shown: list[Any] = blank if len(blank) <= 20 else [*blank[:20], "..."]
    return ConfigurationError(f"the input contains empty lines at indexes {shown}; remove them")


# --------------------------------------------------------------------------- output and partial folder


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _check_output(job: EmbedJob, source: _Input, input_stat: os.stat_result | None) -> None:
    output, partial = job.output, _partial_dir(job.output)
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.is_dir():
        raise EmbedFileError(f"{output}: the folder {parent} does not exist")
    if input_stat is not None:
        candidates = [output]
        if partial.is_dir():
            candidates += sorted(partial.iterdir())
        for candidate in candidates:
            with contextlib.suppress(OSError):
                if _same_file(os.stat(candidate), input_stat):
                    raise EmbedFileError(
                        f"{output}: is the input {source.name} (the same file"
                        f"{'' if candidate == output else ' as ' + str(candidate)}); "
                        "choose another output path"
                    )
    if not (output.exists() or output.is_symlink()):
        return
    if output.is_dir():
        raise EmbedFileError(f"{output}: is a directory, expected an HDF5 file path")
    if not job.overwrite:
        raise EmbedFileError(f"{output}: already exists; pass --overwrite to replace it")
    if not job.overwrite_foreign and not _is_our_output(output):
        raise EmbedFileError(
            f"{output}: exists and was not written by elmo embed (no {OUTPUT_MARK} attribute); "
            "--overwrite replaces only its own outputs: remove or rename the file yourself"
        )


def _is_our_output(path: Path) -> bool:
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
        with h5py.File(path, "r") as f:
            return OUTPUT_MARK in f.attrs
    except (OSError, ValueError):
        return False


class _Lock:
    """An exclusive, non-blocking lock on ``OUTPUT.partial/lock``, naming its holder."""

    def __init__(self, partial: Path) -> None:
        self.partial = partial
        self.path = partial / _LOCK
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(self.fd, 4096, 0).decode("utf-8", "replace").strip() or "a process"
            os.close(self.fd)
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise EmbedFileError(
                    f"{partial}: in use by another elmo embed run ({holder}); wait for it to end or stop it"
                ) from None
            raise
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"pid {os.getpid()} on {socket.gethostname()} since {started}\n".encode(), 0)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing drops the lock
            self.fd = -1


def _read_manifest(partial: Path) -> dict | None:
    """The manifest in ``partial``, or None when there is none or it is not JSON."""
    path = partial / _MANIFEST
    if not path.exists():
        return None
    data = read_bytes_capped(path, MANIFEST_CAP, "manifest of elmo embed", EmbedFileError)
    try:
        manifest = json.loads(data)
    except ValueError:
        return None
    return manifest if isinstance(manifest, dict) else None


def _well_formed(manifest: dict) -> bool:
    """The fields a resumed run reads, with their types (anything else: not resumable)."""
    fields = {"name": str, "first_line": int, "lines": int, "tokens": int, "sha256": str, "input_sha256": str}
    shards = manifest.get("shards")
    return (
        isinstance(manifest.get("lines_done"), int)
        and isinstance(manifest.get("tokens_done"), int)
        and isinstance(manifest.get("input_sha256"), str)
        and isinstance(shards, list)
        and all(isinstance(e, dict) for e in shards)
        and all(isinstance(e.get(k), t) for e in shards for k, t in fields.items())
        and all(re.fullmatch(r"shard-\d{6}\.hdf5", e["name"]) for e in shards)
    )


def _made_by_us(partial: Path) -> bool:
    if (partial / _MARKER).is_file():
        return True
    manifest = _read_manifest(partial)  # a partial folder of an earlier version: no marker
    return manifest is not None and "format" in manifest and "lines_done" in manifest


def _clear(partial: Path) -> None:
    """Everything in the partial folder but the lock (which this run holds)."""
    for entry in partial.iterdir():
        if entry.name == _LOCK:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _acquire(job: EmbedJob) -> tuple[Path, _Lock, bool]:
    """Create or lock the partial folder; whether it held earlier work."""
    partial = _partial_dir(job.output)
    try:
        partial.mkdir()
        existed = False
    except FileExistsError:
        if not partial.is_dir():
            raise EmbedFileError(f"{partial}: exists and is not a folder; remove it yourself") from None
        existed = True
    except OSError as e:
        raise _io_error(e, partial) from None
    lock_existed = (partial / _LOCK).exists()
    try:
        lock = _Lock(partial)
    except OSError as e:
        raise _io_error(e, partial / _LOCK) from None
    if existed and not _made_by_us(partial) and any(p.name != _LOCK for p in partial.iterdir()):
        lock.release()
        if not lock_existed:
            (partial / _LOCK).unlink(missing_ok=True)
        raise EmbedFileError(
            f"{partial}: exists and was not made by elmo embed (no {_MARKER} file); remove or "
            "rename it yourself"
        )
    return partial, lock, existed and any(p.name != _LOCK for p in partial.iterdir())


def _prepare(job: EmbedJob, base: dict, partial: Path, had_work: bool) -> dict:
    """The manifest to continue from: the interrupted run's (``resume``), or a new one."""
    if had_work and job.resume:
        manifest = _read_manifest(partial)
        if manifest is None:
            raise EmbedFileError(
                f"{partial}: no readable {_MANIFEST}; cannot resume (pass --overwrite to start over)"
            )
        for key, value in base.items():
            if key == "encoding_errors":
                continue
            if manifest.get(key) != value:
                raise EmbedFileError(
                    f"cannot resume {partial}: its {key} was {json.dumps(manifest.get(key))}, "
                    f"now {json.dumps(value)}; rerun with the same arguments, or --overwrite to start over"
                )
        if not _well_formed(manifest):
            raise EmbedFileError(
                f"{partial / _MANIFEST}: damaged (a field is missing or of the wrong type); cannot "
                "resume (pass --overwrite to start over)"
            )
        for leftover in partial.glob("*.tmp"):
            leftover.unlink()
        for leftover in partial.glob(".*.tmp"):
            leftover.unlink()
        return manifest
    if had_work:
        if not job.overwrite:
            raise EmbedFileError(
                f"{partial}: an interrupted run is in the way; pass --resume to continue it "
                "or --overwrite to start over"
            )
        _clear(partial)
    (partial / _MARKER).write_text("a partial run of elmo embed; --resume continues it\n", encoding="utf-8")
    manifest = dict(base, lines_done=0, tokens_done=0, input_sha256=hashlib.sha256().hexdigest(), shards=[])
    write_json_atomic(partial / _MANIFEST, manifest)
    return manifest


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _verify_shards(partial: Path, manifest: dict, progress: Progress) -> None:
    """Drop the first damaged or missing shard and every one after it (they are redone)."""
    shards = manifest["shards"]
    for k, entry in enumerate(shards):
        path = partial / entry["name"]
        try:
            ok = _file_sha256(path) == entry["sha256"]
        except OSError:
            ok = False
        if ok:
            continue
        progress.warn(
            f"{path}: damaged or missing (its SHA-256 is not the manifest's); redoing from line "
            f"{entry['first_line'] + 1}"
        )
        for later in shards[k:]:
            (partial / later["name"]).unlink(missing_ok=True)
        del shards[k:]
        manifest["lines_done"] = entry["first_line"]
        manifest["tokens_done"] = sum(s["tokens"] for s in shards)
        manifest["input_sha256"] = shards[-1]["input_sha256"] if shards else hashlib.sha256().hexdigest()
        write_json_atomic(partial / _MANIFEST, manifest)
        return


# --------------------------------------------------------------------------- sentence index


class SentenceIndex:
    """Sentences seen so far, on disk: sentence -> (first line, last line).

    ``sentence_to_index`` keeps AllenNLP's dictionary order and values: sentences in the
    order they first appear, each mapped to the last line holding it. With sentence keys,
    a repeated sentence is refused instead.
    """

    def __init__(self, path: Path, unique: bool) -> None:
        path.unlink(missing_ok=True)  # rebuilt from the shards on resume
        self.db = sqlite3.connect(path)
        self.db.execute("PRAGMA journal_mode=OFF")
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.execute("CREATE TABLE s (sentence TEXT PRIMARY KEY, first INTEGER, last INTEGER)")
        self.unique = unique

    def add(self, sentences: list[str], first_line: int) -> None:
        rows = ((s, first_line + i, first_line + i) for i, s in enumerate(sentences))
        if not self.unique:
            upsert = "INSERT INTO s VALUES (?, ?, ?) ON CONFLICT(sentence) DO UPDATE SET last = excluded.last"
            self.db.executemany(upsert, rows)
        else:
            for sentence, line, _ in rows:
                try:
                    self.db.execute("INSERT INTO s VALUES (?, ?, ?)", (sentence, line, line))
                except sqlite3.IntegrityError:
                    self.db.rollback()
                    raise ConfigurationError(
                        f"line {line + 1}: the sentence {sentence!r:.80} is already in the output; to "
                        "embed repeated sentences, do not use sentence keys"
                    ) from None
        self.db.commit()

    def write_json(self, path: Path) -> None:
        """``json.dumps`` of the dictionary, written piece by piece."""
        with open(path, "w", encoding="ascii") as f:
            f.write("{")
            cursor = self.db.execute("SELECT sentence, last FROM s ORDER BY first")
            for k, (sentence, last) in enumerate(cursor):
                f.write(f"{', ' if k else ''}{json.dumps(sentence)}: {json.dumps(str(last))}")
            f.write("}")

    def close(self) -> None:
        self.db.close()


# --------------------------------------------------------------------------- shards and merge


def _state_to_h5(group: h5py.Group, state: list[LayerState] | None) -> None:
    if state is None:
        return
    for k, layer in enumerate(state):
        for name, tensor in vars(layer).items():
            group[f"state/{k}/{name}"] = tensor.detach().cpu().numpy()


def _state_from_h5(path: Path) -> list[LayerState] | None:
    with h5py.File(path, "r") as f:
        if "state" not in f:
            return None
        group = f["state"]
        return [
            LayerState(**{name: torch.from_numpy(group[f"{k}/{name}"][()]) for name in group[str(k)]})
            for k in range(len(group))
        ]


# Room HDF5 may need beyond the arrays: an object header and a link per dataset, and
# the file's own structures. An upper bound, as _reserve needs.
_PER_DATASET = 1024
_PER_FILE = 16 * 1024


def _reserve(path: Path, nbytes: int) -> None:
    """Make sure ``nbytes`` more can be written beside ``path`` before HDF5 writes them.

    HDF5 does not survive a failed write (it leaves the file open in a broken state and
    the process may crash later), so a full disk, a quota or a file size limit is found
    here instead, as a plain :class:`OSError` from allocating (not writing) a scratch file.
    """
    if not hasattr(os, "posix_fallocate"):  # macOS, Windows: HDF5 writes as it can
        return
    scratch = path.with_name(".reserve.tmp")
    try:
        fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.posix_fallocate(fd, 0, max(1, nbytes))
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise  # else the file system cannot tell in advance; HDF5 writes as it can
        finally:
            os.close(fd)
    finally:
        scratch.unlink(missing_ok=True)


def _shard_bytes(first: np.ndarray, tokens: list[list[str]], sentences: list[str], itemsize: int) -> int:
    """An upper bound of a shard file's size, from the shape of its first array."""
    shape = first.shape
    if len(shape) >= 2:  # [..., n, D]: sized by the number of tokens
        per_token = int(np.prod(shape[:-2], dtype=np.int64)) * shape[-1] * itemsize
        data = per_token * sum(len(t) for t in tokens)
    else:
        data = int(np.prod(shape, dtype=np.int64)) * itemsize * len(tokens)
    text = sum(len(s.encode("utf-8", "surrogatepass")) + 16 for s in sentences)
    return data + text + _PER_DATASET * (len(sentences) + 32) + _PER_FILE


def _write_shard(
    model: LineModel, job: EmbedJob, sentences: list[str], first_line: int, path: Path, progress: Progress
) -> int:
    dtype = np.float16 if job.store_dtype == "float16" else np.float32
    tokens = [s.split() for s in sentences]
    arrays = iter(model.embed(tokens))
    first = next(arrays, None)
    if first is None:
        raise RuntimeError(f"the model gave no embedding for line {first_line + 1}")
    _reserve(path, _shard_bytes(first, tokens, sentences, np.dtype(dtype).itemsize))
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for offset, array in enumerate(itertools.chain([first], arrays)):
            f.create_dataset(str(first_line + offset), data=array.astype(dtype, copy=False))
            progress.advance(1, len(tokens[offset]))
        f.create_dataset("lines", data=np.array(sentences, dtype=object), dtype=h5py.string_dtype())
        f.attrs["first_line"] = first_line
        _state_to_h5(f, model.get_state() if model.stateful and job.keep_partial else None)
    return sum(len(t) for t in tokens)


def _shard_lines(path: Path) -> tuple[int, list[str]]:
    with h5py.File(path, "r") as shard:
        return int(shard.attrs["first_line"]), list(shard["lines"].asstr()[()])


_CACHE_BYTES = 1 << 20


def small_metadata_cache(f: h5py.File) -> None:
    """Hold ``f``'s HDF5 metadata cache at 1 MiB. Left alone, it grows with the number of
    datasets in a file (its limit counts on-disk bytes; the parsed headers it keeps take
    several times that), which made the merge grow by about 0.2 kB per line. Only memory
    changes: the file's content and format stay as they were."""
    config = f.id.get_mdc_config()
    config.set_initial_size = True
    config.initial_size = _CACHE_BYTES
    config.max_size = _CACHE_BYTES
    config.min_size = _CACHE_BYTES // 4
    f.id.set_mdc_config(config)


def _merge(partial: Path, manifest: dict, job: EmbedJob, index: SentenceIndex | None, where: _Where) -> None:
    # Written inside the partial folder, so that a killed merge leaves nothing beside OUTPUT.
    final = partial / "final.hdf5.tmp"
    text = partial / "sentence_to_index.json.tmp"
    where.path = text
    if index is not None and not job.sentence_keys:
        index.write_json(text)
    where.path = final
    room = sum((partial / entry["name"]).stat().st_size for entry in manifest["shards"])
    _reserve(final, room + (text.stat().st_size if text.exists() else 0) + _PER_FILE)
    with h5py.File(final, "w") as out:
        small_metadata_cache(out)
        out.attrs[OUTPUT_MARK] = _FORMAT_VERSION
        for entry in manifest["shards"]:
            where.path = partial / entry["name"]
            with h5py.File(partial / entry["name"], "r") as shard:
                small_metadata_cache(shard)
                where.path = final  # copying: a failure is most likely a write
                first = int(shard.attrs["first_line"])
                lines = shard["lines"].asstr()[()] if job.sentence_keys else None
                for offset in range(entry["lines"]):
                    source = str(first + offset)
                    key = lines[offset] if lines is not None else source
                    try:
                        shard.copy(shard[source], out, name=key)
                    except (ValueError, TypeError, KeyError) as e:
                        if not job.sentence_keys:
                            raise
                        raise ConfigurationError(
                            f"line {first + offset + 1}: cannot store {key!r:.80} as an HDF5 dataset "
                            f"name ({e})"
                        ) from None
        where.path = final
        if text.exists():
            data = text.read_bytes()  # the one O(distinct lines) thing in memory
            text.unlink()
            dataset = out.create_dataset("sentence_to_index", (1,), dtype=h5py.string_dtype())
            dataset[0] = data
            del data
    where.path = job.output
    publish(final, job.output)


# --------------------------------------------------------------------------- the writer


def _check_job(job: EmbedJob) -> None:
    if job.layers not in FILE_LAYERS:
        raise EmbedFileError(f"--layers: expected one of {', '.join(FILE_LAYERS)}, found {job.layers!r}")
    check_choice("store_dtype", job.store_dtype, STORE_DTYPES)
    for name in ("batch_size", "shard_size"):
        value = getattr(job, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive integer, found {value!r}")


def embed_file(module: FileEmbedder, job: EmbedJob, progress: Progress | None = None) -> dict:
    """Run ``job`` with ``module``; returns a summary (lines, tokens, seconds)."""
    if job.layers not in FILE_LAYERS:
        raise EmbedFileError(f"--layers: expected one of {', '.join(FILE_LAYERS)}, found {job.layers!r}")
    return write_embeddings(_ModuleLines(module, job.layers, job.batch_size), job, progress)


def write_embeddings(model: LineModel, job: EmbedJob, progress: Progress | None = None) -> dict:
    """Embed ``job.input`` with ``model`` into ``job.output`` (see the module's docstring);
    returns a summary (lines, tokens, seconds, output)."""
    progress = progress or Progress()
    _check_job(job)
    source = _Input(job.input, job.encoding_errors)
    input_stat = source.stat()
    _check_output(job, source, input_stat)
    base = {
        "format": _FORMAT_VERSION,
        "input": os.path.abspath(str(job.input)) if source.regular else "-",
        "model": model.identity(),
        "layers": job.layers,
        "dtype": job.store_dtype,
        "stateful": model.stateful,
        "batch_size": job.batch_size if model.stateful else None,
        "forget_sentences": job.forget_sentences,
        "sentence_keys": job.sentence_keys,
        "encoding_errors": job.encoding_errors,
    }
    partial, lock, had_work = _acquire(job)
    where = _Where()
    where.path = partial
    index: SentenceIndex | None = None
    manifest: dict | None = None  # set once the partial folder is this run's to change
    published = False
    try:
        try:
            manifest = _prepare(job, base, partial, had_work)
        except BaseException:
            if not had_work:  # nothing of value: the folder this call made, or an empty one
                shutil.rmtree(partial, ignore_errors=True)
            lock.release()  # an earlier run's work, refused: left as it is
            raise
        if manifest["shards"]:
            _verify_shards(partial, manifest, progress)
        total = source.prescan(job.blank_lines == "refuse")
        start = time.perf_counter()
        done = manifest["lines_done"]
        if model.stateful:
            if manifest["shards"]:
                model.set_state(_state_from_h5(partial / manifest["shards"][-1]["name"]))
            elif job.reset_state:
                model.set_state(None)
        if not job.forget_sentences or job.sentence_keys:
            index = SentenceIndex(partial / _INDEX, unique=job.sentence_keys)
            for entry in manifest["shards"]:
                where.path = partial / entry["name"]
                first, lines = _shard_lines(partial / entry["name"])
                index.add(lines, first)
        # Stateful results depend on the batching, so shards hold whole batches.
        shard_size = max(job.batch_size, job.shard_size // job.batch_size * job.batch_size)
        progress.start(total, done)
        with source.open() as stream:
            raws = source.raw_lines(stream)
            where.path = source.name
            if done:
                skipped = sum(1 for _ in itertools.islice(raws, done))
                if skipped < done or source.digest.hexdigest() != manifest["input_sha256"]:
                    raise EmbedFileError(
                        f"cannot resume {partial}: the first {done} lines of {source.name} are not those "
                        "of the interrupted run (their SHA-256 differs); give the same input, or "
                        "--overwrite to start over"
                    )
            texts = source.lines(raws)
            while True:
                where.path = source.name
                chunk = list(itertools.islice(texts, shard_size))
                if not chunk:
                    break
                if job.blank_lines == "refuse":
                    blank = [done + i for i, sentence in enumerate(chunk) if not sentence]
                    if blank:
                        raise _blank_lines_error(blank)
                if index is not None:
                    where.path = partial / _INDEX
                    index.add(chunk, done)
                name = f"shard-{len(manifest['shards']):06d}.hdf5"
                where.path = partial / name
                tokens = _write_shard(model, job, chunk, done, partial / name, progress)
                entry = {
                    "name": name,
                    "first_line": done,
                    "lines": len(chunk),
                    "tokens": tokens,
                    "sha256": _file_sha256(partial / name),
                    "input_sha256": source.digest.hexdigest(),
                }
                done += len(chunk)
                manifest["shards"].append(entry)
                manifest["lines_done"] = done
                manifest["tokens_done"] += tokens
                manifest["input_sha256"] = entry["input_sha256"]
                where.path = partial / _MANIFEST
                write_json_atomic(partial / _MANIFEST, manifest)
        _merge(partial, manifest, job, index, where)
        published = True
    except OSError as e:
        raise _io_error(e, where.path) from None
    except sqlite3.Error as e:  # the sentence index: a full disk is SQLITE_FULL, no errno
        name = getattr(e, "sqlite_errorname", type(e).__name__)
        raise EmbedFileError(f"{where.path}: {e} ({name})") from None
    except RuntimeError as e:  # what h5py raises for some failed writes (a full disk, ...)
        if _errno_of(e) is None:
            raise
        raise _io_error(e, where.path) from None
    finally:
        if index is not None:
            index.close()
        keep = not published and job.keep_partial and bool(manifest and manifest["shards"])
        with contextlib.suppress(OSError):
            if manifest is None:
                pass
            elif keep:  # the completed shards stay for --resume; nothing temporary does
                for leftover in [*partial.glob("*.tmp"), *partial.glob(".*.tmp"), partial / _INDEX]:
                    leftover.unlink(missing_ok=True)
            else:
                shutil.rmtree(partial, ignore_errors=True)
        lock.release()
    progress.finish()
    assert manifest is not None
    return {
        "lines": done,
        "tokens": manifest["tokens_done"],
        "seconds": round(time.perf_counter() - start, 3),
        "output": str(job.output),
    }
