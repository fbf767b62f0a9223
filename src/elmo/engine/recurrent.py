"""The biLSTM layers over packed sequences: no work on padding or finished rows.

Lanes. Every product of a time step has at least ``MIN_ROWS`` rows (see
:mod:`elmo.model`), so a step with fewer active sentences pays for rows that do nothing:
with all sentences starting at step 0, the longest sentences' last steps run nearly
empty. Sentences are therefore laid out in lanes: a lane is one row of every step,
holding one sentence after another back to back. The longest sentences open the first
``MIN_ROWS`` lanes; each shorter sentence then goes, best fit, into one of those lanes
where it ends by the longest sentence's end, else into a lane of its own. A batch still
takes as many steps as its longest sentence, and its steps carry ``MIN_ROWS`` busy rows
for as long as the batch has the tokens to fill them (``benchmarks/RESULTS.md``). Lanes
are ordered by how long they stay busy, longest first, so step ``t`` concerns the first
``n_t`` lanes only, and the packed sequence stores step ``t``'s rows contiguously at
``offsets[t] : offsets[t] + n_t`` (time major, like PyTorch's ``PackedSequence``):
``sum(lengths)`` rows, no padding. Where a sentence begins in the middle of a lane, its
lane's state is set to the sentence's initial state (zero, or the carried one) before
that step. With every sentence in a lane of its own (``lanes=False``, the default on
GPUs: :data:`LANE_DEVICES`) this is the usual packing by decreasing length.

Each sentence goes through the same products and operations wherever it lies, and a
product's rows do not depend on each other (see :mod:`elmo.engine.precision`): its
results do not depend on its lane or its company.

The backward direction reads each sentence reversed over the same steps of the same lane:
both directions share one packing and are stacked, direction 0 forward, 1 backward
(``[2, rows, features]``). A layer's packed output is directly the next layer's packed
input, in both directions: no reordering between layers.

One product per step (and direction) for the gates. The packed layer input and, beside it,
each row's previous output ``h`` are kept in one matrix ``[x | h]`` (``[rows, in + P]``):
step ``t``'s gates are that matrix's rows ``offsets[t] : offsets[t] + n_t`` times the
whole LSTM kernel (the file layout's ``[in + P, 4H]``), bias included: one well-shaped
product over a contiguous row range, with no input copied. The step writes its output
``h`` into the rows of step ``t + 1``. Then the gate nonlinearities in place (the
kernel's gate columns are reordered so that the three sigmoid gates are one block; on
CPUs all four go through one sigmoid, as tanh(z) = 2 sigmoid(2 z) - 1 with the candidate
columns doubled in the kernel), the cell update, and one product for the projection.
On CPUs the products run per direction (oneDNN, int8); on GPUs both directions share
each batched product, which halves the kernel launches that set the pace there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from elmo.engine.precision import Linear, PairLinear, backend_for
from elmo.model import FORGET_BIAS, MIN_ROWS, LSTMLayer, gate_columns

__all__ = ["LANE_DEVICES", "LayerWeights", "PackedBatch", "assign_lanes", "run_layer"]


# Devices on which short rows share lanes. On CPUs a step's idle rows cost as much as busy
# ones (benchmarks/RESULTS.md). On GPUs a step's rows run in parallel, so idle rows cost
# little, while each step where rows begin mid-lane adds a few small kernel launches.
LANE_DEVICES = frozenset({"cpu"})


def assign_lanes(lengths: list[int], lanes: bool = True) -> list[list[int]]:
    """The rows of each lane, in the order they run, lanes busiest first (see the module
    docstring). ``lengths`` must be positive. Deterministic: equal lengths keep their order."""
    order = sorted(range(len(lengths)), key=lambda b: -lengths[b])
    if not order:
        return []
    span = lengths[order[0]]
    members: list[list[int]] = []
    loads: list[int] = []
    for b in order:
        length = lengths[b]
        best = -1
        if lanes and len(members) >= MIN_ROWS:
            # Best fit among the first MIN_ROWS lanes: the fullest one it still fits in.
            for k in range(MIN_ROWS):
                if loads[k] + length <= span and (best < 0 or loads[k] > loads[best]):
                    best = k
        if best < 0:
            members.append([b])
            loads.append(length)
        else:
            members[best].append(b)
            loads[best] += length
    by_load = sorted(range(len(members)), key=lambda k: -loads[k])
    return [members[k] for k in by_load]


@dataclass
class Restarts:
    """Where sentences begin in the middle of lanes at one step: ``lanes`` [k] (device),
    the rows ending there just before (``ended``) and the rows beginning (``begun``)."""

    lanes: Tensor
    ended: Tensor
    begun: Tensor


@dataclass
class PackedBatch:
    """How a batch of rows with lengths ``lengths`` is packed (see the module docstring).

    Row ``b`` (original order) runs in lane ``lane[b]`` from step ``start[b]`` for
    ``lengths[b]`` steps. ``counts[t]`` = n_t (busy lanes) and ``offsets[t]`` are host
    integers. ``first`` [lanes] (device) is each lane's first row, ``final`` [lanes] its
    last; ``restarts`` maps each step ``t > 0`` where rows begin mid-lane to them.
    ``last`` [B] (device, original order) is the packed index of each row's last step.
    """

    lengths: list[int]
    lane: list[int]
    start: list[int]
    counts: list[int]
    offsets: list[int]
    total: int
    lanes: int
    first: Tensor
    final: Tensor
    restarts: dict[int, Restarts]
    last: Tensor

    @classmethod
    def build(cls, lengths: list[int], device: torch.device, lanes: bool | None = None) -> PackedBatch:
        """The packing of rows of ``lengths`` on ``device``; ``lanes``: whether short rows
        share lanes (default: where that pays, :data:`LANE_DEVICES`)."""
        if lanes is None:
            lanes = device.type in LANE_DEVICES
        if any(n <= 0 for n in lengths):
            raise ValueError("packed rows need at least one step each")
        members = assign_lanes(lengths, lanes)
        lane, start = [0] * len(lengths), [0] * len(lengths)
        begins: dict[int, list[tuple[int, int, int]]] = {}
        busy = []
        for k, rows in enumerate(members):
            step = 0
            for i, b in enumerate(rows):
                lane[b], start[b] = k, step
                if i > 0:
                    begins.setdefault(step, []).append((k, rows[i - 1], b))
                step += lengths[b]
            busy.append(step)
        steps = busy[0] if busy else 0
        counts, offsets = [], []
        n, total = len(busy), 0
        for t in range(steps):
            while n > 0 and busy[n - 1] <= t:
                n -= 1
            counts.append(n)
            offsets.append(total)
            total += n

        def long(values: list[int]) -> Tensor:
            return torch.tensor(values, dtype=torch.long).to(device)

        restarts = {
            t: Restarts(long([k for k, _, _ in ev]), long([e for _, e, _ in ev]), long([b for _, _, b in ev]))
            for t, ev in sorted(begins.items())
        }
        last = long([offsets[start[b] + lengths[b] - 1] + lane[b] for b in range(len(lengths))])
        return cls(
            lengths,
            lane,
            start,
            counts,
            offsets,
            total,
            len(members),
            long([rows[0] for rows in members]),
            long([rows[-1] for rows in members]),
            restarts,
            last,
        )

    def positions(self, width: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """Packed indices ``[B, width]`` of each (original row, position) in both directions.

        Forward: position p is the row's step p. Backward: position p is its step
        ``length - 1 - p``. Positions past a row's end get ``total`` (callers append a
        zero row there).
        """
        batch, steps = len(self.lengths), len(self.counts)
        offsets = torch.tensor([*self.offsets, self.total], dtype=torch.long)
        lengths = torch.tensor(self.lengths, dtype=torch.long).unsqueeze(1)
        start = torch.tensor(self.start, dtype=torch.long).unsqueeze(1)
        lane = torch.tensor(self.lane, dtype=torch.long).unsqueeze(1)
        p = torch.arange(width, dtype=torch.long).unsqueeze(0).expand(batch, width)
        valid = p < lengths
        fwd = torch.where(valid, offsets[(start + p).clamp(max=steps)] + lane, self.total)
        back_step = start + (lengths - 1 - p).clamp(min=0)
        bwd = torch.where(valid, offsets[back_step] + lane, self.total)
        return fwd.to(device), bwd.to(device)

    def gather_order(self, index: Tensor, positions: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """Packed ``[total]`` values of a per-position table ``index`` [B, width] (original
        rows), for the forward and the backward reading, given :meth:`positions` of the
        same width: step t of a row reads its position t forward, ``length - 1 - t`` backward.
        """
        out = []
        for where in positions:
            packed = index.new_empty(self.total + 1)
            packed.scatter_(0, where.reshape(-1), index.reshape(-1))  # padding lands on `total`
            out.append(packed[: self.total])
        return out[0], out[1]


# Devices on which the step takes tanh through the sigmoid: PyTorch's CPU tanh runs
# several times slower than its sigmoid; on GPUs it does not, and the identity's extra
# elementwise passes would cost kernel launches there.
TANH_BY_SIGMOID = frozenset({"cpu"})


# The step below (LayerWeights and run_layer) is a deliberate fast copy of the cell of
# model.LSTMLayer (model.lstm_cell): row-major packed layout, gate columns reordered to
# i, f, o, j, forget bias folded into the bias, tanh through the sigmoid on CPUs. It takes
# the gate order and the forget bias from elmo.model; tests/test_fast.py pins it to the
# plain model (every backend and precision, both tanh ways, carried state; gain-2 weights
# in the slow original-size test).
class LayerWeights:
    """One biLSTM layer's weights for the engine, in one precision.

    The gates' product is ``[x, h] W + b`` with the forget bias folded into ``b``, the
    gate columns reordered from the file's i, j, f, o to i, f, o, j, and on CPUs j's
    columns doubled (``tanh_by_sigmoid``); the projection's is ``m W_p``. Direction 0 is
    forward, 1 backward. With the ``"torch"`` backend (GPUs) both directions run in one
    batched product (:class:`~elmo.engine.precision.PairLinear`, ``paired``); otherwise
    (oneDNN, int8) one :class:`~elmo.engine.precision.Linear` per direction.

    Read-only after construction: concurrent :func:`run_layer` calls share it, each with
    its own workspaces.
    """

    def __init__(self, forward: LSTMLayer, backward: LSTMLayer, precision: str) -> None:
        self.cell_clip = forward.cell_clip
        self.proj_clip = forward.proj_clip
        cells = forward.projection.shape[0]
        self.cells = cells
        self.width = forward.projection.shape[1]
        self.input_dim = forward.input_dim
        # The three sigmoid gates side by side, then the candidate.
        blocks = [gate_columns(g, cells) for g in ("i", "f", "o", "j")]
        self.tanh_by_sigmoid = forward.kernel.device.type in TANH_BY_SIGMOID
        # With tanh through the sigmoid j's columns are doubled (exact: a power of two);
        # the step then takes tanh(z) as 2 sigmoid(2 z) - 1, see run_layer.
        scale = 2 if self.tanh_by_sigmoid else 1
        kernels, biases, projections = [], [], []
        for layer in (forward, backward):
            kernel = layer.kernel.detach()
            bias = layer.bias.detach().clone()
            bias[gate_columns("f", cells)] += FORGET_BIAS
            kernels.append(torch.cat([kernel[:, b] for b in blocks[:3]] + [scale * kernel[:, blocks[3]]], 1))
            biases.append(torch.cat([bias[b] for b in blocks[:3]] + [scale * bias[blocks[3]]]))
            projections.append(layer.projection.detach())
        self.paired = backend_for(precision, forward.kernel.device) == "torch"
        # Either both directions in one batched product (paired) or one product each.
        self._pair_gates: PairLinear | None = None
        self._pair_projection: PairLinear | None = None
        self._gates: list[Linear] = []
        self._projection: list[Linear] = []
        if self.paired:
            self._pair_gates = PairLinear((kernels[0], kernels[1]), (biases[0], biases[1]), precision)
            self._pair_projection = PairLinear((projections[0], projections[1]), None, precision)
            self.groups = 1  # both directions in each product
        else:
            self._gates = [Linear(k, b, precision) for k, b in zip(kernels, biases)]
            self._projection = [Linear(w, None, precision) for w in projections]
            self.groups = 2  # one product per direction

    @property
    def backend(self) -> str:
        return self._pair_gates.backend if self._pair_gates is not None else self._gates[0].backend

    def view(self, group: int, x: Tensor) -> Tensor:
        """The part of a per-direction tensor ``x`` ``[2, ...]`` that group ``group`` (of
        ``groups``) computes on: both directions ``[2, ...]`` when paired, else direction
        ``group``'s own ``[...]`` (what :meth:`gates` and :meth:`projection` take)."""
        return x if self.paired else x[group]

    def gates(self, group: int, xh: Tensor) -> Tensor:
        """Gate pre-activations ``[(D,) rows, 4H]`` for ``xh`` ``[(D,) rows, in + P]`` (:meth:`view`)."""
        if self._pair_gates is not None:
            return self._pair_gates(xh)
        return self._gates[group](xh)

    def projection(self, group: int, m: Tensor) -> Tensor:
        """Outputs ``[(D,) rows, P]`` for ``m`` ``[(D,) rows, H]`` (:meth:`view`)."""
        if self._pair_projection is not None:
            return self._pair_projection(m)
        return self._projection[group](m)


