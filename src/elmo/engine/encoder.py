"""The token encoder (char CNN, highway, projection) as a few large matrix products.

The plain model runs one ``conv1d`` per filter width. Here each width's convolution is
an ``unfold`` of the character embeddings (a strided view: the windows of ``width``
consecutive characters, flattened) times the filter bank reshaped to
``[width * emb, filters]``: one well-shaped matrix product per width, in the engine's
precision. The file layout of the filters, ``[1, width, emb, filters]``, is already
that matrix, so float32 needs no copy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from elmo.engine.precision import Linear, activation_dtype
from elmo.model import MIN_ROWS, TokenEncoder

__all__ = ["FastTokenEncoder"]

# Tokens per chunk: bounds the convolution outputs (chunk * 44 rows * 1024 filters for the
# widest filter of the released models: 11.5 MB in float32) so that they stay in reused
# heap memory instead of fresh page-faulted allocations.
CHUNK_TOKENS = 64
# Tokens per highway / projection product (a multiple of MIN_ROWS): [1024, 2048] inputs
# (8 MB in float32) already run these products near the machine's peak.
HIGHWAY_TOKENS = 1024


class FastTokenEncoder:
    """Maps unique tokens' character ids ``[U, C]`` to their representations ``[U, P]``.

    Read-only after construction, and every call's buffers are its own: one encoder
    serves concurrent calls."""

    def __init__(self, plain: TokenEncoder, precision: str) -> None:
        self.precision = precision
        dtype = activation_dtype(precision)
        self.relu = plain.activation == "relu"
        self.char_embed = plain.char_embed.detach().to(dtype)
        # Convolutions stay in float32 or bfloat16: their inner dimension (width * 16)
        # is too small for int8 products to pay off, and they are a small share of the time.
        conv_precision = "bfloat16" if precision == "bfloat16" else "float32"
        self.convs = []
        for w in plain.conv_weights:
            _, width, emb, n = w.shape
            self.convs.append((width, Linear(w.detach().reshape(width * emb, n), None, conv_precision)))
        self.conv_bias = torch.cat([b.detach() for b in plain.conv_biases]).to(dtype)
        self.highways = [
            (Linear(wc, bc, precision), Linear(wt, bt, precision))
            for wc, bc, wt, bt in zip(
                plain.highway_carry_w,
                plain.highway_carry_b,
                plain.highway_transform_w,
                plain.highway_transform_b,
            )
        ]
        self.proj = Linear(plain.proj_w, plain.proj_b, precision)
        self.width = plain.proj_w.shape[1]
        self.dtype = dtype

    def __call__(self, char_ids: Tensor) -> Tensor:
        """``[U, C]`` +1-shifted character ids -> ``[U, P]`` in the activation dtype."""
        n = char_ids.shape[0]
        if n == 0:
            return self.char_embed.new_zeros(0, self.width)
        # Pad to a multiple of MIN_ROWS tokens: every product then has enough rows to stay on
        # one BLAS kernel, and elementwise passes cover whole vectors, so a token's result
        # is the same whichever other tokens it is encoded with (cache hits stay exact).
        padded = -(-n // MIN_ROWS) * MIN_ROWS
        if padded != n:
            char_ids = torch.cat([char_ids, char_ids.new_ones(padded - n, char_ids.shape[1])])
        # The char CNN in chunks (its outputs are large); highway and projection over all
        # tokens at once, in chunks of HIGHWAY_TOKENS (fewer, better-shaped products).
        parts = [self._convolve(c) for c in char_ids.split(CHUNK_TOKENS)]
        h = parts[0] if len(parts) == 1 else torch.cat(parts)
        parts = [self._highway(c) for c in h.split(HIGHWAY_TOKENS)]
        out = parts[0] if len(parts) == 1 else torch.cat(parts)
        return out[:n]

    def _convolve(self, char_ids: Tensor) -> Tensor:
        n, chars = char_ids.shape
        x = F.embedding(char_ids, self.char_embed)  # [n, C, emb], contiguous
        emb = x.shape[2]
        pooled = []
        for width, conv in self.convs:
            positions = chars - width + 1
            # Windows of `width` characters, flattened to width * emb (a copy made by reshape).
            windows = x.as_strided((n, positions, width * emb), (chars * emb, emb, 1))
            y = conv(windows.reshape(n * positions, width * emb))
            # Max over positions, then bias and activation, as the plain model (exactly equal:
            # adding a constant after the max rounds the same as before it).
            pooled.append(y.view(n, positions, -1).amax(dim=1))
        h = torch.cat(pooled, dim=1).add_(self.conv_bias)
        return h.relu_() if self.relu else h.tanh_()

    def _highway(self, h: Tensor) -> Tensor:
        for carry, transform in self.highways:
            gate = carry(h).sigmoid_()
            t = transform(h).relu_().mul_(gate)
            # g * t + (1 - g) * h, in the plain model's order of operations (same rounding).
            h = t.add_(h.mul_(gate.neg_().add_(1.0)))
        return self.proj(h).to(self.dtype)
