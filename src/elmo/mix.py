"""The learned scalar mix of the biLM layers: ``gamma * sum_k softmax(w)_k * layer_k``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["ScalarMix", "mix_layers"]


class ScalarMix(nn.Module):
    """Softmax-normalised layer weights and a scale, as in the paper and the TF Hub module.

    ``weights`` start at zero (equal mix) and ``gamma`` at 1 unless given. With
    ``layer_norm``, each layer is first normalised by the mean and variance of its
    elements under ``mask`` (over the whole batch), as AllenNLP's ``do_layer_norm``.
    """

    def __init__(
        self,
        num_layers: int,
        initial_weights: Sequence[float] | None = None,
        gamma: float = 1.0,
        trainable: bool = True,
        layer_norm: bool = False,
    ) -> None:
        super().__init__()
        init = [0.0] * num_layers if initial_weights is None else [float(w) for w in initial_weights]
        if len(init) != num_layers:
            raise ValueError(
                f"initial_weights: expected {num_layers} values (one per layer), found {len(init)}"
            )
        self.weights = nn.Parameter(torch.tensor(init), requires_grad=trainable)
        self.gamma = nn.Parameter(torch.tensor(float(gamma)), requires_grad=trainable)
        self.layer_norm = layer_norm

    def forward(self, layers: Sequence[Tensor], mask: Tensor | None = None) -> Tensor:
        return mix_layers(layers, self.weights, self.gamma, mask, self.layer_norm)


def mix_layers(
    layers: Sequence[Tensor],
    weights: Tensor,
    gamma: Tensor,
    mask: Tensor | None = None,
    layer_norm: bool = False,
) -> Tensor:
    """``gamma * sum_k softmax(weights)_k * layer_k``, each layer first normalised under
    ``mask`` with ``layer_norm``. ``weights``: one pre-softmax value per layer."""
    if len(layers) != weights.numel():
        raise ValueError(f"expected {weights.numel()} layers, found {len(layers)}")
    w = torch.softmax(weights, dim=0)
    if layer_norm:
        if mask is None:
            raise ValueError("layer_norm needs the mask of real positions")
        layers = [_masked_layer_norm(x, mask) for x in layers]
    out = w[0] * layers[0]
    for k in range(1, len(layers)):
        out = out + w[k] * layers[k]
    return gamma * out


def _masked_layer_norm(x: Tensor, mask: Tensor) -> Tensor:
    m = mask.unsqueeze(-1).to(x.dtype)
    count = m.sum() * x.shape[-1]
    mean = (x * m).sum() / count
    var = (((x - mean) * m) ** 2).sum() / count
    return (x - mean) / torch.sqrt(var + 1e-13)
