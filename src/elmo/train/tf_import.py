"""bilm-tf training checkpoints (TensorFlow variables) into a :class:`TrainingBiLM`.

bilm-tf names its variables ``lm/char_embed``, ``lm/CNN/W_cnn_0``,
``lm/RNN_0/rnn/multi_rnn_cell/cell_0/lstm_cell/kernel`` (``lm/RNN_0/rnn/lstm_cell/...``
with one layer), ``lm/softmax/W`` ... and keeps Adagrad's accumulator of each under
``<name>/Adagrad``. The checkpoint is read without TensorFlow.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from elmo.errors import ElmoError
from elmo.tfcheckpoint import latest_checkpoint, list_variables, read_variables
from elmo.train.lm import TrainingBiLM
from elmo.train.optim import Adagrad

__all__ = [
    "TFImportError",
    "assign_tf_variables",
    "load_bilm_tf_checkpoint",
    "resolve_checkpoint",
    "tf_variable_names",
]


class TFImportError(ElmoError, ValueError):
    """A bilm-tf checkpoint that does not fit the model its options describe."""


def tf_variable_names(model: TrainingBiLM) -> dict[str, str]:
    """Our parameter name → bilm-tf's variable name, for every parameter of ``model``."""
    names = {
        "encoder.token_encoder.char_embed": "lm/char_embed",
        "encoder.token_encoder.proj_w": "lm/CNN_proj/W_proj",
        "encoder.token_encoder.proj_b": "lm/CNN_proj/b_proj",
        "softmax.weight": "lm/softmax/W",
        "softmax.bias": "lm/softmax/b",
    }
    cnn = model.config.char_cnn
    for i in range(len(cnn.filters)):
        names[f"encoder.token_encoder.conv_weights.{i}"] = f"lm/CNN/W_cnn_{i}"
        names[f"encoder.token_encoder.conv_biases.{i}"] = f"lm/CNN/b_cnn_{i}"
    for k in range(cnn.n_highway):
        for ours, theirs in (
            ("highway_carry_w", "W_carry"),
            ("highway_carry_b", "b_carry"),
            ("highway_transform_w", "W_transform"),
            ("highway_transform_b", "b_transform"),
        ):
            names[f"encoder.token_encoder.{ours}.{k}"] = f"lm/CNN_high_{k}/{theirs}"
    n_layers = model.config.lstm.n_layers
    for d, stack in enumerate(("forward_layers", "backward_layers")):
        for layer in range(n_layers):
            scope = f"lm/RNN_{d}/rnn/" + (f"multi_rnn_cell/cell_{layer}/" if n_layers > 1 else "")
            for ours, theirs in (("kernel", "kernel"), ("bias", "bias"), ("projection", "projection/kernel")):
                names[f"encoder.{stack}.{layer}.{ours}"] = f"{scope}lstm_cell/{theirs}"
    return names


def resolve_checkpoint(path: str | os.PathLike[str]) -> Path:
    """The checkpoint prefix of a directory with a ``checkpoint`` state file, or a prefix."""
    return latest_checkpoint(path)


def _fit(name: str, value: np.ndarray, target: torch.Tensor, fill: float, source: object) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
    if "char_embed" in name and tensor.shape[0] + 1 == target.shape[0]:
        # The file's 261 rows are ids 1..261 of our 262-row table; row 0 is never used.
        tensor = torch.cat([torch.full((1, tensor.shape[1]), fill), tensor])
    if tuple(tensor.shape) != tuple(target.shape):
        raise TFImportError(
            f"{source}: variable '{name}': expected shape {tuple(target.shape)} from the options, "
            f"found {tuple(value.shape)}; do the options (and vocabulary size) belong to this checkpoint?"
        )
    return tensor


def assign_tf_variables(
    model: TrainingBiLM,
    values: Mapping[str, np.ndarray],
    optimizer: Adagrad | None = None,
    load_softmax: bool = True,
    source: str = "checkpoint",
) -> int:
    """Copy bilm-tf variables (``values``: TF name → array) into ``model`` and ``optimizer``.

    Returns ``global_step`` (0 if absent). With ``load_softmax=False`` the softmax stays
    as it is (fine-tuning on a new vocabulary).
    """
    params = dict(model.named_parameters())
    with torch.no_grad():
        for ours, theirs in tf_variable_names(model).items():
            if not load_softmax and ours.startswith("softmax."):
                continue
            if theirs not in values:
                raise TFImportError(f"{source}: no variable '{theirs}' (for {ours})")
            params[ours].copy_(_fit(theirs, values[theirs], params[ours], 0.0, source))
            if optimizer is not None:
                slot = f"{theirs}/Adagrad"
                if slot not in values:
                    raise TFImportError(f"{source}: no Adagrad slot '{slot}'")
                acc = optimizer.accumulators[ours]
                acc.copy_(_fit(slot, values[slot], acc, float(acc.flatten()[0]), source))
    step = values.get("global_step")
    return round(float(step)) if step is not None else 0


def load_bilm_tf_checkpoint(
    model: TrainingBiLM,
    path: str | os.PathLike[str],
    optimizer: Adagrad | None = None,
    load_softmax: bool = True,
) -> int:
    """Fill ``model`` (and the Adagrad accumulators) from a bilm-tf checkpoint.

    ``path`` is a checkpoint directory (its ``checkpoint`` state file names the latest)
    or a checkpoint prefix such as ``model.ckpt-30``. Returns bilm-tf's ``global_step``.
    """
    prefix = resolve_checkpoint(path)
    available = list_variables(prefix)
    wanted = []
    for ours, theirs in tf_variable_names(model).items():
        if not load_softmax and ours.startswith("softmax."):
            continue
        wanted.append(theirs)
        if optimizer is not None:
            wanted.append(f"{theirs}/Adagrad")
    missing = [n for n in wanted if n not in available]
    if missing:
        raise TFImportError(
            f"{prefix}: checkpoint lacks {len(missing)} variable(s) the options call for, e.g. '{missing[0]}'"
        )
    if "global_step" in available:
        wanted.append("global_step")
    values = read_variables(prefix, wanted)
    return assign_tf_variables(model, values, optimizer, load_softmax, str(prefix))
