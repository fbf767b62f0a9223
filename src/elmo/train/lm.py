"""The biLM as bilm-tf trains it: the ELMo encoder plus a softmax over the vocabulary.

The embedder's parameters are those of :class:`elmo.model.ElmoBiLM` (the released file
layout), so a trained model exports by copying them. Training differs from inference
in three ways, all following bilm-tf:

* inputs are training character ids (0..260, no +1 shift); they are shifted here so the
  262-row ``char_embed`` of the inference model serves both (its row 0 is never used);
* the two directions read separate token streams (``*_reverse`` arrays), not one
  sentence reversed, and every position is scored;
* dropout (inverted, a fresh mask per position) on the input of every LSTM layer and on
  the top output; the skip connection adds the dropped input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from elmo.config import ElmoConfig
from elmo.model import ElmoBiLM, LayerState, LSTMLayer, has_skip_connection, lstm_cell
from elmo.train.softmax import LogUniformSampler, SoftmaxHead

__all__ = ["NEGATIVE_SAMPLES", "DirectionLoss", "LMLosses", "TrainingBiLM", "init_like_bilm_tf", "run_lstm"]

# bilm-tf's n_negative_samples_batch when the options do not give it.
NEGATIVE_SAMPLES = 8192


def run_lstm(layer: LSTMLayer, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One LSTM layer over every step of ``x`` [B, T, in] with autograd; no masking.

    The cell of :class:`LSTMLayer` (:func:`elmo.model.lstm_cell`), run for training:
    plain products (no row padding) and outputs stacked, not written into a buffer. As in
    bilm-tf every step updates the state: training streams have no padding.
    """
    batch, steps, width = x.shape
    w_input, w_hidden = layer.kernel[:width], layer.kernel[width:]
    x_proj = torch.addmm(layer.bias, x.reshape(-1, width), w_input).view(batch, steps, -1)
    outputs = []
    # unbind, not x_proj[:, t]: the backward of one select per step would allocate and
    # zero a gradient of the whole [B, T, 4H] tensor at every step.
    for x_t in x_proj.unbind(1):
        gates = x_t + h @ w_hidden
        h, c = lstm_cell(gates, c, layer.projection, layer.cell_clip, layer.proj_clip, torch.matmul)
        outputs.append(h)
    return torch.stack(outputs, dim=1), h, c


@dataclass
class DirectionLoss:
    """Summed cross-entropy of one direction and the number of positions it covers."""

    total: Tensor
    count: int

    @property
    def mean(self) -> Tensor:
        return self.total / max(self.count, 1)


@dataclass
class LMLosses:
    """Losses of one batch. ``loss`` is bilm-tf's ``0.5 * (mean_fwd + mean_bwd)``."""

    forward: DirectionLoss
    backward: DirectionLoss
    state: list[LayerState]

    @property
    def loss(self) -> Tensor:
        return 0.5 * (self.forward.mean + self.backward.mean)


