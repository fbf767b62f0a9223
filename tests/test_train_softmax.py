"""Sampled and full softmax against TensorFlow's ``sampled_softmax_loss`` (stored draws).

Tolerances: TF ran in float32; these run in float32 with another summation order, so
values agree to a few float32 ulps. ``rtol=1e-5, atol=1e-6`` holds everywhere (observed
≤1e-6 absolute on losses of size ~7). Logits of accidental hits are exactly -FLOAT32_MAX
in both.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import BILMTF, shared_path
from elmo.train.softmax import (
    LogUniformSampler,
    SampledCandidates,
    SoftmaxHead,
    full_softmax_loss,
    sampled_softmax_loss,
    token_log_likelihood,
)

CASES_DIR = BILMTF / "generated" / "sampled_softmax"
CASES = ["small_V32_S16", "mid_V1000_S64"]
FLOAT_MAX = float(np.finfo(np.float32).max)
TOL = {"rtol": 1e-5, "atol": 1e-6}


@pytest.fixture(scope="module")
def arrays() -> dict[str, np.ndarray]:
    with np.load(shared_path(CASES_DIR / "sampled_softmax_cases.npz")) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def meta() -> dict:
    return json.loads(shared_path(CASES_DIR / "sampled_softmax_cases.json").read_text())


def _case(arrays: dict[str, np.ndarray], case: str) -> dict[str, torch.Tensor]:
    prefix = case + "__"
    return {k[len(prefix) :]: torch.from_numpy(v) for k, v in arrays.items() if k.startswith(prefix)}


def _recover_num_tries(c: dict[str, torch.Tensor], vocab: int) -> tuple[int, float]:
    """num_tries from E = 1 - (1 - p)^n, i.e. n = log1p(-E) / log1p(-p), over every id."""
    ids = torch.cat([c["sampled"], c["labels"].reshape(-1)])
    counts = torch.cat([c["sampled_expected_count"], c["true_expected_count"].reshape(-1)]).double()
    p = LogUniformSampler(vocab).probability(ids)
    estimates = torch.log1p(-counts) / torch.log1p(-p)
    return round(float(estimates.median())), float(estimates.max() - estimates.min())


# ---- sampled softmax vs TensorFlow ----


@pytest.mark.parametrize("case", CASES)
def test_sampled_softmax_matches_tensorflow(arrays, meta, case):
    c = _case(arrays, case)
    h, w, b = (c[k].clone().requires_grad_() for k in ("h", "W", "b"))
    loss, logits = sampled_softmax_loss(
        h,
        w,
        b,
        c["labels"],
        c["sampled"],
        c["true_expected_count"],
        c["sampled_expected_count"],
        return_logits=True,
    )
    loss.sum().backward()
    np.testing.assert_allclose(loss.detach().numpy(), c["loss"].numpy(), **TOL)
    assert float(loss.detach().mean()) == pytest.approx(meta[case]["mean_loss"], rel=1e-6)

    ref_logits = c["logits"].numpy()
    got_logits = logits.detach().numpy()
    hit = ref_logits == -FLOAT_MAX
    assert hit.sum() == meta[case]["checks"]["n_accidental_hits"]
    assert np.array_equal(got_logits == -FLOAT_MAX, hit)  # same positions, same value
    np.testing.assert_allclose(got_logits[~hit], ref_logits[~hit], **TOL)

    np.testing.assert_allclose(h.grad.numpy(), c["grad_h"].numpy(), **TOL)
    np.testing.assert_allclose(w.grad.numpy(), c["grad_W"].numpy(), **TOL)
    np.testing.assert_allclose(b.grad.numpy(), c["grad_b"].numpy(), **TOL)


@pytest.mark.parametrize("case", CASES)
def test_expected_counts_from_num_tries(arrays, meta, case):
    c = _case(arrays, case)
    vocab, num_sampled = meta[case]["V"], meta[case]["S"]
    num_tries, spread = _recover_num_tries(c, vocab)
    assert num_tries == meta[case]["checks"]["num_tries"]
    assert spread < 1e-3  # every id gives the same num_tries: the formula is the right one
    sampler = LogUniformSampler(vocab)
    got = sampler.expected_count(c["sampled"], num_tries, num_sampled)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), c["sampled_expected_count"].numpy(), rtol=0, atol=1e-6)
    draw = SampledCandidates(c["sampled"], got, num_tries, vocab)
    np.testing.assert_allclose(
        draw.true_expected_count(c["labels"]).numpy(), c["true_expected_count"].numpy(), rtol=0, atol=1e-6
    )


@pytest.mark.parametrize("case", CASES)
def test_softmax_head_with_recomputed_counts_matches_tensorflow(arrays, meta, case):
    c = _case(arrays, case)
    vocab, dim, num_sampled = meta[case]["V"], meta[case]["D"], meta[case]["S"]
    num_tries, _ = _recover_num_tries(c, vocab)
    head = SoftmaxHead(vocab, dim)
    with torch.no_grad():
        head.weight.copy_(c["W"])
        head.bias.copy_(c["b"])
    sampler = LogUniformSampler(vocab)
    draw = SampledCandidates(
        c["sampled"], sampler.expected_count(c["sampled"], num_tries, num_sampled), num_tries, vocab
    )
    h = c["h"].clone().requires_grad_()
    loss = head.sampled_loss(h, c["labels"].reshape(-1), draw)
    loss.sum().backward()
    np.testing.assert_allclose(loss.detach().numpy(), c["loss"].numpy(), **TOL)
    np.testing.assert_allclose(h.grad.numpy(), c["grad_h"].numpy(), **TOL)
    np.testing.assert_allclose(head.weight.grad.numpy(), c["grad_W"].numpy(), **TOL)
    np.testing.assert_allclose(head.bias.grad.numpy(), c["grad_b"].numpy(), **TOL)


def test_sampled_softmax_options_and_float64_reference():
    """Without log-q and hit removal it is a plain softmax CE over [true, sampled]."""
    g = torch.Generator().manual_seed(3)
    h, w, b = torch.randn(6, 5, generator=g), torch.randn(20, 5, generator=g), torch.randn(20, generator=g)
    labels = torch.tensor([0, 1, 2, 3, 19, 7])
    sampled = torch.tensor([1, 4, 7, 0])
    ones_t, ones_s = torch.ones(6), torch.ones(4)
    loss = sampled_softmax_loss(
        h, w, b, labels, sampled, ones_t, ones_s, remove_accidental_hits=False, subtract_log_q=False
    )
    logits = torch.cat(
        [(h * w[labels]).sum(1, keepdim=True) + b[labels, None], h @ w[sampled].T + b[sampled]], 1
    )
    ref = F.cross_entropy(logits.double(), torch.zeros(6, dtype=torch.long), reduction="none")
    np.testing.assert_allclose(loss.numpy(), ref.numpy(), rtol=1e-6, atol=1e-6)
    # With hit removal, a row whose label is sampled ignores that column entirely.
    loss_hits = sampled_softmax_loss(
        h, w, b, labels, sampled, ones_t, ones_s, remove_accidental_hits=True, subtract_log_q=False
    )
    for row, label in enumerate(labels.tolist()):
        keep = [0] + [1 + j for j, s in enumerate(sampled.tolist()) if s != label]
        expect = F.cross_entropy(logits[row : row + 1, keep].double(), torch.zeros(1, dtype=torch.long))
        assert float(loss_hits[row]) == pytest.approx(float(expect), rel=1e-6, abs=1e-6)


# ---- the sampler ----


def _naive_collect(draws: list[int], num_sampled: int) -> tuple[list[int], int]:
    """TF's loop, one draw at a time."""
    seen: set[int] = set()
    ids: list[int] = []
    for tries, k in enumerate(draws, start=1):
        if k not in seen:
            seen.add(k)
            ids.append(k)
            if len(ids) == num_sampled:
                return ids, tries
    raise AssertionError("stream too short")


