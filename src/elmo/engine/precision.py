"""Matrix products in the engine's precisions: float32, bfloat16, int8 (dynamic quantization).

Every big product of the model goes through :class:`Linear` (one ``x @ W + b``) or
:class:`StackedLinear` (the forward and backward directions' products of the recurrence
in one call, in feature-major layout).
The precision decides the weight format and the dtype of the results:

- ``float32``: the plain model's weights, used as they are (views, no copy) in
  :class:`Linear`, as contiguous transposed copies in :class:`StackedLinear`.
- ``bfloat16``: bfloat16 copies of the weights; inputs are cast to bfloat16 and the
  results are bfloat16. Fast where the hardware multiplies bfloat16 natively (AMX,
  AVX-512 BF16, recent GPUs); elsewhere slower than float32.
- ``int8``: weights quantized per output column to int8, activations quantized per call
  (dynamic quantization, PyTorch's ``quantized::linear_dynamic``; 7-bit activations on
  CPUs without VNNI); results float32. CPU only.

Every product covers at least :data:`elmo.model.MIN_ROWS` rows (:class:`Linear` pads
them; callers of :class:`StackedLinear` pass at least that many columns), as in the
plain model, so that a row's result does not depend on how many other rows share the
product.
"""

from __future__ import annotations

import functools
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


@functools.cache
def _reduce_range() -> bool:
    """Whether int8 activations must use 7 bits: x86 CPUs without VNNI multiply u8 x s8 pairs
    with a saturating 16-bit sum (``vpmaddubsw``), which overflows with full 8-bit inputs
    (measured on an AVX2 CPU: 5x the error, per-token cosine 0.97). With VNNI, 8 bits."""
    check = getattr(torch.cpu, "_is_vnni_supported", None)
    return not (check is not None and check())


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
            return torch.ops.quantized.linear_dynamic(x.float().contiguous(), self._packed, _reduce_range())
        x = x.to(self.weight.dtype)
        if self.bias is None:
            return torch.mm(x, self.weight, out=out) if out is not None else torch.mm(x, self.weight)
        if out is not None:
            return torch.addmm(self.bias, x, self.weight, out=out)
        return torch.addmm(self.bias, x, self.weight)


class StackedLinear:
    """The two directions' products in feature-major layout: ``y[d] = W[d] x[d] (+ b[d])``.

    The recurrence keeps its activations feature-major (``[2, features, rows]``, one
    column per sequence row): with the long weight dimension as the rows of the product,
    BLAS runs the narrow products of a time step (tens of rows) markedly faster than in
    the row-major ``x @ W`` form, and one column's result does not depend on the other
    columns (given at least :data:`elmo.model.MIN_ROWS` of them, which callers ensure).

    ``weights`` are the two ``[out, in]`` matrices (transposes of the file layout's
    ``[in, out]``); ``biases`` two ``[out]`` vectors or None. float32 and bfloat16 keep
    them as one contiguous ``[2, out, in]`` tensor for ``torch.bmm``; int8 runs two
    quantized row-major products on transposed copies of the inputs.
    """

    def __init__(
        self, weights: tuple[Tensor, Tensor], biases: tuple[Tensor, Tensor] | None, precision: str
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {', '.join(PRECISIONS)}, found {precision!r}")
        self.precision = precision
        self.out_features, self.in_features = weights[0].shape
        if precision == "int8":
            # Linear wants [in, out]; it quantizes per output feature.
            self._parts = [
                Linear(w.t(), None if biases is None else biases[d], precision) for d, w in enumerate(weights)
            ]
            self.weight = self.bias = None
        else:
            dtype = activation_dtype(precision)
            self._parts = None
            self.weight = torch.stack([w.detach().to(dtype) for w in weights]).contiguous()
            self.bias = (
                None if biases is None else torch.stack([b.detach().to(dtype) for b in biases]).unsqueeze(2)
            )

    def __call__(self, x: Tensor, out: Tensor, add: Tensor | None = None) -> Tensor:
        """``out[d] = W[d] @ x[d] (+ b[d]) (+ add[d])`` for ``x`` [2, in, cols], ``out`` [2, out, cols].

        ``add`` (same shape as ``out``, any strides, or ``out`` itself) is summed inside the
        product (BLAS's ``C = A B + C``), which saves a pass over ``out``; not together
        with a bias.
        """
        if self._parts is not None:
            for d in range(2):
                if add is out:
                    out[d].add_(self.one(d, x[d]))
                else:
                    self.one(d, x[d], out[d])
                    if add is not None:
                        out[d].add_(add[d])
            return out
        _executed[0] += 2 * 2 * x.shape[2] * self.in_features * self.out_features
        x = x.to(self.weight.dtype)
        if add is not None:
            assert self.bias is None
            return torch.baddbmm(add, self.weight, x, out=out)
        if self.bias is None:
            return torch.bmm(self.weight, x, out=out)
        return torch.baddbmm(self.bias, self.weight, x, out=out)

    def one(self, d: int, x: Tensor, out: Tensor | None = None) -> Tensor:
        """Direction ``d`` alone: ``W[d] @ x (+ b[d])`` for ``x`` [in, cols] -> [out, cols]."""
        if self._parts is not None:
            # (the int8 part counts its own product)
            result = self._parts[d](x.t().contiguous()).t()
            return result.contiguous() if out is None else out.copy_(result)
        _executed[0] += 2 * x.shape[1] * self.in_features * self.out_features
        x = x.to(self.weight.dtype)
        w = self.weight[d]
        if self.bias is None:
            return torch.mm(w, x) if out is None else torch.mm(w, x, out=out)
        if out is None:
            return torch.addmm(self.bias[d], w, x)
        return torch.addmm(self.bias[d], w, x, out=out)
