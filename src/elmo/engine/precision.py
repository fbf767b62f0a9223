"""Matrix products in the engine's precisions: float32, bfloat16, int8 (dynamic quantization).

Every big product of the model goes through :class:`Linear` (one ``x @ W + b``). The
precision decides the weight format and the dtype of the results:

- ``float32``: float32 weights.
- ``bfloat16``: bfloat16 copies of the weights; inputs are cast to bfloat16 and the
  results are bfloat16. Fast where the hardware multiplies bfloat16 natively (AMX,
  AVX-512 BF16, recent GPUs); elsewhere slower than float32.
- ``int8``: weights quantized per output column to int8, activations quantized per call
  (dynamic quantization, PyTorch's ``quantized::linear_dynamic``; 7-bit activations on
  CPUs without VNNI); results float32. CPU only.

The backend decides how float32 and bfloat16 products run. On CPUs, with PyTorch built
with oneDNN (:data:`ONEDNN`), the weight is reordered once into oneDNN's blocked layout
and every product is one oneDNN inner product with the bias fused in
(``mkldnn::_linear_pointwise``): on x86 CPUs this runs the narrow products of a time step
several times faster than the BLAS behind ``torch.addmm``, which on CPUs other than
Intel's may not even use their widest vector units. Elsewhere (GPUs, builds without
oneDNN, ``ONEDNN = False``) products are ``torch.addmm`` / ``torch.mm``.

Every product covers at least :data:`elmo.model.MIN_ROWS` rows (:class:`Linear` pads
them), as in the plain model, so that a row's result does not depend on how many other
rows share the product.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from elmo.choices import PRECISIONS
from elmo.model import MIN_ROWS

__all__ = [
    "ONEDNN",
    "PRECISIONS",
    "FlopCounter",
    "Linear",
    "PairLinear",
    "activation_dtype",
    "backend_for",
    "count_flops",
    "native_bfloat16",
    "pad_rows",
]


# Whether CPU products in float32 and bfloat16 run as oneDNN inner products on reordered
# weights (see the module docstring). Set to False to use torch.addmm everywhere (what
# GPUs run); it applies to Linear objects made afterwards.
ONEDNN = (
    torch.backends.mkldnn.is_available()
    and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
)
# Row count oneDNN's weight layout is chosen for: the width of a time step's products.
ONEDNN_ROWS_HINT = 64


@dataclass
class FlopCounter:
    """Floating-point operations of the products run while counting (multiply-add = 2),
    padding rows included: what the engine really computes, for profiles."""

    flops: int = 0


# The counter of the innermost count_flops() block; None (the normal case) costs every
# product one check.
_counter: FlopCounter | None = None
# Products of several threads add to one counter: the additions take this lock.
_counter_lock = threading.Lock()


def _count(flops: int) -> None:
    """Add ``flops`` to the active counter, if any (called only while one is active)."""
    counter = _counter
    if counter is not None:
        with _counter_lock:
            counter.flops += flops


@contextlib.contextmanager
def count_flops() -> Iterator[FlopCounter]:
    """Count the FLOPs of every :class:`Linear` and :class:`PairLinear` product run in the
    block (in this process, any thread); an enclosing block counts them too. The counts of
    concurrent products are exact; blocks themselves nest, so open them from one thread."""
    global _counter
    outer, counter = _counter, FlopCounter()
    _counter = counter
    try:
        yield counter
    finally:
        _counter = outer
        if outer is not None:
            with _counter_lock:
                outer.flops += counter.flops


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
        return any(getattr(cpu, name, lambda: False)() for name in checks) and _onednn_bfloat16()
    return True


@functools.cache
def _onednn_bfloat16() -> bool:
    """Whether oneDNN takes bfloat16 products here. The CPU's flags are not enough: oneDNN
    can be restricted to older instructions (``ONEDNN_MAX_CPU_ISA=AVX2``), and then refuses
    bfloat16 weights."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check()) if check is not None else True


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


def backend_for(precision: str, device: torch.device) -> str:
    """How products in ``precision`` run on ``device``: ``"onednn"``, ``"torch"`` or ``"int8"``."""
    if precision == "int8":
        return "int8"
    cpu = device.type == "cpu"
    if ONEDNN and cpu and (precision == "float32" or native_bfloat16(device)):
        return "onednn"
    return "torch"


