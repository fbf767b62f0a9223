"""The files of ``elmo embed-corpus``: the plan of shards, the shards, the manifest, the reader.

Nothing here needs Ray (that is :mod:`elmo.ray`); pyarrow is imported only where Parquet
is read or written.

An output folder holds ``manifest.json`` (what was asked, the input files, and the shards)
and, for ``--format parquet``, one Parquet file per shard at
``shards/<input path>/<first line>-<end line>.parquet``: the input's path relative to the
inputs' common folder, and its 0-based line range ``[first, end)``. So a shard's name
follows from the input alone, whatever the number of workers, and a re-run finds the
shards that are done by name. A shard file is written under a temporary name and renamed
when whole (:mod:`elmo.atomic`), so it exists only when complete. ``--format hdf5`` writes
the shards as HDF5 parts and merges each input file's parts into
``<input path>.hdf5``, in the layout of ``elmo embed``. (The parts are in ``.parts/``.)

A Parquet shard's columns: ``source`` (the input path as above), ``line`` (0-based),
``tokens`` (list of strings), ``embedding`` (the array flattened, float32 or float16) and
``shape`` (its shape: ``[3, n, D]`` for ``--layers all``, ``[n, D]`` for ``top``...).
"""

from __future__ import annotations

import glob
import io
import json
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np

from elmo.atomic import atomic_path, write_json_atomic
from elmo.choices import FILE_LAYERS, STORE_DTYPES, FileLayers, StoreDtype, check_choice
from elmo.embedder import WINDOW_BATCHES, TokenEmbedder, embed_iter
from elmo.embedfile import SentenceIndex, small_metadata_cache
from elmo.errors import CorpusError

__all__ = [
    "MANIFEST",
    "CorpusFile",
    "CorpusJob",
    "CorpusPlan",
    "OutputFormat",
    "Shard",
    "compute_shard",
    "finish_corpus",
    "finish_file",
    "plan_corpus",
    "read_embeddings",
    "read_shard_lines",
    "shard_record",
]

MANIFEST = "manifest.json"
_KIND = "elmo embed-corpus"
_VERSION = 1
OutputFormat = Literal["parquet", "hdf5"]
FORMATS: tuple[OutputFormat, ...] = ("parquet", "hdf5")
_PARTS = ".parts"  # HDF5 shards, until their input file's are merged


