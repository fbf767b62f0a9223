"""Random ELMo models for tests, made in-process: ``options.json`` + ``weights.hdf5``.

The files have the released layout (see :mod:`elmo.weights`), so this package, AllenNLP
and bilm-tf's inference code all read them. Values come from one seeded generator: the
same arguments always give the same values.

Sizes:

============  ========================================================================
``tiny``      AllenNLP's tiny test biLM's shapes: 4-dim character embedding, filters
              (1, 4) (2, 8) (3, 16) (4, 32) (5, 64), 2 highway layers, 64-cell LSTM
              with projection 16 (0.2M parameters; loads and runs in milliseconds)
``small``     the released small model's shapes: 1024 cells, projection 128,
              1 highway layer (13.6M parameters)
``original``  the released original model's shapes: 4096 cells, projection 512,
              2 highway layers (93.6M parameters)
============  ========================================================================

All sizes have 2 LSTM layers, cell and projection clipping at 3 and skip connections.

The draw is that of the reference fixtures' ``make_random_elmo`` tool, so ``small`` and
``original`` models equal the ones the shared reference outputs were computed with, value
for value: one ``numpy.random.default_rng(seed)``; the datasets in the order of
:func:`elmo.weights.dataset_layout` (``char_embed``; per filter its kernel then bias; per
highway layer carry kernel, carry bias, transform kernel, transform bias; the projection
kernel and bias; per direction (forward first), per layer: ``W_0``, ``B``, ``W_P_0``);
each drawn with ``Generator.uniform(-bound, bound)`` in float64, then cast to float32,
where ``bound = gain * sqrt(3 / fan_in)``. The fan-in of a kernel is the product of all
its dimensions but the last (width x embedding dimension for a convolution, the rows of
a matrix); a bias takes the fan-in of the kernel before it and is then scaled by 0.1 (in
float32); ``char_embed`` uses fan-in 3, so its values lie in ``±gain``. Larger gains
drive the cell and projection clipping more often.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch

from elmo.config import CharCNNConfig, ElmoConfig, LSTMConfig
from elmo.model import ElmoBiLM
from elmo.weights import dataset_layout, save_weights

__all__ = ["SIZES", "Size", "random_bilm", "random_config", "write_random_model"]

Size = Literal["tiny", "small", "original"]
SIZES: tuple[Size, ...] = get_args(Size)

_BIAS_SCALE = np.float32(0.1)
# Character embeddings are looked up, not summed over an input: fan-in 3 gives ±gain.
_CHAR_EMBED_FAN_IN = 3.0


def random_config(size: Size) -> ElmoConfig:
    """The options of a random test model of ``size`` (see the module docstring)."""
    if size == "tiny":
        return ElmoConfig(
            char_cnn=CharCNNConfig(
                filters=[(1, 4), (2, 8), (3, 16), (4, 32), (5, 64)], embedding_dim=4, n_highway=2
            ),
            lstm=LSTMConfig(dim=64, projection_dim=16),
        )
    if size in SIZES:
        return ElmoConfig.preset(size)
    raise ValueError(f"unknown random model size {size!r}: expected one of {', '.join(SIZES)}")


def random_bilm(config: ElmoConfig, seed: int = 1, gain: float = 1.0) -> ElmoBiLM:
    """A plain biLM with ``config``'s shapes and seeded random weights, in eval mode."""
    rng = np.random.default_rng(seed)
    bilm = ElmoBiLM(config)
    kernel_fan_in = 0.0
    with torch.no_grad():
        for name, target, _ in dataset_layout(bilm):
            shape = tuple(target.shape)
            is_bias = len(shape) == 1
            if name == "char_embed":
                fan_in = _CHAR_EMBED_FAN_IN
            elif is_bias:
                fan_in = kernel_fan_in
            else:
                fan_in = kernel_fan_in = float(math.prod(shape[:-1]))
            bound = gain * math.sqrt(3.0 / fan_in)
            values = rng.uniform(-bound, bound, size=shape).astype(np.float32)
            if is_bias:
                values *= _BIAS_SCALE
            target.copy_(torch.from_numpy(values))
    return bilm.eval()


def write_random_model(
    out_dir: str | os.PathLike[str], size: Size = "small", seed: int = 1, gain: float = 1.0
) -> Path:
    """Write ``options.json`` and ``weights.hdf5`` of a random model into ``out_dir``.

    Returns the directory, which ``elmo.load`` takes as it is. The weight file is
    written last and atomically, so its presence means the model is complete.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = random_config(size)
    config.to_json(out / "options.json")
    save_weights(random_bilm(config, seed, gain), out / "weights.hdf5")
    return out