@pytest.mark.parametrize(("vocab", "num_sampled"), [(32, 16), (32, 32), (1000, 64), (50_000, 2000), (7, 1)])
def test_sampler_num_tries_is_exact(vocab, num_sampled):
    sampler = LogUniformSampler(vocab)
    g = torch.Generator().manual_seed(vocab + num_sampled)
    record: list[torch.Tensor] = []

    def uniform(n: int) -> torch.Tensor:
        u = torch.rand(n, generator=g, dtype=torch.float64)
        record.append(u)
        return u

    ids, num_tries = sampler._collect_distinct(num_sampled, uniform, torch.device("cpu"))
    stream = sampler.ids_from_uniform(torch.cat(record)).tolist()
    ref_ids, ref_tries = _naive_collect(stream, num_sampled)
    assert ids.tolist() == ref_ids
    assert num_tries == ref_tries


def test_ids_from_uniform_is_tf_formula():
    sampler = LogUniformSampler(1000)
    u = torch.rand(5000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = [int(math.exp(x * math.log(1001))) - 1 for x in u.tolist()]
    assert sampler.ids_from_uniform(u).tolist() == ref
    assert sampler.ids_from_uniform(torch.tensor([0.0], dtype=torch.float64)).tolist() == [0]


@pytest.mark.parametrize(("vocab", "num_sampled"), [(32, 16), (1000, 64), (800_000, 8192)])
def test_sampler_draw(vocab, num_sampled):
    sampler = LogUniformSampler(vocab)
    draw = sampler.sample(num_sampled, generator=torch.Generator().manual_seed(1))
    assert draw.ids.dtype == torch.int64 and draw.ids.shape == (num_sampled,)
    assert draw.ids.unique().numel() == num_sampled
    assert int(draw.ids.min()) >= 0 and int(draw.ids.max()) < vocab
    assert draw.num_tries >= num_sampled
    assert draw.expected_count.dtype == torch.float32
    expected = -torch.expm1(draw.num_tries * torch.log1p(-sampler.probability(draw.ids)))
    np.testing.assert_allclose(draw.expected_count.numpy(), expected.numpy(), rtol=1e-6)
    again = sampler.sample(num_sampled, generator=torch.Generator().manual_seed(1))
    assert torch.equal(again.ids, draw.ids) and again.num_tries == draw.num_tries


def test_sampler_probabilities_and_frequencies():
    vocab = 32
    sampler = LogUniformSampler(vocab)
    p = sampler.probability(torch.arange(vocab))
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-12)
    assert float(p[5]) == pytest.approx(math.log(7 / 6) / math.log(33), rel=1e-12)
    g = torch.Generator().manual_seed(12345)
    # Single draws follow P(k): a chi-square with 31 degrees of freedom (mean 31, sd 7.9).
    n = 200_000
    counts = torch.bincount(
        sampler.ids_from_uniform(torch.rand(n, generator=g, dtype=torch.float64)), minlength=32
    )
    chi2 = float((((counts - n * p) ** 2) / (n * p)).sum())
    assert chi2 < 100
    # The first id of each unique draw is a plain draw too.
    firsts = torch.tensor([int(sampler.sample(1, generator=g).ids[0]) for _ in range(3000)])
    counts = torch.bincount(firsts, minlength=32)
    chi2 = float((((counts - 3000 * p) ** 2) / (3000 * p)).sum())
    assert chi2 < 100


