"""Embedding a text file (one whitespace-tokenized sentence a line) into HDF5.

The output has the layout the old ``allennlp elmo`` command wrote, so existing readers
keep working: one dataset per input line, named by its 0-based line number as a string,
and a ``sentence_to_index`` dataset holding a JSON object from sentence to that name.

Safety: work goes into ``OUTPUT.partial/``, a folder of shard files each written under a
temporary name and renamed when complete, plus a manifest of what is done. Only when
every line is embedded are the shards merged into a temporary file that is renamed to
OUTPUT. So OUTPUT either does not exist or is complete, whenever the process is stopped,
and ``resume=True`` continues an interrupted run from its last complete shard (with the
carried LSTM state in stateful mode), giving the same file as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import h5py
import numpy as np
import torch

from elmo.atomic import atomic_path, publish, write_json_atomic
from elmo.choices import FILE_LAYERS, STORE_DTYPES, FileLayers, StoreDtype, check_choice
from elmo.embedder import TokenEmbedder, embed_iter
from elmo.errors import EmbedFileError
from elmo.model import LayerState

__all__ = ["FILE_LAYERS", "EmbedFileError", "EmbedJob", "FileEmbedder", "embed_file"]

_MANIFEST = "manifest.json"
_FORMAT_VERSION = 1


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


@dataclass
class EmbedJob:
    """What ``elmo embed`` was asked to do."""

    input: str  # a path, or "-" for standard input
    output: Path
    layers: FileLayers = "all"
    batch_size: int = 64
    store_dtype: StoreDtype = "float32"  # type of the stored arrays
    encoding_errors: str = "strict"
    resume: bool = False
    overwrite: bool = False
    forget_sentences: bool = False
    shard_size: int = 2048  # lines per shard (rounded to whole batches)


@dataclass
class Progress:
    """Callbacks the caller gets: ``start(total_lines or None)``, ``advance(lines, tokens)``."""

    start: Callable[[int | None, int], None] = lambda total, done: None
    advance: Callable[[int, int], None] = lambda lines, tokens: None
    finish: Callable[[], None] = lambda: None


def _partial_dir(output: Path) -> Path:
    return output.with_name(output.name + ".partial")


def _model_identity(module: FileEmbedder) -> str:
    """A digest of the model's options and weights, to refuse resuming with another model."""
    digest = hashlib.sha256(json.dumps(module.config.to_dict(), sort_keys=True).encode())
    for tensor in module.state_dict().values():
        flat = tensor.detach().reshape(-1)
        # a sample of every tensor is enough to tell models apart, and cheap
        digest.update(flat[:: max(1, flat.numel() // 4096)].cpu().numpy().tobytes())
    return digest.hexdigest()[:32]


def _input_identity(path: str) -> dict:
    if path == "-":
        return {"path": "-"}
    st = os.stat(path)
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _decode(raw: bytes, line_no: int, job: EmbedJob) -> str:
    if raw.endswith(b"\n"):
        raw = raw[:-1]
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    try:
        return raw.decode("utf-8", job.encoding_errors)
    except UnicodeDecodeError as e:
        name = "<stdin>" if job.input == "-" else job.input
        raise EmbedFileError(
            f"{name}: line {line_no}: not valid UTF-8 ({e.reason} at byte {e.start}); "
            "pass --encoding-errors replace to substitute U+FFFD"
        ) from None


def _open_input(job: EmbedJob) -> BinaryIO:
    if job.input == "-":
        return sys.stdin.buffer
    try:
        return open(job.input, "rb")
    except FileNotFoundError:
        raise EmbedFileError(f"{job.input}: input file not found") from None
    except IsADirectoryError:
        raise EmbedFileError(f"{job.input}: is a directory, expected a text file") from None
    except OSError as e:
        raise EmbedFileError(f"{job.input}: cannot read input: {e.strerror}") from None


def _scan(job: EmbedJob) -> int:
    """Count the lines of an input file and check every line decodes, before any work."""
    count = 0
    with _open_input(job) as f:
        for count, raw in enumerate(f, start=1):
            _decode(raw, count, job)
    return count


def _lines(stream: BinaryIO, job: EmbedJob, skip: int) -> Iterator[str]:
    for line_no, raw in enumerate(stream, start=1):
        if line_no > skip:
            yield _decode(raw, line_no, job).strip()


def _state_to_h5(group: h5py.Group, state: list[LayerState] | None) -> None:
    if state is None:
        return
    for k, layer in enumerate(state):
        for name, tensor in vars(layer).items():
            group[f"state/{k}/{name}"] = tensor.detach().cpu().numpy()


def _state_from_h5(path: Path, device: torch.device) -> list[LayerState] | None:
    with h5py.File(path, "r") as f:
        if "state" not in f:
            return None
        group = f["state"]
        return [
            LayerState(
                **{name: torch.from_numpy(group[f"{k}/{name}"][()]).to(device) for name in group[str(k)]}
            )
            for k in range(len(group))
        ]


def _prepare(job: EmbedJob, manifest_base: dict) -> tuple[Path, dict]:
    """Check the output situation and return the partial folder and its manifest."""
    output, partial = job.output, _partial_dir(job.output)
    if output.exists() and not job.overwrite:
        raise EmbedFileError(f"{output}: already exists; pass --overwrite to replace it")
    if output.exists() and output.is_dir():
        raise EmbedFileError(f"{output}: is a directory, expected an HDF5 file path")
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.is_dir():
        raise EmbedFileError(f"{output}: the folder {parent} does not exist")
    if partial.exists() and job.resume:
        try:
            manifest = json.loads((partial / _MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise EmbedFileError(
                f"{partial}: no readable {_MANIFEST}; cannot resume (pass --overwrite to start over)"
            ) from None
        for key, value in manifest_base.items():
            if key in ("encoding_errors",):
                continue
            if manifest.get(key) != value:
                raise EmbedFileError(
                    f"cannot resume {partial}: its {key} was {json.dumps(manifest.get(key))}, "
                    f"now {json.dumps(value)}; rerun with the same arguments, or --overwrite to start over"
                )
        for leftover in partial.glob("*.tmp"):
            leftover.unlink()
        return partial, manifest
    if partial.exists():
        if not job.overwrite:
            raise EmbedFileError(
                f"{partial}: an interrupted run is in the way; pass --resume to continue it "
                "or --overwrite to start over"
            )
        shutil.rmtree(partial)
    try:
        partial.mkdir()
    except OSError as e:
        raise EmbedFileError(f"{output}: cannot write in {parent}: {e.strerror}") from None
    manifest = dict(manifest_base, lines_done=0, tokens_done=0, shards=[])
    write_json_atomic(partial / _MANIFEST, manifest)
    return partial, manifest


def _write_shard(
    module: FileEmbedder, job: EmbedJob, sentences: list[str], first_line: int, path: Path, progress: Progress
) -> int:
    dtype = np.float16 if job.store_dtype == "float16" else np.float32
    tokens = [s.split() for s in sentences]
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        arrays = embed_iter(module, tokens, job.layers, job.batch_size)
        for offset, array in enumerate(arrays):
            f.create_dataset(str(first_line + offset), data=array.astype(dtype, copy=False))
            progress.advance(1, len(tokens[offset]))
        f.create_dataset("lines", data=np.array(sentences, dtype=object), dtype=h5py.string_dtype())
        f.attrs["first_line"] = first_line
        _state_to_h5(f, module.carried_state if module.stateful else None)
    return sum(len(t) for t in tokens)


def _merge(partial: Path, manifest: dict, job: EmbedJob) -> None:
    # Written inside the partial folder, so that a killed merge leaves nothing beside OUTPUT.
    final = partial / "final.hdf5.tmp"
    sentence_to_index: dict[str, str] = {}
    with h5py.File(final, "w") as out:
        for name in manifest["shards"]:
            with h5py.File(partial / name, "r") as shard:
                first = int(shard.attrs["first_line"])
                lines = shard["lines"].asstr()[()]
                for offset in range(len(lines)):
                    key = str(first + offset)
                    shard.copy(shard[key], out, name=key)
                    if not job.forget_sentences:
                        sentence_to_index[lines[offset]] = key
        if not job.forget_sentences:
            ds = out.create_dataset("sentence_to_index", (1,), dtype=h5py.string_dtype())
            ds[0] = json.dumps(sentence_to_index)
    publish(final, job.output)
    shutil.rmtree(partial, ignore_errors=True)


def embed_file(module: FileEmbedder, job: EmbedJob, progress: Progress | None = None) -> dict:
    """Run ``job`` with ``module``; returns a summary (lines, tokens, seconds)."""
    progress = progress or Progress()
    if job.layers not in FILE_LAYERS:
        raise EmbedFileError(f"--layers: expected one of {', '.join(FILE_LAYERS)}, found {job.layers!r}")
    check_choice("store_dtype", job.store_dtype, STORE_DTYPES)
    total = None if job.input == "-" else _scan(job)
    base = {
        "format": _FORMAT_VERSION,
        "input": _input_identity(job.input),
        "model": _model_identity(module),
        "layers": job.layers,
        "dtype": job.store_dtype,
        "precision": module.precision,
        "stateful": module.stateful,
        "batch_size": job.batch_size if module.stateful else None,
        "forget_sentences": job.forget_sentences,
        "encoding_errors": job.encoding_errors,
    }
    partial, manifest = _prepare(job, base)
    start = time.perf_counter()
    done = manifest["lines_done"]
    if module.stateful:
        module.reset_state()
        if manifest["shards"]:
            module.carried_state = _state_from_h5(partial / manifest["shards"][-1], module.device)
    # Stateful results depend on the batching, so shards hold whole batches.
    shard_size = max(job.batch_size, job.shard_size // job.batch_size * job.batch_size)
    progress.start(total, done)
    with _open_input(job) as stream:
        lines = _lines(stream, job, skip=done)
        while True:
            chunk = [s for _, s in zip(range(shard_size), lines)]
            if not chunk:
                break
            name = f"shard-{len(manifest['shards']):06d}.hdf5"
            tokens = _write_shard(module, job, chunk, done, partial / name, progress)
            done += len(chunk)
            manifest["shards"].append(name)
            manifest["lines_done"] = done
            manifest["tokens_done"] += tokens
            write_json_atomic(partial / _MANIFEST, manifest)
    _merge(partial, manifest, job)
    progress.finish()
    return {
        "lines": done,
        "tokens": manifest["tokens_done"],
        "seconds": round(time.perf_counter() - start, 3),
        "output": str(job.output),
    }
