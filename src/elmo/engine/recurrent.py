"""The biLSTM layers over packed sequences: no work on padding, both directions at once.

Packing. Rows are sorted by length (markers included), longest first. Time step ``t``
then concerns the first ``n_t`` rows only, and the packed sequence stores step ``t``'s
rows contiguously at ``offsets[t] : offsets[t] + n_t`` (time major, like PyTorch's
``PackedSequence``): ``sum(lengths)`` rows, no padding. The backward direction reads
each row reversed; reversed rows have the same lengths, so both directions share one
packing and are stacked as ``[2, rows, .]`` tensors, direction 0 forward, 1 backward.
A layer's packed output is directly the next layer's packed input, in both directions:
no reordering between layers.

Per step, per layer: one batched product for the recurrent input of both directions,
the gate nonlinearities in place, one batched product for the projection. The
input-to-hidden products of all steps are computed beforehand, in blocks of steps, as
single large products.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from elmo.engine.precision import Linear, StackedLinear
from elmo.model import FORGET_BIAS, MIN_ROWS, LSTMLayer

__all__ = ["LayerWeights", "PackedBatch", "run_layer"]


@dataclass
class PackedBatch:
    """How a batch of rows with lengths ``lengths`` is packed (see the module docstring).

    ``order[r]`` is the original row of sorted row ``r``; ``rank[b]`` the sorted position
    of original row ``b``. ``counts[t]`` = n_t and ``offsets[t]`` are host integers.
    ``last`` [B] (device, sorted order) is the packed index of each row's last step.
    """

    lengths: list[int]
    order: list[int]
    rank: list[int]
    counts: list[int]
    offsets: list[int]
    total: int
    last: Tensor

    @classmethod
    def build(cls, lengths: list[int], device: torch.device) -> PackedBatch:
        order = sorted(range(len(lengths)), key=lambda b: -lengths[b])
        rank = [0] * len(lengths)
        for r, b in enumerate(order):
            rank[b] = r
        sorted_lengths = [lengths[b] for b in order]
        steps = sorted_lengths[0] if sorted_lengths else 0
        counts, offsets = [], []
        n, total = len(sorted_lengths), 0
        for t in range(steps):
            while n > 0 and sorted_lengths[n - 1] <= t:
                n -= 1
            counts.append(n)
            offsets.append(total)
            total += n
        last = torch.tensor(
            [offsets[length - 1] + r for r, length in enumerate(sorted_lengths)], dtype=torch.long
        ).to(device)
        return cls(lengths, order, rank, counts, offsets, total, last)

    def positions(self, width: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """Packed indices ``[B, width]`` of each (original row, position) in both directions.

        Forward: position p is step p. Backward: position p is step ``length - 1 - p``.
        Positions past a row's end get ``total`` (callers append a zero row there).
        """
        batch, steps = len(self.lengths), len(self.counts)
        offsets = torch.tensor([*self.offsets, self.total], dtype=torch.long)
        lengths = torch.tensor(self.lengths, dtype=torch.long).unsqueeze(1)
        rank = torch.tensor(self.rank, dtype=torch.long).unsqueeze(1)
        p = torch.arange(width, dtype=torch.long).unsqueeze(0).expand(batch, width)
        valid = p < lengths
        fwd = torch.where(valid, offsets[p.clamp(max=steps)] + rank, self.total)
        back_step = (lengths - 1 - p).clamp(min=0)
        bwd = torch.where(valid, offsets[back_step] + rank, self.total)
        return fwd.to(device), bwd.to(device)

    def gather_order(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """Packed ``[2, total]`` values of a per-position table ``index`` [B, S] (original rows).

        Row 0 is the forward reading (step t reads position t), row 1 the backward one
        (step t reads position ``length - 1 - t``).
        """
        device = index.device
        steps = len(self.counts)
        order = torch.tensor(self.order, dtype=torch.long, device=device)
        lengths = torch.tensor([self.lengths[b] for b in self.order], dtype=torch.long, device=device)
        srt = index[:, :steps].index_select(0, order)  # [B, S] sorted rows
        t = torch.arange(steps, device=device).unsqueeze(0)
        valid = t < lengths.unsqueeze(1)
        rev = srt.gather(1, torch.where(valid, lengths.unsqueeze(1) - 1 - t, t))
        # Time-major selection of valid entries: step t's rows are a prefix, in sorted order.
        return srt.t()[valid.t()], rev.t()[valid.t()]


class LayerWeights:
    """One biLSTM layer's weights for the engine, in one precision.

    ``inputs[d]``: ``x @ W_x + b`` with the forget bias folded into ``b``; ``hidden``:
    ``h @ W_h`` for both directions; ``projection``: ``m @ W_p`` for both directions.
    """

    def __init__(self, forward: LSTMLayer, backward: LSTMLayer, precision: str) -> None:
        self.cell_clip = forward.cell_clip
        self.proj_clip = forward.proj_clip
        dim = forward.projection.shape[0]
        self.cells = dim
        self.width = forward.projection.shape[1]
        self.inputs = []
        for layer in (forward, backward):
            bias = layer.bias.detach().clone()
            bias[2 * dim : 3 * dim] += FORGET_BIAS  # gates i, j, f, o: f is the third block
            self.inputs.append(Linear(layer.kernel[: layer.input_dim], bias, precision))
        self.hidden = StackedLinear(
            (forward.kernel[forward.input_dim :], backward.kernel[backward.input_dim :]), precision
        )
        self.projection = StackedLinear((forward.projection, backward.projection), precision)


# Row counts of the recurrent products are rounded up to a multiple of this: oneDNN
# generates (JIT) a bfloat16 kernel per distinct shape, and a sorted batch's shrinking
# row count would otherwise make one per step at first; 16 rows is also one AMX tile.
ROW_ALIGN = {torch.bfloat16: 16}


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _step_blocks(batch: PackedBatch, rows_per_block: int) -> list[tuple[int, int]]:
    """Consecutive step ranges whose packed rows fit ``rows_per_block`` (at least one step)."""
    blocks, start, steps = [], 0, len(batch.counts)
    while start < steps:
        stop = start + 1
        base = batch.offsets[start]
        while stop < steps and batch.offsets[stop] + batch.counts[stop] - base <= rows_per_block:
            stop += 1
        blocks.append((start, stop))
        start = stop
    return blocks


def _input_products(
    weights: LayerWeights,
    inputs: Tensor | tuple[Tensor, Tensor],
    start: int,
    stop: int,
    out: Tensor,
    align: int,
) -> None:
    """``out[d] = input_d[start:stop] @ W_x[d] + b[d]`` for the packed rows of one block.

    ``inputs`` is either the packed layer input ``[2, total + slack, in]`` or, for the first
    layer, ``(table, index)``: token representations ``[U, in]`` and packed token indices
    ``[2, total]``. Then the product is taken once per distinct token of the block and
    gathered (exactly the same rows as a full product, since rows are independent).
    Products have a multiple of ``align`` rows (extra rows read the inputs' slack or repeat
    a token; ``out`` must have room), for the reason given at :data:`ROW_ALIGN`.
    """
    rows = _round_up(stop - start, align)
    for d in range(2):
        if isinstance(inputs, tuple):
            table, index = inputs
            unique, inverse = torch.unique(index[d, start:stop], return_inverse=True)
            padded = _round_up(unique.shape[0], align)
            if padded != unique.shape[0]:
                unique = torch.cat([unique, unique.new_zeros(padded - unique.shape[0])])
            product = weights.inputs[d](table.index_select(0, unique))
            torch.index_select(product, 0, inverse, out=out[d, : stop - start])
        else:
            weights.inputs[d](inputs[d, start : start + rows], out=out[d, :rows])


def run_layer(
    weights: LayerWeights,
    batch: PackedBatch,
    inputs: Tensor | tuple[Tensor, Tensor],
    h0: Tensor | None,
    c0: Tensor | None,
    dtype: torch.dtype,
    rows_per_block: int,
    block_buffer: Callable[[int, int], Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Run one biLSTM layer over a packed batch.

    ``inputs``: see :func:`_input_products`. ``h0`` [2, B, P] and ``c0`` [2, B, H] are the
    initial states in sorted row order (None: zero). ``block_buffer(rows, width)`` may
    provide the ``[2, rows, width]`` workspace of the input products. Returns the packed outputs
    ``[2, total + 1 + slack, P]`` (row ``total`` is zero, for gathers of padding positions) and the
    final ``h`` [2, B, P] and ``c`` [2, B, H] of every row (float32, sorted order).
    """
    rows = len(batch.order)
    cells, width = weights.cells, weights.width
    device = (inputs[0] if isinstance(inputs, tuple) else inputs).device
    align = ROW_ALIGN.get(dtype, 1)
    # One zero row past the end (gathers of padding positions), and slack rows (zero) that
    # the next layer's aligned input products may read.
    out = torch.zeros(2, batch.total + 1 + align, width, dtype=dtype, device=device)
    # The cell state stays float32 in every precision: it accumulates over the whole
    # sentence. Rows past the active prefix are not touched, so they keep their final values.
    c = torch.zeros(2, rows, cells, device=device) if c0 is None else c0.float().clone()
    # Products read and write at least MIN_ROWS rows (rows past the active ones are stale
    # but finite, and their results are dropped), so buffers have at least that many.
    cap = _round_up(max(rows, MIN_ROWS), align)
    # h of the previous step is the previous projection's result: two buffers used in turn,
    # written as contiguous [2, m, P] (a strided product output is slower) and read as
    # [:, :m'] views (strided inputs are not).
    h_bufs = [torch.zeros(2 * cap * width, dtype=dtype, device=device) for _ in range(2)]
    h_prev = h_bufs[1].view(2, cap, width)
    if h0 is not None:
        h_prev[:, :rows] = h0.to(dtype)
    fresh = h0 is None
    gates_buf = torch.empty(2 * cap * 4 * cells, dtype=dtype, device=device)
    gates32 = None if dtype == torch.float32 else torch.empty(2, cap, 4 * cells, device=device)
    m_buf = torch.zeros(2, cap, cells, dtype=dtype, device=device)  # o * tanh(c)
    m32 = None if dtype == torch.float32 else torch.empty(2, cap, cells, device=device)
    cell_clip, proj_clip = weights.cell_clip, weights.proj_clip
    hidden, projection = weights.hidden, weights.projection
    blocks = _step_blocks(batch, rows_per_block)
    largest = max(batch.offsets[b - 1] + batch.counts[b - 1] - batch.offsets[a] for a, b in blocks)
    # Slack rows: a step's product may add up to `cap - n` rows past its own (dropped results).
    if block_buffer is None:
        block_buf = torch.zeros(2, largest + cap, 4 * cells, dtype=dtype, device=device)
    else:
        block_buf = block_buffer(largest + cap, 4 * cells)

    # Views for a step of n active rows, made once per distinct n (a sorted batch has few),
    # so that a step costs its arithmetic calls and little else.
    views: dict[int, _StepViews] = {}
    for start, stop in blocks:
        first, end = batch.offsets[start], batch.offsets[stop - 1] + batch.counts[stop - 1]
        _input_products(weights, inputs, first, end, block_buf, align)
        for t in range(start, stop):
            n = batch.counts[t]
            v = views.get(n)
            if v is None:
                v = views[n] = _StepViews(n, align, cells, width, gates_buf, gates32, c, m_buf, m32, h_bufs)
            lo = batch.offsets[t] - first
            if fresh and t == 0:
                # Zero initial state: h @ W_h adds exactly nothing.
                v.gates.copy_(block_buf[:, lo : lo + n])
            else:
                hidden(h_prev[:, : v.rows], v.product, add=block_buf[:, lo : lo + v.rows])
            if v.gates32 is not None:
                # Nonlinearities and the cell update in float32: bfloat16 rounding of c
                # would accumulate over the sentence.
                v.gates32.copy_(v.gates)
            v.i.sigmoid_()
            v.j.tanh_()
            v.f.sigmoid_()
            v.o.sigmoid_()
            v.c.mul_(v.f).addcmul_(v.i, v.j)
            if cell_clip is not None:
                v.c.clamp_(-cell_clip, cell_clip)
            if v.m32 is None:
                torch.tanh(v.c, out=v.m).mul_(v.o)
            else:
                # One pass writes the bfloat16 result (a float32 product then a cast is two).
                torch.mul(torch.tanh(v.c, out=v.m32), v.o, out=v.m)
            h_new = v.h[t % 2]
            projection(v.m_rows, h_new)
            h_t = v.h_active[t % 2]
            if proj_clip is not None:
                h_t.clamp_(-proj_clip, proj_clip)
            o_lo = batch.offsets[t]
            out[:, o_lo : o_lo + n] = h_t
            h_prev = h_new
    final_h = out.index_select(1, batch.last).float()
    return out, final_h, c


class _StepViews:
    """The buffers' views for a step with ``n`` active rows (``rows`` >= n in products)."""

    def __init__(
        self,
        n: int,
        align: int,
        cells: int,
        width: int,
        gates_buf: Tensor,
        gates32: Tensor | None,
        c: Tensor,
        m_buf: Tensor,
        m32: Tensor | None,
        h_bufs: list[Tensor],
    ) -> None:
        rows = self.rows = _round_up(max(n, MIN_ROWS), align)
        self.product = gates_buf[: 2 * rows * 4 * cells].view(2, rows, 4 * cells)
        self.gates = self.product[:, :n]
        self.gates32 = None if gates32 is None else gates32[:, :n]
        g = self.gates if gates32 is None else self.gates32
        self.i, self.j = g[..., :cells], g[..., cells : 2 * cells]
        self.f, self.o = g[..., 2 * cells : 3 * cells], g[..., 3 * cells :]
        self.c = c[:, :n]
        self.m = m_buf[:, :n]
        self.m_rows = m_buf[:, :rows]
        self.m32 = None if m32 is None else m32[:, :n]
        self.h = [b[: 2 * rows * width].view(2, rows, width) for b in h_bufs]
        self.h_active = [h[:, :n] for h in self.h]
