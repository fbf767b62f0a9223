"""The LM softmax as bilm-tf trains and evaluates it: sampled softmax and full softmax.

Training uses TensorFlow 1's ``tf.nn.sampled_softmax_loss`` with its defaults (see
TRAINING_NOTES §4-§5): a log-uniform sampler drawing ``S`` *distinct* negative ids once
per direction and batch, shared by every row; the expected counts are the sampler's
``-expm1(num_tries * log1p(-p))``; ``log(expected count)`` is subtracted from every
logit; a sampled id equal to a row's label is pushed down by the largest float; then a
softmax cross-entropy with the true class at index 0. Evaluation uses the full softmax.

Shapes: N rows (positions), D hidden size, V vocabulary, S sampled ids.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "LogUniformSampler",
    "SampledCandidates",
    "SoftmaxHead",
    "full_softmax_loss",
    "sampled_softmax_loss",
    "token_log_likelihood",
]

# Logits of one full-softmax chunk are at most this many elements (64 MiB in float32).
DEFAULT_MAX_CHUNK_ELEMENTS = 1 << 24


def _prob_dtype(device: torch.device) -> torch.dtype:
    # Probabilities in float64 like TF's sampler (which rounds the result to float);
    # MPS has no float64, and the log1p form below keeps float32 accurate there.
    return torch.float32 if device.type == "mps" else torch.float64


@dataclass
class SampledCandidates:
    """One draw of :class:`LogUniformSampler`: distinct ids and their expected counts.

    ``ids`` [S] int64 in order of first appearance; ``expected_count`` [S] float32;
    ``num_tries`` is how many draws (with replacement) it took to collect the S ids,
    which the expected counts of the true labels depend on too
    (:meth:`true_expected_count`).
    """

    ids: Tensor
    expected_count: Tensor
    num_tries: int
    vocab_size: int

    @property
    def num_sampled(self) -> int:
        """S, the number of distinct ids."""
        return int(self.ids.shape[0])

    def true_expected_count(self, labels: Tensor) -> Tensor:
        """Expected counts of ``labels`` (any shape) under this draw, float32, on their device."""
        return LogUniformSampler(self.vocab_size).expected_count(labels, self.num_tries, self.num_sampled)

    def to(self, device: torch.device | str) -> SampledCandidates:
        """The same draw with its tensors on ``device``."""
        return SampledCandidates(
            self.ids.to(device),
            self.expected_count.to(device),
            self.num_tries,
            self.vocab_size,
        )


class LogUniformSampler:
    """TensorFlow's ``log_uniform_candidate_sampler(unique=True, range_max=V)``.

    A single draw is ``k = floor(exp(u * log(V + 1))) - 1`` for u ~ U[0, 1), so
    P(k) = log((k + 2) / (k + 1)) / log(V + 1): a Zipf-like law favouring low ids, which
    suits vocabularies sorted by decreasing frequency.
    """

    def __init__(self, vocab_size: int) -> None:
        if vocab_size < 1:
            raise ValueError(f"vocabulary size must be positive, found {vocab_size}")
        self.vocab_size = int(vocab_size)
        self._log_range = math.log1p(self.vocab_size)

    def probability(self, ids: Tensor) -> Tensor:
        """P(k) of a single draw, float64 (float32 on MPS), same shape and device as ``ids``."""
        k = ids.to(_prob_dtype(ids.device))
        # log1p(1/(k+1)) rather than log((k+2)/(k+1)): the ratio is 1 + tiny for large k,
        # and forming it first would lose most digits in float32.
        return torch.log1p(1.0 / (k + 1.0)) / self._log_range

    def expected_count(self, ids: Tensor, num_tries: int, num_sampled: int) -> Tensor:
        """TF's ``ExpectedCountHelper``: the approximate chance that an id is in the draw.

        ``1 - (1 - p)^num_tries`` (computed as ``-expm1(num_tries * log1p(-p))``), or
        ``p * S`` when no draw was rejected (``num_tries == S``), as TF special-cases it.
        Returns float32 like TF.
        """
        p = self.probability(ids)
        if num_tries == num_sampled:
            return (p * num_sampled).float()
        return (-torch.expm1(num_tries * torch.log1p(-p))).float()

    def sample(
        self,
        num_sampled: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> SampledCandidates:
        """Draw with replacement until ``num_sampled`` distinct ids have appeared.

        Draws are made in vectorised chunks, but processed in order: the ids come out in
        order of first appearance and ``num_tries`` counts exactly the draws up to the one
        that gave the S-th new id, as TF's loop does. Randomness comes from ``generator``
        (its device is where the draws are made; CPU by default). The result is moved to
        ``device`` if given.
        """
        vocab = self.vocab_size
        if not 0 < num_sampled <= vocab:
            raise ValueError(
                f"cannot draw {num_sampled} distinct ids from a vocabulary of {vocab}: "
                f"n_negative_samples_batch must be between 1 and the vocabulary size"
            )
        dev = generator.device if generator is not None else torch.device("cpu")
        ids, num_tries = self._collect_distinct(
            num_sampled, lambda n: torch.rand(n, generator=generator, dtype=torch.float64, device=dev), dev
        )
        draw = SampledCandidates(ids, self.expected_count(ids, num_tries, num_sampled), num_tries, vocab)
        return draw.to(device) if device is not None else draw

    def ids_from_uniform(self, u: Tensor) -> Tensor:
        """Single draws (with replacement) from uniforms ``u`` in [0, 1): TF's ``Sample``."""
        # int64 conversion truncates like TF's static_cast; exp(...) >= 1, so k >= 0.
        # The modulo guards against rounding up to V, as TF does.
        return (torch.exp(u.double() * self._log_range).long() - 1) % self.vocab_size

    def _collect_distinct(
        self, num_sampled: int, uniform: Callable[[int], Tensor], dev: torch.device
    ) -> tuple[Tensor, int]:
        """TF's rejection loop, vectorised: (distinct ids in order of appearance, num_tries).

        ``uniform(n)`` gives the next n uniforms of the stream (on ``dev``). Chunks are sized from the
        rate of new ids in the previous one; draws past the S-th new id are discarded and
        not counted.
        """
        seen = torch.zeros(self.vocab_size, dtype=torch.bool, device=dev)
        picked: list[Tensor] = []
        num_picked = num_tries = 0
        rate = 1.0  # new ids per draw in the last chunk
        while num_picked < num_sampled:
            need = num_sampled - num_picked
            chunk = min(max(int(need / rate * 1.25) + 64, 2 * need), 1 << 22)
            draws = self.ids_from_uniform(uniform(chunk))
            fresh = ~seen[draws]
            candidates = draws[fresh]
            if candidates.numel() == 0:
                num_tries += chunk
                rate = max(rate / 4, 1e-6)
                continue
            positions = torch.arange(chunk, device=dev)[fresh]
            # The first position of each new id within the chunk, then ids by that position.
            unique, inverse = torch.unique(candidates, return_inverse=True)
            first = torch.full((unique.numel(),), chunk, dtype=torch.long, device=dev)
            first.scatter_reduce_(0, inverse, positions, reduce="amin")
            first, order = first.sort()
            new_ids = unique[order][:need]
            seen[new_ids] = True
            picked.append(new_ids)
            if new_ids.numel() == need:
                num_tries += int(first[need - 1]) + 1
            else:
                num_tries += chunk
            num_picked += new_ids.numel()
            rate = max(new_ids.numel() / chunk, 1e-6)
        return torch.cat(picked), num_tries


