"""The ELMo biLM in plain PyTorch: char CNN, highway, projection, two directional LSTM stacks.

This is the readable reference implementation; faster engines are tested against it.
Parameters are kept in the layout of the released weight files (TensorFlow style,
``y = x @ W + b``; LSTM gates in the order i, j, f, o; no forget bias stored), so that
loading and saving is a plain copy.

Shapes: B batch rows, T tokens, C characters per token, P projection size (``word_emb``
width), H LSTM cells.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from elmo.chars import BOS_TOKEN, EOS_TOKEN, token_to_char_ids
from elmo.config import CharCNNConfig, ElmoConfig, LSTMConfig

__all__ = [
    "FORGET_BIAS",
    "GATE_ORDER",
    "BiLMOutput",
    "ElmoBiLM",
    "LSTMLayer",
    "LayerState",
    "RaggedOutput",
    "TokenEncoder",
    "clip",
    "gate_columns",
    "has_skip_connection",
    "linear",
    "lstm_cell",
    "tokens_with_boundaries",
    "widen_token_layer",
]

# BLAS libraries switch to other kernels (with another summation order) for matrices of
# very few rows, so a sentence's result would depend on how many others share its batch.
# Padding every product to at least this many rows keeps all rows on one kernel, which
# makes outputs identical whatever the batch composition.
MIN_ROWS = 16


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x @ weight + bias`` for 2-D ``x``, with the same rounding for any number of rows."""
    rows = x.shape[0]
    if 0 < rows < MIN_ROWS:
        x = torch.cat([x, x.new_zeros(MIN_ROWS - rows, x.shape[1])])
    out = x @ weight if bias is None else torch.addmm(bias, x, weight)
    return out[:rows]


# ----------------------------------------------------------------------- the LSTM cell's rules
# TensorFlow's LSTMCell with a projection, as bilm-tf runs it. These are the only statement
# of the cell: LSTMLayer and the trainer (elmo.train.lm.run_lstm) call lstm_cell; the fast
# engine (elmo.engine.recurrent) keeps a deliberate fast copy that takes GATE_ORDER and
# FORGET_BIAS from here and is pinned to LSTMLayer by tests/test_fast.py.

# The four gate blocks of the stored kernel's and bias's columns, in this order: input,
# candidate ("j"), forget, output.
GATE_ORDER = ("i", "j", "f", "o")

# TensorFlow's LSTMCell adds this to the forget gate at run time; the files omit it.
FORGET_BIAS = 1.0


def gate_columns(gate: str, cells: int) -> slice:
    """The columns of ``gate`` (one of :data:`GATE_ORDER`) in a stored kernel or bias of ``cells`` cells."""
    k = GATE_ORDER.index(gate)
    return slice(k * cells, (k + 1) * cells)


def clip(x: Tensor, limit: float | None) -> Tensor:
    """``x`` clamped to ``[-limit, limit]``; ``x`` itself when ``limit`` is None (no clipping)."""
    return x if limit is None else x.clamp(-limit, limit)


def lstm_cell(
    gates: Tensor,
    c: Tensor,
    projection: Tensor,
    cell_clip: float | None,
    proj_clip: float | None,
    product: Callable[[Tensor, Tensor], Tensor] = linear,
) -> tuple[Tensor, Tensor]:
    """One step of the cell: the new ``(h, c)`` from the gate pre-activations.

    ``gates`` [B, 4H] is ``[x, h_prev] @ kernel + bias`` (blocks in :data:`GATE_ORDER`),
    ``c`` [B, H] the previous memory cell, ``projection`` [H, P]. The memory cell is
    clipped to ``cell_clip`` before the projection, the output ``h`` [B, P] to
    ``proj_clip`` after it. ``product`` computes ``m @ projection``: :func:`linear` (the
    same rounding for any number of rows) by default; training passes a plain matmul.
    """
    i, j, f, o = gates.chunk(4, dim=1)
    c = clip(torch.sigmoid(i) * torch.tanh(j) + torch.sigmoid(f + FORGET_BIAS) * c, cell_clip)
    h = clip(product(torch.sigmoid(o) * torch.tanh(c), projection), proj_clip)
    return h, c


def has_skip_connection(lstm: LSTMConfig, layer: int) -> bool:
    """Whether LSTM layer ``layer`` (0-based) adds its input to its output.

    bilm-tf's skip connections start at the second layer: the first layer's input is the
    token representation, which is not added.
    """
    return lstm.use_skip_connections and layer > 0


