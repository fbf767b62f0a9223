"""The biLSTM layers over packed sequences: no work on padding, both directions at once.

Packing. Rows are sorted by length (markers included), longest first. Time step ``t``
then concerns the first ``n_t`` rows only, and the packed sequence stores step ``t``'s
rows contiguously at ``offsets[t] : offsets[t] + n_t`` (time major, like PyTorch's
``PackedSequence``): ``sum(lengths)`` rows, no padding. The backward direction reads
each row reversed; reversed rows have the same lengths, so both directions share one
packing and are stacked: direction 0 forward, 1 backward.
A layer's packed output is directly the next layer's packed input, in both directions:
no reordering between layers.

Layout. Activations are feature-major: ``[2, features, rows]``, one column per packed
row, and every product is ``W x`` with the weight's long output dimension as the rows of
the product (see :class:`~elmo.engine.precision.StackedLinear`). Step ``t``'s rows are
the columns ``offsets[t] : offsets[t] + n_t``.

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

from elmo.engine.precision import StackedLinear
from elmo.model import FORGET_BIAS, MIN_ROWS, LSTMLayer

__all__ = ["LayerWeights", "PackedBatch", "TokenInputs", "run_layer"]


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


@dataclass
class TokenInputs:
    """The first layer's input: each packed row is a token of the batch's token table.

    ``table`` [U, P]: the batch's distinct tokens' representations (row-major); ``index``
    [2, total]: the table row of each packed row, per direction.
    """

    table: Tensor
    index: Tensor


class LayerWeights:
    """One biLSTM layer's weights for the engine, in one precision, feature-major.

    ``inputs``: ``W_x x + b`` with the forget bias folded into ``b``; ``hidden``:
    ``W_h h``; ``projection``: ``W_p m``; each for both directions (see
    :class:`~elmo.engine.precision.StackedLinear`).
    """

    def __init__(self, forward: LSTMLayer, backward: LSTMLayer, precision: str) -> None:
        self.cell_clip = forward.cell_clip
        self.proj_clip = forward.proj_clip
        dim = forward.projection.shape[0]
        self.cells = dim
        self.width = forward.projection.shape[1]
        biases = []
        for layer in (forward, backward):
            bias = layer.bias.detach().clone()
            bias[2 * dim : 3 * dim] += FORGET_BIAS  # gates i, j, f, o: f is the third block
            biases.append(bias)
        layers = (forward, backward)
        self.inputs = StackedLinear(
            tuple(layer.kernel[: layer.input_dim].t() for layer in layers), tuple(biases), precision
        )
        self.hidden = StackedLinear(
            tuple(layer.kernel[layer.input_dim :].t() for layer in layers), None, precision
        )
        self.projection = StackedLinear(tuple(layer.projection.t() for layer in layers), None, precision)


# Column counts of the recurrent products are rounded up to a multiple of this: oneDNN
# generates (JIT) a bfloat16 kernel per distinct shape, and a sorted batch's shrinking
# row count would otherwise make one per step at first; 16 rows is also one AMX tile.
ROW_ALIGN = {torch.bfloat16: 16}


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _columns(n: int, align: int) -> int:
    """Columns a product over ``n`` rows runs with: at least MIN_ROWS, a multiple of ``align``."""
    return _round_up(max(n, MIN_ROWS), align)


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


def _slack_columns(align: int) -> int:
    """Zero columns a layer's packed output carries past its padding column.

    The next layer's input products read up to ``_columns(n) - n`` columns past a block.
    """
    return MIN_ROWS + align


# Bound on the first layer's input products of a batch's distinct tokens ([2, 4H, U]),
# in bytes; a batch with more distinct tokens has them computed per block of steps.
TOKEN_PRODUCT_BYTES = 256 * 2**20


def _token_products(weights: LayerWeights, inputs: TokenInputs, align: int) -> Tensor | None:
    """The first layer's input products of every distinct token, ``[2, 4H, U]`` (or None).

    Natural text repeats tokens within a batch, so this is much less work than one
    product column per packed row. None if it would take more than TOKEN_PRODUCT_BYTES.
    """
    table = inputs.table
    rows = table.shape[0]
    size = 2 * 4 * weights.cells * _columns(rows, align) * table.element_size()
    if size > TOKEN_PRODUCT_BYTES:
        return None
    columns = _token_columns(table, torch.arange(rows, device=table.device), align)
    out = table.new_empty(2, 4 * weights.cells, columns.shape[1])
    for d in range(2):
        weights.inputs.one(d, columns, out=out[d])
    return out


def _input_products(
    weights: LayerWeights,
    inputs: Tensor | TokenInputs,
    first: int,
    end: int,
    out: Tensor,
    align: int,
    tokens: Tensor | None = None,
) -> None:
    """``out[d][:, :end - first] = W_x[d] input_d[first:end] + b[d]`` for the rows of one block.

    ``inputs`` is either the packed layer input ``[2, in, total + 1 + slack]`` (feature-major)
    or, for the first layer, :class:`TokenInputs`. Then the columns are gathered from
    ``tokens`` (:func:`_token_products`) or, without it, the product is taken once per
    distinct token of the block: exactly the numbers of a full product either way, since
    columns are independent. ``out`` is ``[2, 4H, cols]`` with ``cols`` =
    ``_columns(end - first, align)``; columns past ``end - first`` get values that are
    finite and unused.
    """
    if not isinstance(inputs, TokenInputs):
        weights.inputs(inputs[:, :, first : first + out.shape[2]], out=out)
        return
    index = inputs.index[:, first:end]
    for d in range(2):
        if tokens is None:
            unique, inverse = torch.unique(index[d], return_inverse=True)
            product = weights.inputs.one(d, _token_columns(inputs.table, unique, align))
        else:
            product, inverse = tokens[d], index[d]
        torch.index_select(product, 1, inverse, out=out[d, :, : end - first])


def _token_columns(table: Tensor, rows: Tensor, align: int) -> Tensor:
    """``table[rows]`` transposed (``[in, cols]``), padded with row 0 to a product's columns."""
    cols = _columns(rows.shape[0], align)
    if cols != rows.shape[0]:
        rows = torch.cat([rows, rows.new_zeros(cols - rows.shape[0])])
    return table.index_select(0, rows).t()


