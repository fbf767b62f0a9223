"""bilm-tf's optimiser: Adagrad without epsilon after one global-norm gradient clip."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["Adagrad", "clip_by_global_norm", "global_norm"]


def global_norm(grads: list[Tensor]) -> Tensor:
    """The L2 norm of all gradients together (TensorFlow's ``global_norm``)."""
    total = torch.zeros((), dtype=torch.float32, device=grads[0].device if grads else "cpu")
    for g in grads:
        total = total + g.float().pow(2).sum()
    return total.sqrt()


@torch.no_grad()
def clip_by_global_norm(grads: list[Tensor], clip_norm: float) -> Tensor:
    """Scale ``grads`` in place as ``tf.clip_by_global_norm`` does; returns the norm before.

    TensorFlow multiplies by ``clip_norm * min(1 / norm, 1 / clip_norm)``, which is 1 up to
    rounding when the norm is below ``clip_norm``; the same expression is used here so that
    the updates agree bit for bit as far as float32 allows.
    """
    norm = global_norm(grads)
    clip = torch.tensor(clip_norm, dtype=torch.float32, device=norm.device)
    scale = clip * torch.minimum(1.0 / norm, 1.0 / clip)
    if torch.isfinite(scale):
        for g in grads:
            g.mul_(scale.to(g.dtype))
    return norm


class Adagrad:
    """``acc += g * g; w -= lr * g / sqrt(acc)`` with ``acc`` starting at 1.0 (no epsilon).

    TensorFlow's ``AdagradOptimizer(learning_rate, initial_accumulator_value=1.0)`` as
    bilm-tf uses it. Rows whose gradient is zero (softmax rows that no sampled or target
    word touched) are left unchanged, as TensorFlow's sparse update leaves them.
    """

    def __init__(
        self, params: dict[str, nn.Parameter], lr: float = 0.2, initial_accumulator: float = 1.0
    ) -> None:
        self.params = params
        self.lr = lr
        self.accumulators = {
            name: torch.full_like(p, initial_accumulator, memory_format=torch.preserve_format)
            for name, p in params.items()
        }

    @torch.no_grad()
    def step(self) -> None:
        for name, p in self.params.items():
            if p.grad is None:
                continue
            acc = self.accumulators[name]
            acc.addcmul_(p.grad, p.grad)
            p.addcdiv_(p.grad, acc.sqrt(), value=-self.lr)

    def zero_grad(self) -> None:
        for p in self.params.values():
            p.grad = None

    def state_dict(self) -> dict[str, Tensor]:
        return dict(self.accumulators)

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        missing = sorted(set(self.accumulators) - set(state))
        if missing:
            raise KeyError(f"optimizer state lacks accumulators for: {', '.join(missing[:5])}")
        for name, acc in self.accumulators.items():
            if tuple(state[name].shape) != tuple(acc.shape):
                raise ValueError(
                    f"optimizer accumulator {name!r}: expected shape {tuple(acc.shape)}, "
                    f"found {tuple(state[name].shape)}"
                )
            acc.copy_(state[name])