class Linear:
    """``x @ weight + bias`` for 2-D ``x`` in one precision; ``weight`` is ``[in, out]``.

    Calls return a new tensor ``[rows, out]`` (float32 for int8, else the precision's
    dtype). ``backend`` says how products run: ``"onednn"`` (a reordered copy of the
    weight), ``"torch"`` (``torch.addmm``; float32 contiguous weights are used as they
    are, without a copy) or ``"int8"`` (a quantized copy).

    Read-only after construction (the reordered or prepacked weight included): one
    object serves concurrent calls from many threads.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None, precision: str) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {', '.join(PRECISIONS)}, found {precision!r}")
        self.precision = precision
        self.in_features, self.out_features = weight.shape
        self.backend = "torch"
        self._packed: Any = None  # int8: the prepacked quantized weight
        self.weight: Tensor | None = None
        self.bias: Tensor | None = None
        weight = weight.detach()
        if precision == "int8":
            if weight.device.type != "cpu":
                raise ValueError("int8: dynamic quantization runs on the CPU only; use bfloat16 on GPUs")
            _quantized_engine()
            w = weight.t().contiguous().float()  # quantized linear wants [out, in]
            # Symmetric per-output-column scales: the largest weight of a column maps to 127.
            scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12).double()
            zero = torch.zeros(w.shape[0], dtype=torch.long)
            b = None if bias is None else bias.detach().float().contiguous()
            with warnings.catch_warnings():
                # PyTorch announces the move of quantized tensors to torchao; they still work.
                warnings.simplefilter("ignore")
                qweight = torch.quantize_per_channel(w, scale, zero, 0, torch.qint8)
                self._packed = torch.ops.quantized.linear_prepack(qweight, b)
            self.backend = "int8"
            return
        dtype = activation_dtype(precision)
        self.bias = None if bias is None else bias.detach().to(dtype).contiguous()
        self.backend = backend_for(precision, weight.device)
        if self.backend == "onednn":
            # oneDNN wants [out, in]; the reorder makes its own copy in its blocked layout.
            w = weight.t().to(dtype).contiguous()
            self.weight = torch.ops.mkldnn._reorder_linear_weight(w, ONEDNN_ROWS_HINT)
        else:
            self.weight = weight.to(dtype).contiguous()

    def __call__(self, x: Tensor) -> Tensor:
        """The product for ``x`` [rows, in]; rows are padded to MIN_ROWS internally."""
        rows = x.shape[0]
        if rows < MIN_ROWS:
            return self._apply(pad_rows(x))[:rows]
        return self._apply(x)

    def _apply(self, x: Tensor) -> Tensor:
        if _counter is not None:
            _count(2 * x.shape[0] * self.in_features * self.out_features)
        if self.backend == "int8":
            return torch.ops.quantized.linear_dynamic(x.float().contiguous(), self._packed, _reduce_range())
        assert self.weight is not None  # every backend but int8 has one
        x = x.to(self.weight.dtype)
        if self.backend == "onednn":
            return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.weight, self.bias, "none", [], "")
        if self.bias is None:
            return torch.mm(x, self.weight)
        return torch.addmm(self.bias, x, self.weight)


class PairLinear:
    """Two products of the same shape in one batched call: ``x[d] @ weight[d] + bias[d]``.

    For the ``"torch"`` backend (GPUs): one ``torch.baddbmm`` for both LSTM directions,
    half the kernel launches of two :class:`Linear` calls. ``weights`` are two ``[in,
    out]`` matrices, ``biases`` two ``[out]`` vectors or None; float32 or bfloat16.
    """

    backend = "torch"

    def __init__(self, weights: tuple[Tensor, Tensor], biases: tuple[Tensor, Tensor] | None, precision: str):
        if precision not in ("float32", "bfloat16"):
            raise ValueError(f"precision: expected float32 or bfloat16, found {precision!r}")
        dtype = activation_dtype(precision)
        self.in_features, self.out_features = weights[0].shape
        self.weight = torch.stack([w.detach().to(dtype) for w in weights])
        self.bias = (
            None if biases is None else torch.stack([b.detach().to(dtype) for b in biases]).unsqueeze(1)
        )

    def __call__(self, x: Tensor) -> Tensor:
        """``[2, rows, in]`` -> ``[2, rows, out]``; rows are padded to MIN_ROWS internally."""
        rows = x.shape[1]
        if rows < MIN_ROWS:
            return self(pad_rows(x))[:, :rows]
        if _counter is not None:
            _count(2 * 2 * rows * self.in_features * self.out_features)
        x = x.to(self.weight.dtype)
        if self.bias is None:
            return torch.bmm(x, self.weight)
        return torch.baddbmm(self.bias, x, self.weight)