def test_expected_count_without_rejections_is_p_times_s():
    sampler = LogUniformSampler(100)
    ids = torch.tensor([0, 5, 99])
    got = sampler.expected_count(ids, num_tries=3, num_sampled=3)
    np.testing.assert_allclose(got.numpy(), (3 * sampler.probability(ids)).numpy(), rtol=1e-7)


def test_sampler_rejects_impossible_requests():
    with pytest.raises(ValueError, match="distinct ids"):
        LogUniformSampler(10).sample(11)
    with pytest.raises(ValueError, match="distinct ids"):
        LogUniformSampler(10).sample(0)
    with pytest.raises(ValueError, match="positive"):
        LogUniformSampler(0)


# ---- full softmax ----


def _full_inputs(n: int = 37, vocab: int = 50, dim: int = 6):
    g = torch.Generator().manual_seed(7)
    h = torch.randn(n, dim, generator=g)
    w = torch.randn(vocab, dim, generator=g)
    b = torch.randn(vocab, generator=g)
    t = torch.randint(0, vocab, (n,), generator=g)
    return h, w, b, t


def test_full_softmax_matches_cross_entropy():
    h, w, b, t = _full_inputs()
    ref = F.cross_entropy(h @ w.T + b, t, reduction="none")
    np.testing.assert_allclose(full_softmax_loss(h, w, b, t).numpy(), ref.numpy(), rtol=1e-6, atol=1e-6)
    assert float(full_softmax_loss(h, w, b, t, "mean")) == pytest.approx(float(ref.mean()), rel=1e-6)
    assert float(full_softmax_loss(h, w, b, t[:, None], "sum")) == pytest.approx(float(ref.sum()), rel=1e-6)
    np.testing.assert_allclose(token_log_likelihood(h, w, b, t).numpy(), -ref.numpy(), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="reduction"):
        full_softmax_loss(h, w, b, t, "avg")