class TrainingBiLM(nn.Module):
    """ELMo biLM plus the softmax shared by both directions.

    ``encoder`` is an :class:`ElmoBiLM`, whose parameters are exactly what
    ``weights.hdf5`` holds; ``softmax`` is the LM head (``softmax/W``, ``softmax/b``).
    """

    def __init__(self, config: ElmoConfig, vocab_size: int) -> None:
        super().__init__()
        self.config = config
        self.vocab_size = vocab_size
        self.encoder = ElmoBiLM(config)
        self.softmax = SoftmaxHead(vocab_size, config.lstm.projection_dim)
        training = config.training
        self.dropout = float(training.get("dropout", 0.0) or 0.0)
        self.sample_softmax = bool(training.get("sample_softmax", True))
        self.n_negative_samples = int(training.get("n_negative_samples_batch", NEGATIVE_SAMPLES))
        self.sampler = LogUniformSampler(vocab_size)

    def zero_state(self, batch: int) -> list[LayerState]:
        return self.encoder.zero_state(batch)

    def token_embeddings(self, char_ids: Tensor) -> Tensor:
        """``[B, T, C]`` training char ids → ``[B, T, P]`` token representations."""
        batch, steps, chars = char_ids.shape
        flat = self.encoder.token_encoder(char_ids.reshape(-1, chars) + 1)
        return flat.view(batch, steps, -1)

    def top_hidden(
        self, char_ids: Tensor, layers: nn.ModuleList, state: list[LayerState], backward: bool
    ) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """Top LSTM output ``[B, T, P]`` of one direction, and each layer's final (h, c)."""
        x = self.token_embeddings(char_ids)
        final = []
        for k, layer in enumerate(layers):
            s = state[k]
            h0, c0 = (s.backward_h, s.backward_c) if backward else (s.forward_h, s.forward_c)
            x_in = self._drop(x)
            out, h, c = run_lstm(cast(LSTMLayer, layer), x_in, h0, c0)
            if has_skip_connection(self.config.lstm, k):
                out = out + x_in  # the dropped input, as bilm-tf adds it
            final.append((h, c))
            x = out
        return self._drop(x), final

    def _drop(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.dropout, training=True) if self.training and self.dropout > 0 else x

    def forward(
        self,
        batch: dict[str, Tensor],
        state: list[LayerState] | None = None,
        full_softmax: bool | None = None,
        generator: torch.Generator | None = None,
    ) -> LMLosses:
        """Losses of a batch of the data pipeline (``token_ids``, ``tokens_characters``,
        ``next_token_id`` and the ``*_reverse`` arrays; optional ``mask``/``mask_reverse``).

        The sampled softmax is used in training mode when the options ask for it
        (``sample_softmax``, default true), the full softmax otherwise.
        """
        chars = batch["tokens_characters"]
        if state is None:
            state = self.zero_state(chars.shape[0])
        if full_softmax is None:
            full_softmax = not (self.training and self.sample_softmax)
        fwd_h, fwd_final = self.top_hidden(chars, self.encoder.forward_layers, state, backward=False)
        bwd_h, bwd_final = self.top_hidden(
            batch["tokens_characters_reverse"], self.encoder.backward_layers, state, backward=True
        )
        losses = []
        for h, key in ((fwd_h, ""), (bwd_h, "_reverse")):
            targets = batch["next_token_id" + key]
            mask = batch.get("mask" + key)
            flat_h, flat_t = h.reshape(-1, h.shape[-1]), targets.reshape(-1)
            if mask is not None:
                keep = mask.reshape(-1)
                flat_h, flat_t = flat_h[keep], flat_t[keep]
            if full_softmax:
                per_token = self.softmax.full_loss(flat_h, flat_t)
            else:
                draw = self.sampler.sample(self.n_negative_samples, generator=generator)
                per_token = self.softmax.sampled_loss(flat_h, flat_t, draw)
            losses.append(DirectionLoss(per_token.sum(), int(flat_t.numel())))
        new_state = [LayerState(fh, fc, bh, bc) for (fh, fc), (bh, bc) in zip(fwd_final, bwd_final)]
        return LMLosses(losses[0], losses[1], new_state)


@torch.no_grad()
def init_like_bilm_tf(model: TrainingBiLM, generator: torch.Generator | None = None) -> None:
    """Initialise every parameter with bilm-tf's initialisers (``bilm/training.py``)."""
    cfg = model.config
    cnn, lstm = cfg.char_cnn, cfg.lstm
    enc = model.encoder.token_encoder
    g = generator

    def normal(t: Tensor, std: float) -> None:
        t.copy_(torch.randn(t.shape, generator=g) * std)

    def uniform(t: Tensor, limit: float) -> None:
        t.copy_((torch.rand(t.shape, generator=g) * 2 - 1) * limit)

    enc.char_embed.zero_()
    uniform(enc.char_embed[1:], 1.0)
    for (width, _), w, b in zip(cnn.filters, enc.conv_weights, enc.conv_biases):
        if cnn.activation == "tanh":
            normal(w, math.sqrt(1.0 / (width * cnn.embedding_dim)))
        else:
            uniform(w, 0.05)
        b.zero_()
    std = math.sqrt(1.0 / cnn.n_filters)
    for k in range(cnn.n_highway):
        normal(enc.highway_carry_w[k], std)
        enc.highway_carry_b[k].fill_(-2.0)
        normal(enc.highway_transform_w[k], std)
        enc.highway_transform_b[k].zero_()
    normal(enc.proj_w, std)
    enc.proj_b.zero_()
    for layer in [*model.encoder.forward_layers, *model.encoder.backward_layers]:
        for w in (layer.kernel, layer.projection):
            uniform(w, math.sqrt(6.0 / (w.shape[0] + w.shape[1])))  # glorot_uniform
        layer.bias.zero_()
    normal(model.softmax.weight, 1.0 / math.sqrt(lstm.projection_dim))
    model.softmax.bias.zero_()