class TokenEncoder(nn.Module):
    """Context-free token representation: char embedding, CNN, highway, projection.

    Maps ``[N, C]`` character ids (+1 shifted, all > 0) to ``[N, P]``. Tokens are
    independent of each other, so long inputs are processed in chunks of
    ``chunk_size`` tokens to bound the memory of the convolution outputs.
    """

    def __init__(self, cnn: CharCNNConfig, projection_dim: int, chunk_size: int = 256) -> None:
        super().__init__()
        self.activation = cnn.activation
        self.chunk_size = chunk_size
        emb, width = cnn.embedding_dim, cnn.n_filters
        # Row 0 is the all-zero embedding of "no character"; rows 1..261 come from the file.
        self.char_embed = nn.Parameter(torch.zeros(262, emb))
        self.conv_weights = nn.ParameterList(
            [nn.Parameter(torch.empty(1, w, emb, n)) for w, n in cnn.filters]
        )
        self.conv_biases = nn.ParameterList([nn.Parameter(torch.empty(n)) for _, n in cnn.filters])
        self.highway_carry_w = nn.ParameterList(
            [nn.Parameter(torch.empty(width, width)) for _ in range(cnn.n_highway)]
        )
        self.highway_carry_b = nn.ParameterList(
            [nn.Parameter(torch.empty(width)) for _ in range(cnn.n_highway)]
        )
        self.highway_transform_w = nn.ParameterList(
            [nn.Parameter(torch.empty(width, width)) for _ in range(cnn.n_highway)]
        )
        self.highway_transform_b = nn.ParameterList(
            [nn.Parameter(torch.empty(width)) for _ in range(cnn.n_highway)]
        )
        self.proj_w = nn.Parameter(torch.empty(width, projection_dim))
        self.proj_b = nn.Parameter(torch.empty(projection_dim))

    def forward(self, char_ids: Tensor) -> Tensor:
        if char_ids.shape[0] <= self.chunk_size:
            return self._encode(char_ids)
        return torch.cat([self._encode(c) for c in char_ids.split(self.chunk_size)])

    def _encode(self, char_ids: Tensor) -> Tensor:
        n = char_ids.shape[0]
        if 0 < n < MIN_ROWS:
            # The convolution, like the products, rounds differently for a single token.
            return self._encode(torch.cat([char_ids, char_ids.new_zeros(MIN_ROWS - n, char_ids.shape[1])]))[
                :n
            ]
        x = F.embedding(char_ids, self.char_embed).transpose(1, 2)  # [N, emb, C]
        pooled = []
        for w, b in zip(self.conv_weights, self.conv_biases):
            # File layout (1, width, emb, num) -> torch's (num, emb, width).
            conv = F.conv1d(x, w[0].permute(2, 1, 0), b)
            # Max over positions first, then the activation (as the reference does).
            pooled.append(conv.amax(dim=2))
        h = torch.cat(pooled, dim=1)
        h = torch.relu(h) if self.activation == "relu" else torch.tanh(h)
        for wc, bc, wt, bt in zip(
            self.highway_carry_w, self.highway_carry_b, self.highway_transform_w, self.highway_transform_b
        ):
            gate = torch.sigmoid(linear(h, wc, bc))
            h = gate * torch.relu(linear(h, wt, bt)) + (1.0 - gate) * h
        return linear(h, self.proj_w, self.proj_b)


@dataclass
class LayerState:
    """The recurrent state of one LSTM layer in both directions, one row per sentence."""

    forward_h: Tensor
    forward_c: Tensor
    backward_h: Tensor
    backward_c: Tensor

    def rows(self, index: slice | Tensor | list[int]) -> LayerState:
        """The state of the selected batch rows."""
        return LayerState(
            self.forward_h[index], self.forward_c[index], self.backward_h[index], self.backward_c[index]
        )