@pytest.mark.parametrize("chunk_elements", [50, 7 * 50, 1000])
def test_full_softmax_chunked_equals_unchunked(chunk_elements):
    """Chunks of 1, 7 and 20 rows of a V=50 softmax: same losses and same gradients."""
    grads = []
    for limit in (None, chunk_elements):
        h, w, b, t = (x.clone() for x in _full_inputs())
        for x in (h, w, b):
            x.requires_grad_()
        kwargs = {} if limit is None else {"max_chunk_elements": limit}
        loss = full_softmax_loss(h, w, b, t, **kwargs)
        # A non-uniform upstream gradient checks the chunked backward's scaling.
        (loss * torch.linspace(0.5, 2.0, loss.numel())).sum().backward()
        grads.append((loss.detach(), h.grad, w.grad, b.grad))
    for ref, got in zip(*grads):
        np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=1e-5, atol=1e-6)


def test_full_softmax_chunked_without_grad():
    h, w, b, t = _full_inputs()
    with torch.no_grad():
        got = full_softmax_loss(h, w, b, t, max_chunk_elements=100)
    np.testing.assert_allclose(got.numpy(), full_softmax_loss(h, w, b, t).numpy(), rtol=1e-6, atol=1e-6)


# ---- the head ----


def test_softmax_head_init_and_losses():
    torch.manual_seed(0)
    head = SoftmaxHead(2000, 64)
    assert head.weight.shape == (2000, 64) and head.bias.shape == (2000,)
    assert float(head.weight.detach().std()) == pytest.approx(1 / 8, rel=0.02)
    assert float(head.weight.detach().mean()) == pytest.approx(0.0, abs=0.002)
    assert not head.bias.any()
    head.reset_parameters(torch.Generator().manual_seed(5))
    first = head.weight.detach().clone()
    head.reset_parameters(torch.Generator().manual_seed(5))
    assert torch.equal(first, head.weight)

    h = torch.randn(10, 64)
    t = torch.randint(0, 2000, (10,))
    ref = F.cross_entropy(head.logits(h), t, reduction="none")
    np.testing.assert_allclose(
        head.full_loss(h, t).detach().numpy(), ref.detach().numpy(), rtol=1e-6, atol=1e-6
    )
    np.testing.assert_allclose(
        head.log_likelihood(h, t).detach().numpy(), -ref.detach().numpy(), rtol=1e-6, atol=1e-6
    )
    draw = LogUniformSampler(2000).sample(100, generator=torch.Generator().manual_seed(2))
    loss = head.sampled_loss(h, t, draw)
    assert loss.shape == (10,) and bool(torch.isfinite(loss).all()) and bool((loss > 0).all())