def run_layer(
    weights: LayerWeights,
    batch: PackedBatch,
    inputs: Tensor | TokenInputs,
    h0: Tensor | None,
    c0: Tensor | None,
    dtype: torch.dtype,
    rows_per_block: int,
    workspace: Callable[[int], Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Run one biLSTM layer over a packed batch, feature-major.

    ``inputs``: see :func:`_input_products`. ``h0`` [2, B, P] and ``c0`` [2, B, H] are the
    initial states in sorted row order (None: zero). ``workspace(numel)`` may provide a
    flat buffer (zero-initialized once; its contents are finite) for the input products.
    Returns the packed outputs ``[2, P, total + 1 + slack]`` (column ``total`` and the
    :func:`_slack_columns` after it are zero: gathers of padding positions read column
    ``total``) and the final ``h`` [2, B, P] and ``c`` [2, B, H] of every row (float32,
    sorted order).
    """
    rows = len(batch.order)
    cells, width = weights.cells, weights.width
    device = (inputs.table if isinstance(inputs, TokenInputs) else inputs).device
    align = ROW_ALIGN.get(dtype, 1)
    out = torch.zeros(2, width, batch.total + 1 + _slack_columns(align), dtype=dtype, device=device)
    # The cell state stays float32 in every precision: it accumulates over the whole
    # sentence. Columns past the active prefix are not touched, so they keep their final values.
    cap = _columns(rows, align)
    c = torch.zeros(2, cells, cap, device=device)
    if c0 is not None:
        c[:, :, :rows] = c0.transpose(1, 2)
    # h of the previous step is the previous projection's result: two buffers used in turn,
    # written as contiguous [2, P, cols] and read as [:, :, :cols'] views.
    h_bufs = [torch.zeros(2 * cap * width, dtype=dtype, device=device) for _ in range(2)]
    h_prev = h_bufs[1].view(2, width, cap)
    if h0 is not None:
        h_prev[:, :, :rows] = h0.transpose(1, 2).to(dtype)
    fresh = h0 is None
    gates_buf = torch.zeros(2 * cap * 4 * cells, dtype=dtype, device=device)
    gates32 = None if dtype == torch.float32 else torch.zeros(2 * cap * 4 * cells, device=device)
    m_buf = torch.zeros(2 * cap * cells, dtype=dtype, device=device)  # o * tanh(c)
    m32 = None if dtype == torch.float32 else torch.zeros(2 * cap * cells, device=device)
    cell_clip, proj_clip = weights.cell_clip, weights.proj_clip
    hidden, projection = weights.hidden, weights.projection
    blocks = _step_blocks(batch, rows_per_block)
    spans = [(batch.offsets[a], batch.offsets[b - 1] + batch.counts[b - 1]) for a, b in blocks]
    need = 2 * 4 * cells * max(_columns(end - first, align) for first, end in spans)
    block_flat = torch.zeros(need, dtype=dtype, device=device) if workspace is None else workspace(need)

    # Views for a step of n active rows, made once per distinct n (a sorted batch has few),
    # so that a step costs its arithmetic calls and little else.
    views: dict[int, _StepViews] = {}
    tokens = _token_products(weights, inputs, align) if isinstance(inputs, TokenInputs) else None
    for (start, stop), (first, end) in zip(blocks, spans):
        block = block_flat[: 2 * 4 * cells * _columns(end - first, align)].view(2, 4 * cells, -1)
        _input_products(weights, inputs, first, end, block, align, tokens)
        for t in range(start, stop):
            n = batch.counts[t]
            v = views.get(n)
            if v is None:
                v = views[n] = _StepViews(n, align, cells, width, gates_buf, gates32, c, m_buf, m32, h_bufs)
            lo = batch.offsets[t] - first
            x_t = block[:, :, lo : lo + n]
            if fresh and t == 0:
                # Zero initial state: W_h h adds exactly nothing.
                v.gates_active.copy_(x_t)
            else:
                # gates = W_h h + x, the sum inside the product. With fewer active rows than
                # the product's columns, x goes into the product's buffer first: the same
                # arithmetic, so a row's result does not depend on how many rows are active.
                if v.cols != n:
                    v.gates_active.copy_(x_t)
                hidden(h_prev[:, :, : v.cols], v.product, add=x_t if v.cols == n else v.product)
            if v.g32 is not None:
                # Nonlinearities and the cell update in float32: bfloat16 rounding of c
                # would accumulate over the sentence.
                v.g32.copy_(v.product)
            v.i.sigmoid_()
            v.j.tanh_()
            v.f.sigmoid_()
            v.o.sigmoid_()
            v.c.mul_(v.f_n).addcmul_(v.i_n, v.j_n)
            if cell_clip is not None:
                v.c.clamp_(-cell_clip, cell_clip)
            if v.m32 is None:
                torch.tanh(v.c, out=v.m).mul_(v.o_n)
            else:
                # One pass writes the bfloat16 result (a float32 product then a cast is two).
                torch.mul(torch.tanh(v.c, out=v.m32), v.o_n, out=v.m)
            h_new = v.h[t % 2]
            projection(v.m_cols, h_new)
            h_t = h_new[:, :, :n]
            if proj_clip is not None:
                h_t.clamp_(-proj_clip, proj_clip)
            o_lo = batch.offsets[t]
            out[:, :, o_lo : o_lo + n] = h_t
            h_prev = h_new
    final_h = out.index_select(2, batch.last).transpose(1, 2).float()
    return out, final_h, c[:, :, :rows].transpose(1, 2)


class _StepViews:
    """The buffers' views for a step with ``n`` active rows (``cols`` >= n in products).

    Gate activations run over all ``cols`` columns (contiguous blocks; the extra columns
    are finite and unused); the cell update only over the ``n`` active ones.
    """

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
        cols = self.cols = _columns(n, align)
        self.product = gates_buf[: 2 * cols * 4 * cells].view(2, 4 * cells, cols)
        self.gates_active = self.product[:, :, :n]
        self.g32 = None if gates32 is None else gates32[: 2 * cols * 4 * cells].view(2, 4 * cells, cols)
        g = self.product if self.g32 is None else self.g32
        self.i, self.j = g[:, :cells], g[:, cells : 2 * cells]
        self.f, self.o = g[:, 2 * cells : 3 * cells], g[:, 3 * cells :]
        self.i_n, self.j_n, self.f_n, self.o_n = (x[:, :, :n] for x in (self.i, self.j, self.f, self.o))
        self.c = c[:, :, :n]
        self.m_cols = m_buf[: 2 * cols * cells].view(2, cells, cols)
        self.m = self.m_cols[:, :, :n]
        self.m32 = None if m32 is None else m32[: 2 * cols * cells].view(2, cells, cols)[:, :, :n]
        self.h = [b[: 2 * cols * width].view(2, width, cols) for b in h_bufs]
