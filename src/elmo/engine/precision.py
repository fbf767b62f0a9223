"""Matrix products in the engine's precisions: float32, bfloat16, int8 (dynamic quantization).

Every big product of the model goes through :class:`Linear` (one ``x @ W + b``) or
:class:`StackedLinear` (the forward and backward directions' ``x[d] @ W[d]`` in one call).
The precision decides the weight format and the dtype of the results:

- ``float32``: the plain model's weights, used as they are (views, no copy).
- ``bfloat16``: bfloat16 copies of the weights; inputs are cast to bfloat16 and the
  results are bfloat16. Fast where the hardware multiplies bfloat16 natively (AMX,
  AVX-512 BF16, recent GPUs); elsewhere slower than float32.
- ``int8``: weights quantized per output column to int8, activations quantized per call
  (dynamic quantization, PyTorch's ``quantized::linear_dynamic``); results float32.
  CPU only.

Every product is padded to at least :data:`elmo.model.MIN_ROWS` rows, as in the plain
model, so that a row's result does not depend on how many other rows share the product.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from elmo.model import MIN_ROWS

__all__ = [
    "PRECISIONS",
    "Linear",
    "StackedLinear",
    "activation_dtype",
    "executed_flops",
    "native_bfloat16",
    "pad_rows",
]

PRECISIONS = ("float32", "bfloat16", "int8")


# Floating-point operations of all products run so far (multiply-add = 2), padding rows
# included: what the engine really computes, for profiles (see benchmarks/bench_inference.py).
_executed = [0]


def executed_flops(reset: bool = False) -> int:
    """FLOPs of the matrix products run since the last reset; ``reset`` starts over."""
    value = _executed[0]
    if reset:
        _executed[0] = 0
    return value


def activation_dtype(precision: str) -> torch.dtype:
    """The dtype the engine keeps activations in for ``precision``."""
    return torch.bfloat16 if precision == "bfloat16" else torch.float32


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices in hardware (else it is emulated, slowly)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = getattr(torch, "cpu", None)
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(cpu, name, lambda: False)() for name in checks)
    return True


def pad_rows(x: Tensor, rows: int = MIN_ROWS) -> Tensor:
    """``x`` with zero rows appended (along dim -2) up to ``rows``; unchanged if it has enough."""
    have = x.shape[-2]
    if have >= rows:
        return x
    pad = x.new_zeros(*x.shape[:-2], rows - have, x.shape[-1])
    return torch.cat([x, pad], dim=-2)


def _quantized_engine() -> str:
    """Pick PyTorch's quantized backend once: x86 (fbgemm + oneDNN) where available."""
    engines = torch.backends.quantized.supported_engines
    for name in ("x86", "fbgemm", "onednn"):
        if name in engines:
            if torch.backends.quantized.engine != name:
                torch.backends.quantized.engine = name
            return name
    raise RuntimeError(f"int8: this PyTorch build has no x86 quantized backend (found {engines})")


class Linear:
    """``x @ weight + bias`` for 2-D ``x`` in one precision; ``weight`` is ``[in, out]``."""

    def __init__(self, weight: Tensor, bias: Tensor | None, precision: str) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {', '.join(PRECISIONS)}, found {precision!r}")
        self.precision = precision
        self.in_features, self.out_features = weight.shape
        self._packed = None
        if precision == "int8":
            if weight.device.type != "cpu":
                raise ValueError("int8: dynamic quantization runs on the CPU only; use bfloat16 on GPUs")
            _quantized_engine()
            w = weight.detach().t().contiguous().float()  # quantized linear wants [out, in]
            # Symmetric per-output-column scales: the largest weight of a column maps to 127.
            scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12).double()
            zero = torch.zeros(w.shape[0], dtype=torch.long)
            b = None if bias is None else bias.detach().float().contiguous()
            with warnings.catch_warnings():
                # PyTorch announces the move of quantized tensors to torchao; they still work.
                warnings.simplefilter("ignore")
                qweight = torch.quantize_per_channel(w, scale, zero, 0, torch.qint8)
                self._packed = torch.ops.quantized.linear_prepack(qweight, b)
            self.weight = None
            self.bias = None
        else:
            dtype = activation_dtype(precision)
            self.weight = weight.detach().to(dtype)
            self.bias = None if bias is None else bias.detach().to(dtype)

    def __call__(self, x: Tensor, out: Tensor | None = None) -> Tensor:
        """The product for ``x`` [rows, in]; rows are padded to MIN_ROWS internally."""
        rows = x.shape[0]
        if rows < MIN_ROWS:
            result = self._apply(pad_rows(x))[:rows]
            return result if out is None else out.copy_(result)
        if out is not None and self._packed is None:
            return self._apply(x, out)
        result = self._apply(x)
        return result if out is None else out.copy_(result)

    def _apply(self, x: Tensor, out: Tensor | None = None) -> Tensor:
        _executed[0] += 2 * x.shape[0] * self.in_features * self.out_features
        if self._packed is not None:
            # reduce_range=False: the x86 backend has no overflow problem without it.
            return torch.ops.quantized.linear_dynamic(x.float().contiguous(), self._packed, False)
        x = x.to(self.weight.dtype)
        if self.bias is None:
            return torch.mm(x, self.weight, out=out) if out is not None else torch.mm(x, self.weight)
        if out is not None:
            return torch.addmm(self.bias, x, self.weight, out=out)
        return torch.addmm(self.bias, x, self.weight)


class StackedLinear:
    """The two directions' products ``x[d] @ weight[d]`` (no bias) as one batched product.

    ``weights`` are the two ``[in, out]`` matrices. float32 and bfloat16 stack them into
    one ``[2, in, out]`` tensor for ``torch.bmm``; int8 runs two quantized products.
    """

    def __init__(self, weights: tuple[Tensor, Tensor], precision: str) -> None:
        self.precision = precision
        if precision == "int8":
            self._parts = [Linear(w, None, precision) for w in weights]
            self.weight = None
        else:
            dtype = activation_dtype(precision)
            self.weight = torch.stack([w.detach().to(dtype) for w in weights])
            self._parts = None

    def __call__(self, x: Tensor, out: Tensor, add: Tensor | None = None) -> Tensor:
        """``out[d] = x[d] @ weight[d] (+ add[d])`` for ``x`` [2, rows, in], rows >= MIN_ROWS."""
        if self._parts is not None:
            # (the int8 parts count their own products)
            for d in range(2):
                out[d].copy_(self._parts[d](x[d]))
            return out if add is None else out.add_(add)
        _executed[0] += 2 * x.shape[0] * x.shape[1] * x.shape[2] * self.weight.shape[2]
        if add is None:
            return torch.bmm(x, self.weight, out=out)
        if FUSED_ADD[self.precision]:
            return torch.baddbmm(add, x, self.weight, out=out)
        return torch.bmm(x, self.weight, out=out).add_(add)


# Whether ``baddbmm`` (the addition fused into the product) beats ``bmm`` + ``add_``.
FUSED_ADD = {"float32": False, "bfloat16": True}