class LSTMLayer(nn.Module):
    """One direction of one layer: an LSTM with cell clipping and a clipped projection.

    ``kernel`` is ``[input + P, 4H]`` over ``concat([x, h_prev])``, gate blocks in
    :data:`GATE_ORDER`; each step is :func:`lstm_cell`.
    """

    def __init__(self, input_dim: int, cfg: LSTMConfig, rows_per_block: int = 1024) -> None:
        super().__init__()
        self.input_dim = input_dim
        self.cell_clip = None if cfg.cell_clip is None else float(cfg.cell_clip)
        self.proj_clip = None if cfg.proj_clip is None else float(cfg.proj_clip)
        self.rows_per_block = rows_per_block
        self.kernel = nn.Parameter(torch.empty(input_dim + cfg.projection_dim, 4 * cfg.dim))
        self.bias = nn.Parameter(torch.empty(4 * cfg.dim))
        self.projection = nn.Parameter(torch.empty(cfg.dim, cfg.projection_dim))

    def forward(self, x: Tensor, mask: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Run over ``x`` [B, T, input] left to right.

        ``mask`` [B, T] must be a prefix mask (row b is valid for t < length_b). Rows keep
        their state past their end, so the returned ``(h, c)`` is each row's state after
        its last valid step. Outputs past a row's end are exactly zero.
        """
        batch, steps, _ = x.shape
        w_input, w_hidden = self.kernel[: self.input_dim], self.kernel[self.input_dim :]
        out = x.new_zeros(batch, steps, self.projection.shape[1])
        # Input-to-hidden products for a block of steps in one matmul; blocks bound memory.
        block = max(1, self.rows_per_block // max(batch, 1))
        for start in range(0, steps, block):
            stop = min(steps, start + block)
            x_proj = linear(x[:, start:stop].reshape(-1, self.input_dim), w_input, self.bias)
            x_proj = x_proj.view(batch, stop - start, x_proj.shape[1])
            for t in range(start, stop):
                gates = x_proj[:, t - start] + linear(h, w_hidden)
                h_new, c_new = lstm_cell(gates, c, self.projection, self.cell_clip, self.proj_clip)
                # Rows past their end keep their state (the carried state is each row's own).
                valid = mask[:, t, None]
                c = torch.where(valid, c_new, c)
                h = torch.where(valid, h_new, h)
                out[:, t] = h_new.masked_fill(~valid, 0.0)
        return out, h, c


@dataclass
class BiLMOutput:
    """What the biLM computes for a batch, with the sentence markers already removed.

    ``layers[0]`` is the token representation ``[B, T, P]`` (``word_emb``);
    ``layers[k]`` for k >= 1 is ``[B, T, 2P]``, forward and backward outputs of LSTM
    layer k. ``mask`` [B, T] marks real tokens; every other position is exactly zero.
    ``state`` is the recurrent state each row ended in, one entry per layer.
    With ``keep_boundaries`` the layers are ``[B, T + 2, .]``: ``<S>`` at position 0 and
    ``</S>`` right after each row's last token, included in ``mask``.
    """

    layers: list[Tensor]
    mask: Tensor
    state: list[LayerState]

    def full_width_layers(self) -> list[Tensor]:
        """All layers at the LSTM outputs' width ``2P``: layer 0 widened, then each LSTM layer."""
        return [widen_token_layer(self.layers[0]), *self.layers[1:]]


@dataclass
class RaggedOutput:
    """The biLM's layers for real tokens only: sentence after sentence, no padding.

    ``layers[k]`` is ``[N, D_k]`` (N = ``sum(lengths)``), sentence b's tokens at rows
    ``sum(lengths[:b])`` onwards: what :class:`BiLMOutput`'s ``layers[k][mask]`` holds.
    ``state`` as in :class:`BiLMOutput`.
    """

    layers: list[Tensor]
    lengths: list[int]
    state: list[LayerState]

    def full_width_layers(self) -> list[Tensor]:
        """All layers at the LSTM outputs' width ``2P``: layer 0 widened, then each LSTM layer."""
        return [widen_token_layer(self.layers[0]), *self.layers[1:]]


def widen_token_layer(word: Tensor) -> Tensor:
    """The token representation ``[..., P]`` as a ``[..., 2P]`` layer: itself twice, once per
    direction. This is how AllenNLP and bilm-tf stack it with the LSTM layers (layer 0 of
    their ``[3, n, 2P]`` arrays) and mix it."""
    return torch.cat([word, word], dim=-1)


def tokens_with_boundaries(
    encoder: TokenEncoder, char_ids: Tensor, marker_ids: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """The token representations of a batch of sentences, without and with the sentence markers.

    ``char_ids`` [B, T, C] holds each row's tokens, then all-zero padding tokens;
    ``marker_ids`` [2, C] the character ids of ``<S>`` and ``</S>``. Returns ``word_emb``
    [B, T, P] (zero at padding), ``with_markers`` [B, T + 2, P] (``<S>`` at position 0, the
    tokens, ``</S>`` right after each row's last token, zeros after) and the ``lengths`` [B].
    """
    batch, steps, _ = char_ids.shape
    mask = (char_ids > 0).any(dim=2)
    lengths = mask.sum(dim=1)
    if not torch.equal(mask, torch.arange(steps, device=mask.device) < lengths.unsqueeze(1)):
        raise ValueError("character ids: padding tokens (all zero) must come after the real tokens of a row")
    tokens = encoder(char_ids[mask])  # only real tokens: [N, P]
    bos, eos = encoder(marker_ids)
    word_emb = tokens.new_zeros(batch, steps, tokens.shape[1])
    word_emb[mask] = tokens
    padding = word_emb.new_zeros(batch, 1, tokens.shape[1])
    with_markers = torch.cat([padding, word_emb, padding], dim=1)
    with_markers[:, 0] = bos
    with_markers[torch.arange(batch, device=with_markers.device), lengths + 1] = eos
    return word_emb, with_markers, lengths


def _reverse_rows(x: Tensor, lengths: Tensor) -> Tensor:
    """Reverse each row's first ``lengths[b]`` steps; later steps stay in place."""
    steps = x.shape[1]
    t = torch.arange(steps, device=x.device).unsqueeze(0)
    idx = torch.where(t < lengths.unsqueeze(1), lengths.unsqueeze(1) - 1 - t, t)
    return x.gather(1, idx.unsqueeze(2).expand_as(x))


class ElmoBiLM(nn.Module):
    """The bidirectional language model that ELMo's representations come from.

    ``forward`` takes character ids ``[B, T, C]`` without sentence markers (all-zero
    rows are batch padding) and adds ``<S>``/``</S>`` around each sentence itself.
    """

    _marker_ids: Tensor  # buffer: the character ids of <S> and </S>

    def __init__(self, config: ElmoConfig) -> None:
        super().__init__()
        self.config = config
        lstm = config.lstm
        self.token_encoder = TokenEncoder(config.char_cnn, lstm.projection_dim)
        self.forward_layers = nn.ModuleList(
            [LSTMLayer(lstm.projection_dim, lstm) for _ in range(lstm.n_layers)]
        )
        self.backward_layers = nn.ModuleList(
            [LSTMLayer(lstm.projection_dim, lstm) for _ in range(lstm.n_layers)]
        )
        max_chars = config.char_cnn.max_characters_per_token
        markers = [token_to_char_ids(BOS_TOKEN, max_chars), token_to_char_ids(EOS_TOKEN, max_chars)]
        self.register_buffer("_marker_ids", torch.tensor(markers), persistent=False)

    @property
    def num_layers(self) -> int:
        """Number of output layers: the token layer plus one per LSTM layer."""
        return self.config.lstm.n_layers + 1

    def zero_state(self, batch: int) -> list[LayerState]:
        """All-zero recurrent state for ``batch`` rows."""
        p, h = self.config.lstm.projection_dim, self.config.lstm.dim
        ref = self.token_encoder.proj_b
        return [
            LayerState(
                ref.new_zeros(batch, p),
                ref.new_zeros(batch, h),
                ref.new_zeros(batch, p),
                ref.new_zeros(batch, h),
            )
            for _ in self.forward_layers
        ]

    def forward(
        self, char_ids: Tensor, state: list[LayerState] | None = None, keep_boundaries: bool = False
    ) -> BiLMOutput:
        char_ids = char_ids.to(self.token_encoder.proj_b.device)  # ids built on the CPU, a model elsewhere
        batch, steps, _ = char_ids.shape
        # The LSTM input x: <S> w_1 .. w_n </S> per row, then padding.
        word_emb, x, lengths = tokens_with_boundaries(self.token_encoder, char_ids, self._marker_ids)
        mask = torch.arange(steps, device=x.device) < lengths.unsqueeze(1)
        lengths2 = lengths + 2
        mask2 = torch.arange(steps + 2, device=x.device) < lengths2.unsqueeze(1)
        if state is None:
            state = self.zero_state(batch)

        layers = [x.masked_fill(~mask2.unsqueeze(2), 0.0) if keep_boundaries else word_emb]
        final: list[LayerState] = []
        fwd_in, bwd_in = x, _reverse_rows(x, lengths2)
        for k, (fwd_layer, bwd_layer) in enumerate(zip(self.forward_layers, self.backward_layers)):
            s = state[k]
            fwd_out, fh, fc = fwd_layer(fwd_in, mask2, s.forward_h, s.forward_c)
            bwd_out, bh, bc = bwd_layer(bwd_in, mask2, s.backward_h, s.backward_c)
            if has_skip_connection(self.config.lstm, k):
                fwd_out = fwd_out + fwd_in
                bwd_out = bwd_out + bwd_in
            final.append(LayerState(fh, fc, bh, bc))
            both = torch.cat([fwd_out, _reverse_rows(bwd_out, lengths2)], dim=2)
            if keep_boundaries:
                layers.append(both)
            else:
                layers.append(both[:, 1 : steps + 1].masked_fill(~mask.unsqueeze(2), 0.0))
            fwd_in, bwd_in = fwd_out, bwd_out
        return BiLMOutput(layers=layers, mask=mask2 if keep_boundaries else mask, state=final)