# Row counts of the step products are rounded up to a multiple of this: oneDNN generates
# (JIT) a bfloat16 kernel per distinct shape, and a sorted batch's shrinking row count
# would otherwise make one per step at first; 16 rows is also one AMX tile.
ROW_ALIGN = {torch.bfloat16: 16}


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _columns(n: int, align: int) -> int:
    """Rows a product over ``n`` active rows runs with: at least MIN_ROWS, a multiple of ``align``."""
    return _round_up(max(n, MIN_ROWS), align)


def run_layer(
    weights: LayerWeights,
    batch: PackedBatch,
    inputs: Tensor,
    h0: Tensor | None,
    c0: Tensor | None,
    dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor]:
    """Run one biLSTM layer over a packed batch.

    ``inputs``: the packed layer input ``[2, total, in]`` (any float dtype). ``h0``
    [2, B, P] and ``c0`` [2, B, H] are the initial states of the rows (original order;
    None: zero). Returns the packed outputs ``[2, total + 1, P]`` in ``dtype`` (row
    ``total`` is zero: gathers of padding positions read it) and the final ``h`` [2, B, P]
    and ``c`` [2, B, H] of every row (float32, original order).

    Every buffer it writes (``[x | h]``, the cell state, the outputs) is made here, per
    call: concurrent calls on the same weights do not interfere.
    """
    lanes, rows = batch.lanes, len(batch.lengths)
    cells, width, in_dim = weights.cells, weights.width, weights.input_dim
    total = batch.total
    device = inputs.device
    align = ROW_ALIGN.get(dtype, 1)
    # [x | h] per packed row, plus zero rows past the end: a product over the last steps'
    # padded row range reads them (finite values, results unused).
    xh = torch.zeros(2, total + _columns(lanes, align), in_dim + width, dtype=dtype, device=device)
    xh[:, :total, :in_dim] = inputs
    if h0 is not None and batch.counts:
        xh[:, :lanes, in_dim:] = h0.index_select(1, batch.first).to(dtype)
    # Every packed row is written by its step; the row `total` stays zero.
    out = torch.empty(2, total + 1, width, dtype=dtype, device=device)
    out[:, total].zero_()
    # The cell state of each lane stays float32 in every precision: it accumulates over
    # the whole sentence. Lanes past the active prefix are not touched, so they keep their
    # final values; a row that ends mid-lane leaves its final value in final_c.
    c = torch.zeros(2, lanes, cells, device=device)
    if c0 is not None:
        c.copy_(c0.index_select(1, batch.first))
    final_c = torch.empty(2, rows, cells, device=device)  # every row's is written once
    # o * tanh(c), the projection's input; rows past the active ones stay finite.
    m = torch.zeros(2, _columns(lanes, align), cells, dtype=dtype, device=device)
    tanh_buf = torch.empty(2, lanes, cells, device=device)  # float32 scratch for tanh(c)
    cell_clip, proj_clip = weights.cell_clip, weights.proj_clip
    steps = len(batch.counts)
    # Each group's own views of the buffers, made once: the step below takes rows (dim -2)
    # and columns (dim -1) of them with one narrow each.
    views = [[weights.view(group, x) for x in (xh, c, m, tanh_buf, out)] for group in range(weights.groups)]
    for t in range(steps):
        n, lo = batch.counts[t], batch.offsets[t]
        cols = _columns(n, align)
        nxt = batch.counts[t + 1] if t + 1 < steps else 0
        for group, (xh_g, c_g, m_g, tanh_g, out_g) in enumerate(views):
            gates = weights.gates(group, xh_g.narrow(-2, lo, cols)).narrow(-2, 0, n)
            if gates.dtype != torch.float32:
                # Nonlinearities and the cell update in float32: bfloat16 rounding of c
                # would accumulate over the sentence.
                gates = gates.float()
            i, f, o, j = gates.split(cells, dim=-1)
            c_d = c_g.narrow(-2, 0, n)
            m_d = m_g.narrow(-2, 0, n)
            if weights.tanh_by_sigmoid:
                # One sigmoid over all four gates: tanh(z) = 2 sigmoid(2 z) - 1, and j's
                # pre-activation arrives doubled. PyTorch's CPU tanh runs several times
                # slower than its sigmoid; the identity's error here is about 1e-7. The
                # doublings are additions (x + x) and the identity is folded into the
                # products: operations with a Python number cost a conversion each.
                gates.sigmoid_()
                # c = f c + i (2 s_j - 1) = f c + 2 i s_j - i
                c_d.mul_(f).addcmul_(i, j, value=2.0).sub_(i)
                if cell_clip is not None:
                    c_d.clamp_(-cell_clip, cell_clip)
                # m = o tanh(c) = 2 o s - o, with s = sigmoid(2 c), in float32 (a bfloat16
                # m would round before the subtraction), then into m.
                s_c = torch.add(c_d, c_d, out=tanh_g.narrow(-2, 0, n)).sigmoid_()
                m_32 = m_d if m_d.dtype == torch.float32 else s_c
                torch.mul(s_c, o, out=m_32)
                m_32.add_(m_32).sub_(o)
                if m_32 is not m_d:
                    m_d.copy_(m_32)
            else:
                gates.narrow(-1, 0, 3 * cells).sigmoid_()
                j.tanh_()
                c_d.mul_(f).addcmul_(i, j)
                if cell_clip is not None:
                    c_d.clamp_(-cell_clip, cell_clip)
                torch.mul(torch.tanh(c_d, out=tanh_g.narrow(-2, 0, n)), o, out=m_d)
            h = weights.projection(group, m_g.narrow(-2, 0, cols)).narrow(-2, 0, n)
            if proj_clip is not None:
                h.clamp_(-proj_clip, proj_clip)
            out_g.narrow(-2, lo, n).copy_(h)
            if nxt:
                xh_g.narrow(-2, lo + n, nxt).narrow(-1, in_dim, width).copy_(h.narrow(-2, 0, nxt))
        restart = batch.restarts.get(t + 1)
        if restart is not None:
            # Rows begin mid-lane at the next step: keep the ended rows' cells, then give
            # the lanes the new rows' initial state.
            final_c.index_copy_(1, restart.ended, c.index_select(1, restart.lanes))
            next_rows = restart.lanes + (lo + n)
            if c0 is None:
                c.index_fill_(1, restart.lanes, 0.0)
            else:
                c.index_copy_(1, restart.lanes, c0.index_select(1, restart.begun))
            if h0 is None:
                xh[:, next_rows, in_dim:] = 0.0
            else:
                xh[:, next_rows, in_dim:] = h0.index_select(1, restart.begun).to(dtype)
    final_c.index_copy_(1, batch.final, c)
    final_h = out.index_select(1, batch.last).float()
    return out, final_h, final_c
