"""Training checkpoints: one file, written atomically, checksummed, read without unpickling objects.

A checkpoint holds everything an exact resume needs: the parameters, Adagrad's
accumulators, the step, the recurrent state of every batch row, the data pipeline's
position and the random number generators. It is a ``torch.save`` file of tensors,
numbers and strings only, and is read with ``torch.load(weights_only=True)``, which
refuses any other object, so a checkpoint from an untrusted source cannot run code.

Integrity: the file carries a SHA-256 digest of its content (every tensor's dtype, shape
and bytes, and every string and number), computed before writing and checked after
reading, so a damaged file (a flipped bit the zip container does not notice, a
truncation) is refused with its name instead of being resumed from. It also records
digests of the vocabulary and of the options it was trained with (:func:`vocab_digest`,
:func:`options_digest`), which a resumed run compares with its own.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from elmo.atomic import atomic_write
from elmo.errors import CheckpointError

__all__ = [
    "FORMAT",
    "Checkpoint",
    "load_checkpoint",
    "options_digest",
    "save_checkpoint",
    "vocab_digest",
]

log = logging.getLogger("elmo.train")

FORMAT = "elmo-train-checkpoint"
# 2: a content digest ("sha256") and the vocabulary's and options' digests. Version 1
# files (no digests) are still read, with a warning.
VERSION = 2
_READABLE = (1, 2)


@dataclass
class Checkpoint:
    """The content of a training checkpoint.

    ``options`` is the options.json object; ``vocab_size`` the softmax size; ``model``
    and ``optimizer`` map parameter names to tensors; ``lstm_state`` holds, per layer,
    forward h, forward c, backward h, backward c for every row of the *global* batch;
    ``data_state`` is the data pipeline's JSON-serialisable state; ``rng`` holds
    generator states; ``meta`` free-form numbers and strings (world size, seed, ...);
    ``vocab_sha256`` the :func:`vocab_digest` of the run's vocabulary (``None`` in
    checkpoints of format version 1).
    """

    step: int
    options: dict[str, Any]
    vocab_size: int
    model: dict[str, Tensor]
    optimizer: dict[str, Tensor] = field(default_factory=dict)
    lstm_state: list[Tensor] = field(default_factory=list)
    data_state: dict[str, Any] | None = None
    rng: dict[str, Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    vocab_sha256: str | None = None


def vocab_digest(words: list[str]) -> str:
    """SHA-256 of a vocabulary's words in order (one a line)."""
    return hashlib.sha256("\n".join(words).encode("utf-8")).hexdigest()


def options_digest(options: dict[str, Any]) -> str:
    """SHA-256 of an options object as canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(options, sort_keys=True).encode("utf-8")).hexdigest()


def _content_digest(payload: dict[str, Any]) -> str:
    """SHA-256 over every value of ``payload`` but ``sha256``, in a fixed order."""
    h = hashlib.sha256()

    def feed(value: Any) -> None:
        if isinstance(value, Tensor):
            t = value.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
            if t.numel():
                h.update(t.reshape(-1).view(torch.uint8).numpy().data)
        elif isinstance(value, dict):
            h.update(f"D{len(value)}:".encode())
            for key in sorted(value, key=str):
                feed(str(key))
                feed(value[key])
        elif isinstance(value, (list, tuple)):
            h.update(f"L{len(value)}:".encode())
            for item in value:
                feed(item)
        else:  # str, int, float, bool, None
            text = json.dumps(value)
            h.update(f"S{len(text)}:{text}".encode())

    feed({k: v for k, v in payload.items() if k != "sha256"})
    return h.hexdigest()


class _RecordingFile:
    """A file whose write errors are kept: ``torch.save`` turns them into a RuntimeError
    without the errno, and the errno (no space left, ...) is what the user needs."""

    def __init__(self, f: Any) -> None:
        self.f = f
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return int(self.f.write(data))
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def save_checkpoint(ckpt: Checkpoint, path: str | os.PathLike[str]) -> None:
    """Write ``ckpt`` to ``path`` atomically: a killed process, or a failed write (a full
    disk), leaves the old file intact and no temporary file behind.

    Raises :class:`CheckpointError` naming the file and the errno when it cannot be written.
    """
    payload: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "step": int(ckpt.step),
        "options": json.dumps(ckpt.options),
        "options_sha256": options_digest(ckpt.options),
        "vocab_size": int(ckpt.vocab_size),
        "vocab_sha256": ckpt.vocab_sha256,
        "model": {k: v.detach().cpu() for k, v in ckpt.model.items()},
        "optimizer": {k: v.detach().cpu() for k, v in ckpt.optimizer.items()},
        "lstm_state": [t.detach().cpu() for t in ckpt.lstm_state],
        "data_state": json.dumps(ckpt.data_state),
        "rng": {k: v.cpu() for k, v in ckpt.rng.items()},
        "meta": json.dumps(ckpt.meta),
    }
    payload["sha256"] = _content_digest(payload)
    path = Path(path)
    recorder: _RecordingFile | None = None
    try:
        with atomic_write(path, "wb") as f:
            recorder = _RecordingFile(f)
            try:
                torch.save(payload, recorder)  # type: ignore[arg-type]
            except RuntimeError:
                if recorder.error is not None:
                    raise recorder.error from None
                raise
    except OSError as e:
        reason = f"[Errno {e.errno}] {e.strerror}" if e.errno else str(e)
        raise CheckpointError(
            f"{path}: cannot write the checkpoint ({reason}); the previous checkpoint is left as it was"
        ) from None


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`, verifying its content digest.

    A missing, truncated, damaged or foreign file raises :class:`CheckpointError`, one line
    naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # zip, unpickler and torch errors of a damaged or foreign file
        raise CheckpointError(
            f"{path}: not a readable training checkpoint (truncated or corrupt?): {_one_line(e)}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an elmo training checkpoint (no '{FORMAT}' marker)")
    version = payload.get("version")
    if version not in _READABLE:
        raise CheckpointError(f"{path}: checkpoint format version {version!r}, this version reads {VERSION}")
    if version >= 2:
        expected = payload.get("sha256")
        try:
            found = _content_digest(payload)
        except Exception as e:  # a damaged file can hold any shape of data
            raise CheckpointError(f"{path}: corrupt checkpoint content: {_one_line(e)}") from None
        if expected != found:
            raise CheckpointError(
                f"{path}: the checkpoint is corrupt: SHA-256 of its content is {found}, "
                f"it was written as {expected}; refusing to use it"
            )
    else:
        log.warning("%s: a checkpoint of format version 1 carries no checksum; it is used unverified", path)
    try:
        ckpt = Checkpoint(
            step=int(payload["step"]),
            options=json.loads(payload["options"]),
            vocab_size=int(payload["vocab_size"]),
            model=dict(payload["model"]),
            optimizer=dict(payload["optimizer"]),
            lstm_state=list(payload["lstm_state"]),
            data_state=json.loads(payload["data_state"]),
            rng=dict(payload["rng"]),
            meta=json.loads(payload["meta"]),
            vocab_sha256=payload.get("vocab_sha256"),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: checkpoint is missing or has a malformed field: {e}") from None
    if not isinstance(ckpt.options, dict):
        raise CheckpointError(f"{path}: checkpoint options are not a JSON object")
    return ckpt