@dataclass
class CorpusJob:
    """What ``elmo embed-corpus`` was asked to do (the model aside)."""

    patterns: Sequence[str]
    out_dir: Path
    layers: FileLayers = "all"
    store_dtype: StoreDtype = "float32"
    format: OutputFormat = "parquet"
    batch_size: int = 64
    shard_lines: int = 2048  # rounded up to whole windows of the embedder (see shard_size)
    resume: bool = False

    @property
    def shard_size(self) -> int:
        """Lines per shard: whole windows of ``elmo.embed`` (``batch_size`` × 16 sentences),
        so that every sentence meets the batch it meets in ``elmo embed``, and results are
        equal bit for bit whatever the engine."""
        window = self.batch_size * WINDOW_BATCHES
        return max(1, -(-self.shard_lines // window)) * window


@dataclass(frozen=True)
class Shard:
    """Lines ``[first, end)`` (bytes ``[start, stop)``) of one input file."""

    path: str  # the input file as the driver reads it
    source: str  # its name in the output: relative to the inputs' common folder
    first: int
    end: int
    start: int
    stop: int

    @property
    def name(self) -> str:
        return f"{self.source}/{self.first:010d}-{self.end:010d}"


@dataclass
class CorpusFile:
    path: str
    source: str
    size: int
    mtime_ns: int
    lines: int


@dataclass
class CorpusPlan:
    job: CorpusJob
    files: list[CorpusFile]
    shards: list[Shard]
    done: set[str] = field(default_factory=set)  # shard names complete before this run
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def todo(self) -> list[Shard]:
        return [s for s in self.shards if s.name not in self.done]


# --------------------------------------------------------------------------- the plan
def _find_inputs(patterns: Sequence[str]) -> list[tuple[str, str]]:
    """(path, source name) of every file the patterns match, sorted, without duplicates."""
    found: dict[str, str] = {}
    for pattern in patterns:
        matches = sorted(glob.glob(pattern, recursive=True))
        files = [m for m in matches if os.path.isfile(m)]
        if not files:
            what = "only folders" if matches else "no file"
            raise CorpusError(f"{pattern}: the pattern matches {what}; expected text files")
        for m in files:
            found.setdefault(os.path.realpath(m), m)
    paths = sorted(found)
    root = os.path.commonpath([os.path.dirname(p) for p in paths])
    return [(found[p], os.path.relpath(p, root)) for p in paths]


def _scan(path: str, source: str, shard_size: int) -> tuple[CorpusFile, list[Shard]]:
    """Count the lines of a file, check each decodes, and cut it into shards."""
    shards: list[Shard] = []
    line = start = offset = 0
    try:
        st = os.stat(path)
        with open(path, "rb") as f:
            for line, raw in enumerate(f, start=1):
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise CorpusError(
                        f"{path}: line {line}: not valid UTF-8 ({e.reason} at byte {e.start} of the line)"
                    ) from None
                offset += len(raw)
                if line % shard_size == 0:
                    shards.append(Shard(path, source, line - shard_size, line, start, offset))
                    start = offset
    except OSError as e:
        raise CorpusError(f"{path}: cannot read: {e.strerror}") from None
    if line % shard_size:
        shards.append(Shard(path, source, line - line % shard_size, line, start, offset))
    return CorpusFile(path, source, st.st_size, st.st_mtime_ns, line), shards


def _manifest_base(job: CorpusJob, model: dict[str, Any], files: list[CorpusFile]) -> dict[str, Any]:
    return {
        "kind": _KIND,
        "version": _VERSION,
        "format": job.format,
        "model": model,
        "layers": job.layers,
        "store_dtype": job.store_dtype,
        "batch_size": job.batch_size,
        "shard_size": job.shard_size,
        "files": [asdict(f) for f in files],
    }


def _our_manifest(out_dir: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((out_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("kind") == _KIND else None


def _output_path(out_dir: Path, shard: Shard, fmt: OutputFormat) -> Path:
    if fmt == "parquet":
        return out_dir / "shards" / f"{shard.name}.parquet"
    return out_dir / _PARTS / f"{shard.name}.hdf5"


def _hdf5_path(out_dir: Path, source: str) -> Path:
    return out_dir / f"{source}.hdf5"


def plan_corpus(job: CorpusJob, model: dict[str, Any]) -> CorpusPlan:
    """Find and scan the inputs, check the output folder, and write the manifest's plan.

    ``model``: what identifies the model (compared on ``resume``). Raises
    :class:`CorpusError` for a pattern without files, an unreadable or non-UTF-8 file (with
    its line), and an output folder holding other files or another job's output.
    """
    check_choice("layers", job.layers, FILE_LAYERS)
    check_choice("store_dtype", job.store_dtype, STORE_DTYPES)
    check_choice("format", job.format, FORMATS)
    if not job.patterns:
        raise CorpusError("no input pattern given")
    files, shards = [], []
    for path, source in _find_inputs(job.patterns):
        info, pieces = _scan(path, source, job.shard_size)
        files.append(info)
        shards += pieces
    clash = [f.source for f in files if f.source.split(os.sep)[0] == _PARTS]
    if job.format == "hdf5" and clash:
        raise CorpusError(f"{clash[0]}: an input folder named {_PARTS} clashes with the output's {_PARTS}")
    base = _manifest_base(job, model, files)
    out = job.out_dir
    done: set[str] = set()
    if out.exists() and not out.is_dir():
        raise CorpusError(f"{out}: is a file, expected an output folder")
    if out.is_dir() and any(out.iterdir()):
        manifest = _our_manifest(out)
        if manifest is None:
            example = sorted(p.name for p in out.iterdir())[0]
            raise CorpusError(
                f"{out}: holds files that are not an elmo embed-corpus output (e.g. {example}); "
                "give a new or empty folder"
            )
        if not job.resume:
            raise CorpusError(
                f"{out}: holds an earlier run; pass --resume to continue it, or give another folder"
            )
        for key, value in base.items():
            if manifest.get(key) != value:
                raise CorpusError(
                    f"cannot resume {out}: its {key} was {json.dumps(manifest.get(key))[:200]}, "
                    f"now {json.dumps(value)[:200]}; rerun with the same inputs and arguments"
                )
        for leftover in out.rglob(".*.tmp"):  # a worker killed while writing
            leftover.unlink(missing_ok=True)
        finished = {f.source for f in files if _hdf5_path(out, f.source).exists()}
        done = {
            s.name
            for s in shards
            if (job.format == "hdf5" and s.source in finished) or _output_path(out, s, job.format).exists()
        }
    else:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CorpusError(f"{out}: cannot create the output folder: {e.strerror}") from None
    manifest = dict(base, complete=False, shards=[s.name for s in shards])
    write_json_atomic(out / MANIFEST, manifest, indent=1)
    return CorpusPlan(job, files, shards, done, manifest)


# --------------------------------------------------------------------------- a worker's part
def read_shard_lines(shard: Shard) -> list[str]:
    """The stripped lines of a shard, read from its byte range."""
    try:
        with open(shard.path, "rb") as f:
            f.seek(shard.start)
            data = f.read(shard.stop - shard.start)
    except OSError as e:
        raise CorpusError(f"{shard.path}: cannot read: {e.strerror}") from None
    lines = []
    for k, raw in enumerate(io.BytesIO(data)):
        try:
            lines.append(raw.decode("utf-8").strip())
        except UnicodeDecodeError as e:
            raise CorpusError(
                f"{shard.path}: line {shard.first + k + 1}: not valid UTF-8 ({e.reason}); "
                "the file changed after it was scanned"
            ) from None
    if len(lines) != shard.end - shard.first:
        raise CorpusError(
            f"{shard.path}: lines {shard.first + 1}-{shard.end} changed after the file was scanned"
        )
    return lines


def compute_shard(
    module: TokenEmbedder, job: CorpusJob, shard: Shard, record: dict[str, Any]
) -> tuple[bool, int]:
    """Embed one shard and publish its file; ``(False, 0)`` if it is there already (a
    retried task). ``record`` (node, process...) goes into the file's metadata."""
    path = _output_path(job.out_dir, shard, job.format)
    if path.exists():
        return False, 0
    lines = read_shard_lines(shard)
    tokens = [line.split() for line in lines]
    dtype = np.float16 if job.store_dtype == "float16" else np.float32
    arrays = (a.astype(dtype, copy=False) for a in embed_iter(module, tokens, job.layers, job.batch_size))
    path.parent.mkdir(parents=True, exist_ok=True)
    if job.format == "parquet":
        _write_parquet(path, shard, tokens, list(arrays), record)
    else:
        with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
            for offset, array in enumerate(arrays):
                f.create_dataset(str(shard.first + offset), data=array)
            f.create_dataset("lines", data=np.array(lines, dtype=object), dtype=h5py.string_dtype())
            f.attrs["record"] = json.dumps(record)
    return True, sum(len(t) for t in tokens)


def _write_parquet(
    path: Path, shard: Shard, tokens: list[list[str]], arrays: list[np.ndarray], record: dict[str, Any]
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    def offsets(sizes: list[int]) -> pa.Array:
        return pa.array(np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int32))

    flat = np.concatenate([a.reshape(-1) for a in arrays]) if arrays else np.zeros(0, np.float32)
    all_tokens = [t for sentence in tokens for t in sentence]
    shapes = [s for a in arrays for s in a.shape]
    table = pa.table(
        {
            "source": pa.array([shard.source] * len(arrays), pa.string()),
            "line": pa.array(np.arange(shard.first, shard.end, dtype=np.int64)),
            "tokens": pa.ListArray.from_arrays(
                offsets([len(t) for t in tokens]), pa.array(all_tokens, pa.string())
            ),
            "embedding": pa.ListArray.from_arrays(offsets([a.size for a in arrays]), pa.array(flat)),
            "shape": pa.ListArray.from_arrays(
                offsets([a.ndim for a in arrays]), pa.array(np.array(shapes, dtype=np.int32))
            ),
        }
    )
    table = table.replace_schema_metadata({"elmo": json.dumps(record)})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def shard_record(out_dir: Path, shard_name: str, fmt: OutputFormat) -> dict[str, Any]:
    """The record (node, process, computation id) a shard's file was written with."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        metadata = pq.read_schema(out_dir / "shards" / f"{shard_name}.parquet").metadata or {}
        return dict(json.loads(metadata[b"elmo"]))
    with h5py.File(out_dir / _PARTS / f"{shard_name}.hdf5", "r") as f:
        return dict(json.loads(f.attrs["record"]))


def finish_file(out_dir: Path, info: CorpusFile, shards: list[Shard]) -> None:
    """Merge one input file's HDF5 parts into ``<source>.hdf5`` (``elmo embed``'s layout:
    one dataset per line named by its 0-based number, and ``sentence_to_index``)."""
    final = _hdf5_path(out_dir, info.source)
    final.parent.mkdir(parents=True, exist_ok=True)
    parts = [out_dir / _PARTS / f"{s.name}.hdf5" for s in shards]
    folder = (out_dir / _PARTS / info.source).resolve()
    folder.mkdir(parents=True, exist_ok=True)  # absent for an input without lines
    # sentence_to_index is gathered on disk, as elmo embed gathers it (same order, same values)
    index = SentenceIndex(folder / "sentence_to_index.sqlite", unique=False)
    text = folder / "sentence_to_index.json"
    try:
        with atomic_path(final) as tmp, h5py.File(tmp, "w") as out:
            small_metadata_cache(out)
            for shard, part in zip(shards, parts):
                with h5py.File(part, "r") as f:
                    small_metadata_cache(f)
                    lines = list(f["lines"].asstr()[()])
                    for offset in range(len(lines)):
                        key = str(shard.first + offset)
                        f.copy(f[key], out, name=key)
                    index.add(lines, shard.first)
            index.write_json(text)
            ds = out.create_dataset("sentence_to_index", (1,), dtype=h5py.string_dtype())
            ds[0] = text.read_bytes()
    finally:
        index.close()
        (folder / "sentence_to_index.sqlite").unlink(missing_ok=True)
        text.unlink(missing_ok=True)
    for part in parts:
        part.unlink(missing_ok=True)
    if folder.is_dir() and not any(folder.iterdir()):
        shutil.rmtree(folder, ignore_errors=True)


def finish_corpus(plan: CorpusPlan, computed: dict[str, dict[str, Any]]) -> None:
    """Once every shard is written: merge the HDF5 parts into one file per input (for
    ``--format hdf5``), and mark the manifest complete, with each shard's record (the
    ``computed`` ones of this run, the others read from their files)."""
    job, out = plan.job, plan.job.out_dir
    records = dict(computed)
    for info in plan.files:
        shards = [s for s in plan.shards if s.source == info.source]
        if job.format == "hdf5" and not _hdf5_path(out, info.source).exists():
            for s in shards:
                records.setdefault(s.name, shard_record(out, s.name, "hdf5"))
            finish_file(out, info, shards)
        elif job.format == "parquet":
            for s in shards:
                if s.name not in records:
                    records[s.name] = shard_record(out, s.name, "parquet")
    if job.format == "hdf5":
        shutil.rmtree(out / _PARTS, ignore_errors=True)
    lines = sum(f.lines for f in plan.files)
    manifest = dict(plan.manifest, complete=True, lines=lines, records=records)
    write_json_atomic(out / MANIFEST, manifest, indent=1)


# --------------------------------------------------------------------------- reading
_LINE_KEY = re.compile(r"^[0-9]+$")


def read_embeddings(out_dir: str | os.PathLike[str]) -> Iterator[tuple[str, int, np.ndarray]]:
    """Iterate ``(source, line, array)`` over an ``elmo embed-corpus`` output folder, in
    input order: ``source`` is the input's path relative to the inputs' common folder,
    ``line`` is 0-based, ``array`` has the shape of ``elmo embed``'s datasets.

    Needs pyarrow for Parquet output (``pip install "elmo-embeddings[ray]"``).
    """
    out = Path(out_dir)
    manifest = _our_manifest(out)
    if manifest is None:
        raise CorpusError(f"{out}: no {MANIFEST} of elmo embed-corpus; not an embed-corpus output folder")
    if not manifest.get("complete"):
        raise CorpusError(f"{out}: the run is not complete; finish it with elmo embed-corpus --resume")
    if manifest["format"] == "hdf5":
        for info in manifest["files"]:
            with h5py.File(_hdf5_path(out, info["source"]), "r") as f:
                for line in range(info["lines"]):
                    yield info["source"], line, f[str(line)][()]
        return
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise CorpusError(
            'reading Parquet embeddings needs pyarrow: pip install "elmo-embeddings[ray]"'
        ) from None
    for name in manifest["shards"]:
        table = pq.read_table(out / "shards" / f"{name}.parquet")
        embedding = table.column("embedding").combine_chunks()
        values = embedding.values.to_numpy(zero_copy_only=False)
        bounds = embedding.offsets.to_numpy()
        shapes = table.column("shape").to_pylist()
        for k, (source, line) in enumerate(
            zip(table.column("source").to_pylist(), table.column("line").to_pylist())
        ):
            yield source, line, values[bounds[k] : bounds[k + 1]].reshape(shapes[k])