def sampled_softmax_loss(
    h: Tensor,
    weight: Tensor,
    bias: Tensor,
    labels: Tensor,
    sampled: Tensor,
    true_expected_count: Tensor,
    sampled_expected_count: Tensor,
    *,
    remove_accidental_hits: bool = True,
    subtract_log_q: bool = True,
    return_logits: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Per-row loss [N] of ``tf.nn.sampled_softmax_loss`` (num_true=1) for a given draw.

    ``h`` [N, D], ``weight`` [V, D], ``bias`` [V], ``labels`` [N] or [N, 1],
    ``sampled`` [S] distinct ids, ``true_expected_count`` [N] or [N, 1],
    ``sampled_expected_count`` [S]. The logits are ``[h·W[label] + b[label],
    h·W[sampled]ᵀ + b[sampled]]`` minus log(expected count); a sampled id equal to the
    row's label gets ``-finfo.max`` (TF adds ``-FLOAT_MAX``, which saturates to the same
    value, and its softmax weight and gradient are exactly 0 either way). With
    ``return_logits`` also returns those logits [N, 1 + S].
    """
    labels = labels.reshape(-1)
    device, dtype = h.device, h.dtype
    sampled = sampled.to(device)
    # Only the rows that take part are gathered: N + S rows of W, not V.
    true_w = weight.index_select(0, labels)
    true_b = bias.index_select(0, labels)
    sampled_w = weight.index_select(0, sampled)
    sampled_b = bias.index_select(0, sampled)
    true_logits = (h * true_w).sum(dim=1) + true_b
    if subtract_log_q:
        true_logits = true_logits - torch.log(true_expected_count.reshape(-1).to(device, dtype))
        # Folded into the bias so the [N, S] block is built by one addmm.
        sampled_b = sampled_b - torch.log(sampled_expected_count.to(device, dtype))
    sampled_logits = torch.addmm(sampled_b, h, sampled_w.t())
    if remove_accidental_hits:
        hits = labels.unsqueeze(1) == sampled.unsqueeze(0)
        # In place is safe: addmm's backward does not need its output.
        sampled_logits.masked_fill_(hits, -torch.finfo(sampled_logits.dtype).max)
    # Cross-entropy with the true class at index 0: log(1 + sum_j exp(s_j - t)), written
    # as softplus so that a small loss keeps its relative precision.
    loss = F.softplus(torch.logsumexp(sampled_logits, dim=1) - true_logits)
    if return_logits:
        return loss, torch.cat([true_logits.unsqueeze(1), sampled_logits], dim=1)
    return loss


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean()
    raise ValueError(f"reduction must be 'none', 'sum' or 'mean', found {reduction!r}")


def _chunk_rows(vocab: int, max_chunk_elements: int) -> int:
    return max(1, max_chunk_elements // max(vocab, 1))


class _ChunkedSoftmaxCE(torch.autograd.Function):
    """Full-softmax cross-entropy whose memory is bounded by one chunk of logits.

    Only the per-row logsumexp is kept; the backward pass recomputes each chunk's
    logits (one extra matmul) instead of storing all N x V of them.
    """

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, bias: Tensor, targets: Tensor, rows: int) -> Tensor:
        losses, lses = [], []
        for start in range(0, h.shape[0], rows):
            logits = torch.addmm(bias, h[start : start + rows], weight.t())
            lse = torch.logsumexp(logits, dim=1)
            losses.append(lse - logits.gather(1, targets[start : start + rows, None])[:, 0])
            lses.append(lse)
        ctx.rows = rows
        ctx.save_for_backward(h, weight, bias, targets, torch.cat(lses))
        return torch.cat(losses)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss: Tensor):
        h, weight, bias, targets, lse = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = torch.zeros_like(weight) if need_w else None
        grad_b = torch.zeros_like(bias) if need_b else None
        rows = ctx.rows
        for start in range(0, h.shape[0], rows):
            stop = min(start + rows, h.shape[0])
            hc = h[start:stop]
            logits = torch.addmm(bias, hc, weight.t())
            # d loss / d logits = softmax - onehot(target), scaled by the incoming gradient.
            d = torch.exp(logits - lse[start:stop, None])
            d[torch.arange(stop - start, device=d.device), targets[start:stop]] -= 1.0
            d.mul_(grad_loss[start:stop, None])
            if grad_h is not None:
                grad_h[start:stop] = d @ weight
            if grad_w is not None:
                grad_w.addmm_(d.t(), hc)
            if grad_b is not None:
                grad_b += d.sum(dim=0)
        return grad_h, grad_w, grad_b, None, None


def full_softmax_loss(
    h: Tensor,
    weight: Tensor,
    bias: Tensor,
    targets: Tensor,
    reduction: str = "none",
    max_chunk_elements: int = DEFAULT_MAX_CHUNK_ELEMENTS,
) -> Tensor:
    """Cross-entropy of the full softmax: ``logsumexp(hWᵀ + b) - (hWᵀ + b)[target]``.

    ``h`` [N, D], ``weight`` [V, D], ``bias`` [V], ``targets`` [N] (or [N, 1]). Per row
    [N] with ``reduction='none'``, else its ``'sum'`` or ``'mean'``. When N x V exceeds
    ``max_chunk_elements`` the rows are processed in chunks, so memory stays bounded in
    the forward and (by recomputing each chunk) in the backward pass.
    """
    targets = targets.reshape(-1)
    rows = _chunk_rows(weight.shape[0], max_chunk_elements)
    if h.shape[0] <= rows:
        logits = torch.addmm(bias, h, weight.t())
        loss = torch.logsumexp(logits, dim=1) - logits.gather(1, targets[:, None])[:, 0]
    else:
        loss = _ChunkedSoftmaxCE.apply(h, weight, bias, targets, rows)
    return _reduce(loss, reduction)


def token_log_likelihood(
    h: Tensor,
    weight: Tensor,
    bias: Tensor,
    targets: Tensor,
    max_chunk_elements: int = DEFAULT_MAX_CHUNK_ELEMENTS,
) -> Tensor:
    """Per-row log p(target) [N] under the full softmax (minus :func:`full_softmax_loss`)."""
    return -full_softmax_loss(h, weight, bias, targets, "none", max_chunk_elements)


class SoftmaxHead(nn.Module):
    """bilm-tf's ``softmax/W`` [V, D] and ``softmax/b`` [V], shared by both directions.

    Initialised as bilm-tf does (TRAINING_NOTES §3): W ~ N(0, 1/sqrt(D)), b = 0.
    """

    def __init__(self, vocab_size: int, dim: int) -> None:
        super().__init__()
        self.vocab_size, self.dim = int(vocab_size), int(dim)
        self.weight = nn.Parameter(torch.empty(self.vocab_size, self.dim))
        self.bias = nn.Parameter(torch.zeros(self.vocab_size))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Draw W ~ N(0, 1/sqrt(D)) (on CPU, so a CPU ``generator`` works) and zero b."""
        w = torch.randn(self.weight.shape, generator=generator) / math.sqrt(self.dim)
        self.weight.copy_(w)
        self.bias.zero_()

    def logits(self, h: Tensor) -> Tensor:
        """Full logits ``h Wᵀ + b`` [N, V]."""
        return torch.addmm(self.bias, h, self.weight.t())

    def sampled_loss(self, h: Tensor, targets: Tensor, draw: SampledCandidates) -> Tensor:
        """Per-row sampled-softmax loss [N] of ``h`` [N, D] for one sampler draw."""
        draw = draw.to(h.device)
        loss = sampled_softmax_loss(
            h,
            self.weight,
            self.bias,
            targets,
            draw.ids,
            draw.true_expected_count(targets),
            draw.expected_count,
        )
        assert isinstance(loss, Tensor)  # without return_logits: the loss alone
        return loss

    def full_loss(self, h: Tensor, targets: Tensor, reduction: str = "none") -> Tensor:
        """Full-softmax cross-entropy of ``h`` [N, D] (per row by default)."""
        return full_softmax_loss(h, self.weight, self.bias, targets, reduction)

    def log_likelihood(self, h: Tensor, targets: Tensor) -> Tensor:
        """Per-row log p(target) [N] under the full softmax."""
        return token_log_likelihood(h, self.weight, self.bias, targets)

    def extra_repr(self) -> str:
        return f"vocab_size={self.vocab_size}, dim={self.dim}"
