"""Floating-point operations of the biLM per token, for throughput in GFLOP/s.

Counts multiply-adds as two operations, of the matrix products only (elementwise work is
a few percent), per real token of a sentence, as a straightforward implementation
computes them: no cache, no sharing between tokens. The sentence markers' LSTM steps are
not counted. For the original model: 17.6 M (char CNN) + 33.6 M (highway) + 2.1 M
(projection) + 151 M (LSTMs) = 204 M. What the engine really runs (the token cache and
shared tokens save work, padding rows add some) is counted by
:func:`elmo.engine.precision.count_flops`.
"""

from __future__ import annotations

from elmo.config import ElmoConfig

__all__ = ["model_flops"]


def model_flops(config: ElmoConfig) -> dict[str, int]:
    """FLOPs per token by part: ``char_cnn``, ``highway``, ``projection``, ``lstm``, ``total``."""
    cnn, lstm = config.char_cnn, config.lstm
    chars, emb, width = cnn.max_characters_per_token, cnn.embedding_dim, cnn.n_filters
    parts = {
        "char_cnn": sum(2 * (chars - w + 1) * w * emb * n for w, n in cnn.filters),
        "highway": cnn.n_highway * 2 * 2 * width * width,
        "projection": 2 * width * lstm.projection_dim,
        # per layer and direction: gates from [x, h] (both P wide) and the cell projection
        "lstm": lstm.n_layers
        * 2
        * (2 * 2 * lstm.projection_dim * 4 * lstm.dim + 2 * lstm.dim * lstm.projection_dim),
    }
    parts["total"] = sum(parts.values())
    return parts
