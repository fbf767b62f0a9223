"""Training checkpoints: one file, written atomically, read without unpickling objects.

A checkpoint holds everything an exact resume needs: the parameters, Adagrad's
accumulators, the step, the recurrent state of every batch row, the data pipeline's
position and the random number generators. It is a ``torch.save`` file of tensors,
numbers and strings only, and is read with ``torch.load(weights_only=True)``, which
refuses any other object, so a checkpoint from an untrusted source cannot run code.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from elmo.atomic import atomic_write
from elmo.errors import CheckpointError

__all__ = ["FORMAT", "Checkpoint", "load_checkpoint", "save_checkpoint"]

FORMAT = "elmo-train-checkpoint"
VERSION = 1


@dataclass
class Checkpoint:
    """The content of a training checkpoint.

    ``options`` is the options.json object; ``vocab_size`` the softmax size; ``model``
    and ``optimizer`` map parameter names to tensors; ``lstm_state`` holds, per layer,
    forward h, forward c, backward h, backward c for every row of the *global* batch;
    ``data_state`` is the data pipeline's JSON-serialisable state; ``rng`` holds
    generator states; ``meta`` free-form numbers and strings (world size, seed, ...).
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


def save_checkpoint(ckpt: Checkpoint, path: str | os.PathLike[str]) -> None:
    """Write ``ckpt`` to ``path`` atomically: a killed process leaves the old file intact."""
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "step": int(ckpt.step),
        "options": json.dumps(ckpt.options),
        "vocab_size": int(ckpt.vocab_size),
        "model": {k: v.detach().cpu() for k, v in ckpt.model.items()},
        "optimizer": {k: v.detach().cpu() for k, v in ckpt.optimizer.items()},
        "lstm_state": [t.detach().cpu() for t in ckpt.lstm_state],
        "data_state": json.dumps(ckpt.data_state),
        "rng": {k: v.cpu() for k, v in ckpt.rng.items()},
        "meta": json.dumps(ckpt.meta),
    }
    with atomic_write(path, "wb") as f:
        torch.save(payload, f)


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path}: not a readable training checkpoint (truncated or corrupt?): {first}"
        ) from None
    except Exception as e:  # the unpickler refuses objects other than tensors and plain data
        raise CheckpointError(f"{path}: refused to load: {type(e).__name__}: {e}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an elmo training checkpoint (no '{FORMAT}' marker)")
    if payload.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {payload.get('version')}, this version reads {VERSION}"
        )
    try:
        return Checkpoint(
            step=int(payload["step"]),
            options=json.loads(payload["options"]),
            vocab_size=int(payload["vocab_size"]),
            model=dict(payload["model"]),
            optimizer=dict(payload["optimizer"]),
            lstm_state=list(payload["lstm_state"]),
            data_state=json.loads(payload["data_state"]),
            rng=dict(payload["rng"]),
            meta=json.loads(payload["meta"]),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: checkpoint is missing or has a malformed field: {e}") from None
