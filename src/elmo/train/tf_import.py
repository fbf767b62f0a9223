"""bilm-tf training checkpoints (TensorFlow variables) into a :class:`TrainingBiLM`.

bilm-tf names its variables ``lm/char_embed``, ``lm/CNN/W_cnn_0``,
``lm/RNN_0/rnn/multi_rnn_cell/cell_0/lstm_cell/kernel`` (``lm/RNN_0/rnn/lstm_cell/...``
with one layer), ``lm/softmax/W`` ... and keeps Adagrad's accumulator of each under
``<name>/Adagrad``. The checkpoint is read without TensorFlow.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import torch

from elmo.errors import TFImportError
from elmo.names import LM_HEAD, weight_names
from elmo.tfcheckpoint import latest_checkpoint, list_variables, read_variables
from elmo.train.lm import TrainingBiLM
from elmo.train.optim import Adagrad

__all__ = [
    "assign_tf_variables",
    "load_bilm_tf_checkpoint",
    "tf_variable_names",
]


def tf_variable_names(model: TrainingBiLM) -> dict[str, str]:
    """Our parameter name → bilm-tf's variable name, for every parameter of ``model``.

    The names come from :mod:`elmo.names`: the biLM's weights in file order, then the softmax.
    """
    names = {f"encoder.{w.parameter}": w.tf_name() for w in weight_names(model.config)}
    names.update({f"softmax.{w.parameter}": w.tf_name() for w in LM_HEAD})
    return names


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
    prefix = latest_checkpoint(path)
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
