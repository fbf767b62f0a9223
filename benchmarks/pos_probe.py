"""POS-tagging probe: how much part-of-speech information each ELMo layer holds.

    python benchmarks/pos_probe.py --model MODEL_DIR --random-baseline --cache CACHE_DIR \
        [--epochs 200] [--threads 2] [--json OUT.json] [--append]

Universal Dependencies English EWT (``../shared/data/ud-english-ewt``): every sentence
of train, dev and test is embedded once, stateless, with the frozen model, and the
layers are kept per token (float16 ``.npy`` memmaps under ``--cache``, or in a temporary
directory). On them, linear softmax classifiers over the 17 UPOS tags are trained on
train and scored on dev and test, one row per feature set:

* ``word_emb`` (the char CNN's context-free token representation, width P);
* each biLSTM layer, ``lstm_outputs1`` .. ``lstm_outputsL`` (width 2P);
* ``elmo``: a learned :class:`elmo.mix.ScalarMix` of all layers (softmax layer weights)
  trained jointly with the classifier, with ``word_emb`` duplicated to 2P as
  :class:`elmo.module.ElmoModule` does; its gamma stays 1 (see :class:`LinearProbe`).

``--random-baseline`` adds the same rows for a model of the same options whose weights
are bilm-tf's random initialisation (``elmo.train.lm.init_like_bilm_tf``, seeded), i.e.
the state training starts from: what the probe finds there is what the architecture
gives for free, and the difference is what language-model training added.

Every probe: mean cross-entropy plus ``l2 * |W|^2``, full-batch L-BFGS from zero weights
for at most ``--epochs`` passes over train (deterministic; no seed involved), on layers
ZCA-whitened with train statistics (see :class:`Whitener` for why; ``--no-whiten``
turns it off). The L2 strength is chosen per row by dev accuracy from ``--l2``; test
accuracy is only reported, never used for a choice.

Prints a Markdown table (train, dev and test accuracy per row) and the "contextual gain"
(the best contextual row, chosen by dev accuracy, minus ``word_emb``, on dev and test);
``--json`` writes every number (all L2 strengths tried, L-BFGS passes, final objective),
``--append`` adds the table, the command and the machine to ``benchmarks/RESULTS.md``.
``--limit-train N`` (the first N training sentences) and ``--limit-eval N`` (dev and
test) are for quick runs, marked as such; the benchmark is the run without them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import resource
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import elmo
from elmo.config import ElmoConfig
from elmo.mix import ScalarMix
from elmo.model import ElmoBiLM
from elmo.module import ElmoModule

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "ud-english-ewt"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
SPLITS = ("train", "dev", "test")

# The 17 universal POS tags of UD v2, in the guidelines' order.
UPOS_TAGS = (
    "ADJ",
    "ADP",
    "ADV",
    "AUX",
    "CCONJ",
    "DET",
    "INTJ",
    "NOUN",
    "NUM",
    "PART",
    "PRON",
    "PROPN",
    "PUNCT",
    "SCONJ",
    "SYM",
    "VERB",
    "X",
)
TAG_INDEX = {tag: i for i, tag in enumerate(UPOS_TAGS)}
DEFAULT_L2 = (0.0, 1e-5, 1e-4, 1e-3)
# float16 stores the features; anything beyond its range would silently become inf.
_FLOAT16_MAX = float(np.finfo(np.float16).max)
# Bump when the stored feature layout changes, so old caches are not reused.
_CACHE_VERSION = 1


# --------------------------------------------------------------------------- CoNLL-U


class ConlluError(ValueError):
    """A malformed CoNLL-U line; the message names the file and the line."""


@dataclass(frozen=True)
class Sentence:
    """The syntactic words of one sentence and their UPOS tags."""

    words: tuple[str, ...]
    tags: tuple[str, ...]


def parse_conllu(lines: Iterable[str], source: str = "<string>") -> list[Sentence]:
    """Sentences of CoNLL-U text: FORM and UPOS of every syntactic word.

    Comment lines (``#``) are skipped, as are multi-word token lines (IDs like ``3-4``:
    their parts follow as words of their own) and empty nodes (``8.1``: they are not in
    the surface string). Word IDs must run 1, 2, 3, ... within a sentence; blank lines
    separate sentences. Anything else raises :class:`ConlluError` naming ``source`` and
    the line number.
    """
    sentences: list[Sentence] = []
    words: list[str] = []
    tags: list[str] = []

    def fail(lineno: int, message: str) -> ConlluError:
        return ConlluError(f"{source}:{lineno}: {message}")

    lineno = 0
    for lineno, raw in enumerate(lines, start=1):
        line = raw.rstrip("\r\n")
        if not line.strip():
            if words:
                sentences.append(Sentence(tuple(words), tuple(tags)))
                words, tags = [], []
            continue
        if line.startswith("#"):
            continue
        cols = line.split("\t")
        if len(cols) != 10:
            raise fail(lineno, f"expected 10 tab-separated columns, found {len(cols)}: {line[:80]!r}")
        ident, form, upos = cols[0], cols[1], cols[3]
        if "-" in ident or "." in ident:
            sep = "-" if "-" in ident else "."
            parts = ident.split(sep)
            if len(parts) != 2 or not all(p.isdigit() for p in parts):
                raise fail(lineno, f"malformed ID {ident!r} (expected like 3-4 or 8.1)")
            continue
        if not ident.isdigit():
            raise fail(lineno, f"malformed ID {ident!r} (expected a word number)")
        if int(ident) != len(words) + 1:
            raise fail(lineno, f"word ID {ident} out of sequence (expected {len(words) + 1})")
        if not form:
            raise fail(lineno, "empty FORM")
        if upos not in TAG_INDEX:
            raise fail(lineno, f"unknown UPOS {upos!r} (expected one of {' '.join(UPOS_TAGS)})")
        words.append(form)
        tags.append(upos)
    if words:  # no blank line after the last sentence
        sentences.append(Sentence(tuple(words), tuple(tags)))
    if not sentences:
        raise ConlluError(f"{source}: no sentences ({lineno} lines)")
    return sentences


def read_conllu(path: str | os.PathLike[str]) -> list[Sentence]:
    """The sentences of a CoNLL-U file (see :func:`parse_conllu`)."""
    with open(path, encoding="utf-8") as f:
        return parse_conllu(f, str(path))


def split_path(split: str, data_dir: Path = DATA) -> Path:
    """The EWT file of ``split`` (``train``, ``dev`` or ``test``)."""
    return data_dir / f"en_ewt-ud-{split}.conllu"


# --------------------------------------------------------------------------- features


@dataclass
class SplitFeatures:
    """The frozen layers of every token of one split, in sentence order.

    ``layers[0]`` is ``word_emb`` [N, P], ``layers[k]`` is ``lstm_outputs{k}`` [N, 2P];
    float16, usually read-only memmaps. ``tags`` [N] are indices into :data:`UPOS_TAGS`.
    """

    layers: list[np.ndarray]
    tags: np.ndarray
    n_sentences: int
    seconds: float | None = None  # time spent embedding; None: read from the cache

    @property
    def n_tokens(self) -> int:
        return int(self.tags.shape[0])


def model_key(module: ElmoModule) -> str:
    """A digest of the model's options and every weight: what a feature cache depends on."""
    h = hashlib.sha256(json.dumps(module.config.to_dict(), sort_keys=True).encode())
    for name, tensor in sorted(module.bilm.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def sentences_key(sentences: Sequence[Sentence]) -> str:
    """A digest of the words and tags (so a ``--limit`` or another file is another cache)."""
    h = hashlib.sha256()
    for s in sentences:
        h.update(("\x1f".join(s.words) + "\x1e" + " ".join(s.tags) + "\n").encode())
    return h.hexdigest()


def layer_names(n_lstm_layers: int) -> list[str]:
    """Output names of the stored layers: ``word_emb``, ``lstm_outputs1``, ..."""
    return ["word_emb"] + [f"lstm_outputs{k}" for k in range(1, n_lstm_layers + 1)]


def _load_cached(directory: Path, n_layers: int) -> SplitFeatures | None:
    meta_path = directory / "done.json"
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("version") != _CACHE_VERSION:
        return None
    layers = [np.load(directory / f"layer{k}.npy", mmap_mode="r") for k in range(n_layers)]
    tags = np.load(directory / "tags.npy")
    return SplitFeatures(layers, tags, int(meta["sentences"]))


def embed_split(
    module: ElmoModule,
    sentences: Sequence[Sentence],
    directory: Path,
    batch_size: int = 64,
    log: Callable[[str], None] | None = None,
    name: str = "split",
) -> SplitFeatures:
    """Embed ``sentences`` once and store their layers under ``directory`` (reused if complete).

    The layers go straight into float16 ``.npy`` memmaps, so memory stays at one window
    of sentences whatever the split's size; ``done.json`` is written last, so an
    interrupted run is recomputed rather than half-read.
    """
    if module.stateful:
        raise ValueError("the probe needs a stateless model: each sentence must not depend on the others")
    n_layers = module.bilm.num_layers
    cached = _load_cached(directory, n_layers)
    if cached is not None:
        if log:
            log(f"{name}: features from the cache {directory}")
        return cached
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "done.json").unlink(missing_ok=True)
    proj = module.config.lstm.projection_dim
    n_tokens = sum(len(s.words) for s in sentences)
    widths = [proj] + [2 * proj] * (n_layers - 1)
    layers = [
        np.lib.format.open_memmap(
            directory / f"layer{k}.npy", mode="w+", dtype=np.float16, shape=(n_tokens, w)
        )
        for k, w in enumerate(widths)
    ]
    tags = np.array([TAG_INDEX[t] for s in sentences for t in s.tags], dtype=np.int64)
    start = time.perf_counter()
    last_log = start
    offset = 0
    module.eval()
    # embed_iter sorts each window by length for little padding and yields in input
    # order; layers="all" stacks [L, n, 2P] with word_emb duplicated, so its first P
    # columns are word_emb itself.
    arrays = module.embed_iter([list(s.words) for s in sentences], layers="all", batch_size=batch_size)
    for i, (sentence, array) in enumerate(zip(sentences, arrays)):
        n = len(sentence.words)
        if array.shape[1] != n:
            raise RuntimeError(f"{name}: sentence {i} has {n} words but {array.shape[1]} embeddings")
        peak = float(np.abs(array).max()) if array.size else 0.0
        if not math.isfinite(peak) or peak > _FLOAT16_MAX:
            raise ValueError(f"{name}: sentence {i}: feature magnitude {peak:g} does not fit float16")
        layers[0][offset : offset + n] = array[0, :, :proj]
        for k in range(1, n_layers):
            layers[k][offset : offset + n] = array[k]
        offset += n
        now = time.perf_counter()
        if log and now - last_log > 30:
            last_log = now
            log(
                f"{name}: {i + 1}/{len(sentences)} sentences, {offset}/{n_tokens} tokens, "
                f"{now - start:.0f} s ({offset / (now - start):.0f} tokens/s)"
            )
    if offset != n_tokens:
        raise RuntimeError(f"{name}: embedded {offset} of {n_tokens} tokens")
    seconds = time.perf_counter() - start
    for layer in layers:
        layer.flush()
    np.save(directory / "tags.npy", tags)
    meta = {"version": _CACHE_VERSION, "sentences": len(sentences), "tokens": n_tokens, "seconds": seconds}
    (directory / "done.json").write_text(json.dumps(meta), encoding="utf-8")
    if log:
        log(f"{name}: embedded {len(sentences)} sentences, {n_tokens} tokens in {seconds:.1f} s")
    del layers  # close the writable memmaps before reading back read-only ones
    features = _load_cached(directory, n_layers)
    assert features is not None
    features.seconds = seconds
    return features


def random_like(config: ElmoConfig, seed: int) -> ElmoModule:
    """A model of ``config``'s architecture with bilm-tf's random initial weights.

    The biLM is built inside a :class:`elmo.train.lm.TrainingBiLM` because
    ``init_like_bilm_tf`` initialises that (its LM softmax, vocabulary size 1 here, is
    then dropped): the weights are distributed as those a training run starts from.
    """
    from elmo.train.lm import TrainingBiLM, init_like_bilm_tf

    lm = TrainingBiLM(config, vocab_size=1)
    init_like_bilm_tf(lm, torch.Generator().manual_seed(seed))
    bilm: ElmoBiLM = lm.encoder
    return ElmoModule(bilm.eval()).eval()


# --------------------------------------------------------------------------- probes


@dataclass
class Whitener:
    """ZCA whitening with training statistics: ``(x - mean) @ matrix`` has identity covariance.

    Why: the layers' dimensions are strongly correlated (condition numbers ~1e4 even
    after per-dimension standardisation), and first- and quasi-second-order optimisers
    then stall far from the probe's optimum, so rows would compare optimisers rather
    than layers. Whitening is an invertible linear map, so it changes no unregularised
    linear probe's predictions; with it, the L2 penalty on the weights is a penalty on
    the variance of the logits, which means the same for every layer and model whatever
    its scale (a random model's layers are on another scale than a trained one's).
    """

    mean: Tensor  # [D]
    matrix: Tensor  # [D, D]

    @classmethod
    def fit(cls, x: np.ndarray, chunk: int = 16384, floor: float = 1e-6) -> Whitener:
        """Mean, then covariance of the centred rows, over chunks (no copy of the whole layer).

        Two passes, because ``E[xx'] - mean mean'`` cancels catastrophically in the
        directions whose variance is small next to the mean, which whitening then
        amplifies; each chunk's product is float32 (fast), their sum float64.
        Eigenvalues are floored at ``floor`` times the largest: directions below it are
        mostly float16 rounding noise, which whitening must not blow up to unit variance.
        """
        width = x.shape[1]
        n = max(x.shape[0], 1)
        total = np.zeros(width)
        for s in range(0, x.shape[0], chunk):
            total += np.asarray(x[s : s + chunk], dtype=np.float64).sum(axis=0)
        mean = total / n
        mean32 = torch.tensor(mean, dtype=torch.float32)
        cov = np.zeros((width, width))
        for s in range(0, x.shape[0], chunk):
            part = torch.from_numpy(np.asarray(x[s : s + chunk], dtype=np.float32)) - mean32
            cov += (part.T @ part).double().numpy()
        cov /= n
        values, vectors = np.linalg.eigh((cov + cov.T) / 2)
        values = np.maximum(values, floor * max(float(values.max()), 1e-30))
        matrix = (vectors / np.sqrt(values)) @ vectors.T
        return cls(mean32, torch.tensor(matrix, dtype=torch.float32))

    @classmethod
    def identity(cls, width: int) -> Whitener:
        """No transformation (``--no-whiten``)."""
        return cls(torch.zeros(width), torch.eye(width))

    def project(self, x: Tensor, weight: Tensor) -> Tensor:
        """``((x - mean) @ matrix) @ weight`` [B, C], in the cheap order.

        The D x D product is folded into the D x C weight first, so a pass costs what an
        unwhitened probe costs; the whitened features are never formed.
        """
        v = self.matrix @ weight
        return x @ v - self.mean @ v


class LinearProbe(nn.Module):
    """A linear softmax classifier on one whitened layer, or on a :class:`ScalarMix` of them.

    With a mix, the P-wide ``word_emb`` is duplicated to 2P as :class:`ElmoModule` does,
    and the mix is applied to each layer's projection by the classifier rather than to
    the layers: ``mix(layers) @ W == mix([layer @ W for layer in layers])`` since the mix
    is linear, and the projections are C-wide instead of 2P-wide. The mix's ``gamma`` is
    frozen at 1: in front of a linear classifier it only rescales the weights, so training
    it would add a direction along which the objective is flat, and would let the
    weights escape the L2 penalty. The mix's layer weights (softmax) train.
    """

    def __init__(self, whiteners: Sequence[Whitener], n_classes: int, mix: bool) -> None:
        super().__init__()
        self.whiteners = list(whiteners)  # fixed statistics, not parameters
        widths = [int(w.mean.shape[0]) for w in self.whiteners]
        width = max(widths) if mix else widths[0]
        # Zero start: deterministic, and the single-layer problems are convex anyway.
        self.weight = nn.Parameter(torch.zeros(width, n_classes))
        self.bias = nn.Parameter(torch.zeros(n_classes))
        self.mix = ScalarMix(len(widths)) if mix else None
        if self.mix is not None:
            self.mix.gamma.requires_grad_(False)

    def forward(self, layers: Sequence[Tensor]) -> Tensor:
        """Logits [B, C] of raw (unwhitened) float32 features, one [B, D_k] per layer."""
        if self.mix is None:
            return self.whiteners[0].project(layers[0], self.weight) + self.bias
        parts = []
        width = self.weight.shape[0]
        for x, whitener in zip(layers, self.whiteners):
            w = self.weight
            if x.shape[1] * 2 == width:
                # cat([x, x]) @ W == x @ (W[:P] + W[P:]): word_emb duplicated to 2P.
                w = w[: x.shape[1]] + w[x.shape[1] :]
            parts.append(whitener.project(x, w))
        return self.mix(parts) + self.bias

    def penalty(self) -> Tensor:
        """Squared norm of the classifier's weights (not the bias, not the mix)."""
        return (self.weight * self.weight).sum()


@dataclass
class ProbeSettings:
    """How every probe is trained (the same for every row and model)."""

    l2: tuple[float, ...] = DEFAULT_L2
    # The most full-batch passes (function + gradient evaluations) of L-BFGS per probe. On
    # the full train split, 100 left the single layers within 0.01 points of 200 but the
    # elmo mix (not convex) 0.16 dev points short at L2 = 0.
    epochs: int = 200
    whiten: bool = True
    chunk: int = 16384  # rows converted from float16 at a time: bounds the memory


@dataclass
class ProbeSpec:
    """One row: which stored layers feed it, and whether they go through a ScalarMix."""

    name: str
    layers: tuple[int, ...]
    mix: bool = False


def probe_specs(n_layers: int) -> list[ProbeSpec]:
    """``word_emb``, each LSTM layer, and the ``elmo`` mix of all ``n_layers`` layers."""
    names = layer_names(n_layers - 1)
    specs = [ProbeSpec(name, (k,)) for k, name in enumerate(names)]
    specs.append(ProbeSpec("elmo", tuple(range(n_layers)), mix=True))
    return specs


def _chunks(features: SplitFeatures, spec: ProbeSpec, chunk: int) -> Iterator[tuple[list[Tensor], Tensor]]:
    """The spec's layers and the tags, ``chunk`` tokens at a time, as float32 / int64 tensors."""
    tags = np.asarray(features.tags, dtype=np.int64)
    for s in range(0, features.n_tokens, chunk):
        layers = [
            torch.from_numpy(np.asarray(features.layers[k][s : s + chunk], dtype=np.float32))
            for k in spec.layers
        ]
        yield layers, torch.from_numpy(tags[s : s + chunk])


@dataclass
class FitInfo:
    """How an L-BFGS fit ended: passes over the data used, final objective, gradient size."""

    passes: int
    objective: float
    grad_max: float


def train_probe(
    features: SplitFeatures,
    spec: ProbeSpec,
    whiteners: Sequence[Whitener],
    l2: float,
    settings: ProbeSettings,
) -> tuple[LinearProbe, FitInfo]:
    """Fit one probe on ``features`` (the train split): mean cross-entropy + ``l2 * |W|^2``.

    Full-batch L-BFGS (strong Wolfe line search), at most ``settings.epochs`` passes over
    the data, and no randomness at all. (Minibatch Adam was tried first: after 30 epochs
    it was still far from the optimum.) Each pass accumulates the gradient chunk by
    chunk, so memory holds one chunk of float32 features, not the split.
    """
    model = LinearProbe([whiteners[k] for k in spec.layers], len(UPOS_TAGS), spec.mix)
    params = [p for p in model.parameters() if p.requires_grad]
    n = max(features.n_tokens, 1)
    passes = 0

    def closure() -> Tensor:
        nonlocal passes
        passes += 1
        for p in params:
            p.grad = torch.zeros_like(p)
        total = 0.0
        for layers, tags in _chunks(features, spec, settings.chunk):
            loss = F.cross_entropy(model(layers), tags, reduction="sum") / n
            loss.backward()
            total += float(loss.detach())
        reg = l2 * model.penalty()
        reg.backward()
        return torch.tensor(total + float(reg.detach()))

    opt = torch.optim.LBFGS(
        params,
        lr=1.0,
        max_iter=settings.epochs,
        max_eval=settings.epochs,
        history_size=20,
        tolerance_grad=1e-6,
        tolerance_change=1e-10,
        line_search_fn="strong_wolfe",
    )
    model.train()
    opt.step(closure)
    objective = float(closure())  # at the final parameters; not a training pass
    grad_max = max(float(p.grad.abs().max()) for p in params)
    return model.eval(), FitInfo(passes - 1, objective, grad_max)


@torch.no_grad()
def accuracy(model: LinearProbe, features: SplitFeatures, spec: ProbeSpec, chunk: int = 16384) -> float:
    """The probe's tagging accuracy on ``features``."""
    correct = 0
    for layers, tags in _chunks(features, spec, chunk):
        correct += int((model(layers).argmax(dim=1) == tags).sum())
    return correct / max(features.n_tokens, 1)


@dataclass
class ProbeRow:
    """A row of the table: the probe chosen on dev, and every L2 strength tried."""

    features: str
    width: int
    l2: float
    dev: float
    test: float
    train: float
    seconds: float
    tried: list[dict[str, Any]]  # per L2: accuracies, passes, objective, gradient (, mix)
    mix_weights: list[float] | None = None


def run_probes(
    splits: dict[str, SplitFeatures],
    settings: ProbeSettings,
    log: Callable[[str], None] | None = None,
) -> list[ProbeRow]:
    """Every row of :func:`probe_specs` on ``splits`` (``train``, ``dev``, ``test``)."""
    train = splits["train"]
    if settings.whiten:
        whiteners = [Whitener.fit(layer, settings.chunk) for layer in train.layers]
    else:
        whiteners = [Whitener.identity(layer.shape[1]) for layer in train.layers]
    rows = []
    for spec in probe_specs(len(train.layers)):
        start = time.perf_counter()
        tried = []
        models = []
        for l2 in settings.l2:
            model, info = train_probe(train, spec, whiteners, l2, settings)
            acc = {name: accuracy(model, splits[name], spec, settings.chunk) for name in SPLITS}
            entry: dict[str, Any] = {"l2": l2, **acc, **vars(info)}
            if model.mix is not None:
                entry["mix_weights"] = torch.softmax(model.mix.weights.detach(), dim=0).tolist()
            tried.append(entry)
            models.append(model)
            if log:
                log(
                    f"  {spec.name} L2 {l2:g}: train {100 * acc['train']:.2f} dev {100 * acc['dev']:.2f} "
                    f"({info.passes} passes, objective {info.objective:.4f}, max |grad| {info.grad_max:.1e})"
                )
        # The L2 strength is chosen on dev alone; among equals, the first (the weakest).
        best = max(range(len(tried)), key=lambda g: (tried[g]["dev"], -g))
        chosen = tried[best]
        row = ProbeRow(
            features=spec.name,
            width=int(models[best].weight.shape[0]),
            l2=chosen["l2"],
            dev=chosen["dev"],
            test=chosen["test"],
            train=chosen["train"],
            seconds=round(time.perf_counter() - start, 1),
            tried=tried,
        )
        mix = models[best].mix
        if mix is not None:
            row.mix_weights = torch.softmax(mix.weights.detach(), dim=0).tolist()
        rows.append(row)
        if log:
            log(
                f"  {spec.name}: dev {100 * row.dev:.2f} test {100 * row.test:.2f} "
                f"(L2 {row.l2:g} by dev, {row.seconds:.1f} s)"
            )
    return rows


def contextual_gain(rows: Sequence[ProbeRow]) -> dict[str, Any]:
    """Best contextual row (chosen by dev accuracy) minus ``word_emb``, on dev and test."""
    word = next(r for r in rows if r.features == "word_emb")
    contextual = [r for r in rows if r.features != "word_emb"]
    best = max(contextual, key=lambda r: r.dev)
    layer = max((r for r in contextual if r.mix_weights is None), key=lambda r: r.dev)
    return {
        "best": best.features,
        "dev": best.dev - word.dev,
        "test": best.test - word.test,
        "best_lstm_layer": layer.features,
        "best_lstm_layer_dev": layer.dev - word.dev,
        "best_lstm_layer_test": layer.test - word.test,
        "all_contextual_beat_word_emb_on_dev": all(r.dev > word.dev for r in contextual),
        "all_contextual_beat_word_emb_on_test": all(r.test > word.test for r in contextual),
    }


# --------------------------------------------------------------------------- running


@dataclass
class ModelResult:
    """The rows of one model (trained or random) and how long it took."""

    label: str
    key: str
    rows: list[ProbeRow]
    embed_seconds: dict[str, float | None]  # None: from the cache
    probe_seconds: float
    gain: dict[str, Any] = field(default_factory=dict)


def probe_model(
    module: ElmoModule,
    label: str,
    data: dict[str, list[Sentence]],
    cache_root: Path,
    settings: ProbeSettings,
    batch_size: int = 64,
    log: Callable[[str], None] | None = None,
) -> ModelResult:
    """Embed ``data`` with ``module`` (through the cache) and run every probe on it."""
    key = model_key(module)
    splits = {}
    for name in SPLITS:
        directory = cache_root / f"v{_CACHE_VERSION}-{key[:16]}" / f"{name}-{sentences_key(data[name])[:16]}"
        splits[name] = embed_split(module, data[name], directory, batch_size, log, f"{label} {name}")
    start = time.perf_counter()
    if log:
        log(f"{label}: probes")
    rows = run_probes(splits, settings, log)
    result = ModelResult(
        label=label,
        key=key,
        rows=rows,
        embed_seconds={
            name: None if f.seconds is None else round(f.seconds, 1) for name, f in splits.items()
        },
        probe_seconds=round(time.perf_counter() - start, 1),
    )
    result.gain = contextual_gain(rows)
    return result


def markdown(results: Sequence[ModelResult]) -> str:
    """The table of accuracies (percent), the contextual gains and the learned mixes."""
    lines = [
        "| model | features | width | L2 (by dev) | train acc % | dev acc % | test acc % |",
        "|---|---|---|---|---|---|---|",
    ]
    for res in results:
        for r in res.rows:
            cells = [res.label, r.features, str(r.width), f"{r.l2:g}"]
            cells += [f"{100 * acc:.2f}" for acc in (r.train, r.dev, r.test)]
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for res in results:
        g = res.gain
        word = next(r for r in res.rows if r.features == "word_emb")
        losers = [
            f"{r.features} on {split}"
            for r in res.rows
            if r.features != "word_emb"
            for split in ("dev", "test")
            if getattr(r, split) <= getattr(word, split)
        ]
        beat = (
            "every contextual row beats word_emb on dev and test"
            if not losers
            else "NOT beating word_emb: " + ", ".join(losers)
        )
        lines.append(
            f"- Contextual gain, {res.label} (best contextual row by dev, {g['best']}, minus word_emb): "
            f"{100 * g['dev']:+.2f} dev, {100 * g['test']:+.2f} test (best single LSTM layer, "
            f"{g['best_lstm_layer']}: {100 * g['best_lstm_layer_dev']:+.2f} dev, "
            f"{100 * g['best_lstm_layer_test']:+.2f} test); {beat}."
        )
        mix = next((r for r in res.rows if r.mix_weights is not None), None)
        if mix is not None and mix.mix_weights is not None:
            names = [r.features for r in res.rows if r.mix_weights is None]
            weights = ", ".join(f"{n} {w:.3f}" for n, w in zip(names, mix.mix_weights))
            lines.append(f"- Learned mix (softmax weights), {res.label}: {weights}.")
    return "\n".join(lines) + "\n"


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model directory (or the options file, with --weights)")
    p.add_argument("--weights", help="weight file, when --model is an options file")
    p.add_argument("--random-baseline", action="store_true", help="also probe the randomly initialised model")
    p.add_argument("--random-seed", type=int, default=1, help="seed of the random initialisation")
    p.add_argument("--cache", type=Path, help="keep the features here between runs (default: a temp dir)")
    p.add_argument("--data", type=Path, default=DATA, help="directory of the EWT .conllu files")
    p.add_argument("--limit-train", type=int, help="only the first N training sentences (quick runs)")
    p.add_argument("--limit-eval", type=int, help="only the first N dev and test sentences (quick runs)")
    p.add_argument(
        "--epochs",
        type=int,
        default=ProbeSettings.epochs,
        help="the most full-batch L-BFGS passes over train per probe",
    )
    p.add_argument("--l2", type=float, nargs="+", default=list(DEFAULT_L2), help="L2 strengths tried on dev")
    p.add_argument("--no-whiten", action="store_true", help="feed the raw layers to the probes")
    p.add_argument("--embed-batch-size", type=int, default=64, help="sentences per embedding batch")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--json", type=Path, help="write every number here")
    p.add_argument("--append", action="store_true", help="append the table to benchmarks/RESULTS.md")
    a = p.parse_args(argv)
    for name in ("limit_train", "limit_eval", "epochs", "embed_batch_size", "threads"):
        value = getattr(a, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')}: expected a positive integer, found {value}")
    if any(v < 0 for v in a.l2):
        p.error("--l2: strengths must not be negative")
    return a


def _embed_time(seconds: dict[str, float | None]) -> str:
    done = [v for v in seconds.values() if v is not None]
    if not done:
        return "from the cache"
    return f"{sum(done):.0f} s" + (" (partly from the cache)" if len(done) < len(seconds) else "")


def results_section(report: dict[str, Any], table: str) -> str:
    """The ``RESULTS.md`` entry of a run: title, machine, settings, the command, the table."""
    s = report["settings"]
    quick = " (QUICK RUN on part of the data)" if report["quick"] else ""
    sizes = ", ".join(
        f"{name} {v['sentences']:,} sentences / {v['tokens']:,} tokens" for name, v in report["data"].items()
    )
    times = "; ".join(
        f"{r['model']}: embedding {_embed_time(r['embed_seconds'])}, probes {r['probe_seconds']:.0f} s"
        for r in report["results"]
    )
    baseline = (
        f" Baseline: the same options with random weights ({report['random_init']})."
        if report["random_init"]
        else ""
    )
    features = "ZCA-whitened with train statistics" if s["whiten"] else "raw"
    l2 = ", ".join(f"{v:g}" for v in s["l2"])
    return "\n".join(
        [
            f"### POS probe, UD English EWT{quick} ({report['date'][:10]})",
            "",
            f"Machine: {report['machine']}. Model: `{report['model']}`.{baseline} Data: {sizes}. "
            f"Linear softmax probes over the 17 UPOS tags on frozen, stateless features ({features}), "
            f"full-batch L-BFGS (at most {s['epochs']} passes), L2 strength from {{{l2}}} chosen per row "
            f"on dev; test is only reported. Time: {times}; peak RSS {report['peak_rss_mb']:.0f} MB.",
            "",
            f"    {report['command']}",
            "",
            table,
        ]
    )


def main(argv: Sequence[str] | None = None, results_path: Path = RESULTS) -> dict[str, Any]:
    """Run the probe as the command line asks; returns what ``--json`` writes."""
    a = _parse(argv)
    torch.set_num_threads(a.threads)
    settings = ProbeSettings(l2=tuple(a.l2), epochs=a.epochs, whiten=not a.no_whiten)
    data = {name: read_conllu(split_path(name, a.data)) for name in SPLITS}
    if a.limit_train:
        data["train"] = data["train"][: a.limit_train]
    if a.limit_eval:
        data["dev"] = data["dev"][: a.limit_eval]
        data["test"] = data["test"][: a.limit_eval]
    trained = elmo.load(a.model, a.weights)
    temp = None if a.cache is not None else tempfile.mkdtemp(prefix="pos_probe_")
    cache = a.cache if temp is None else Path(temp)
    try:
        results = [probe_model(trained, "trained", data, cache, settings, a.embed_batch_size, _log)]
        if a.random_baseline:
            rand = random_like(trained.config, a.random_seed)
            results.append(probe_model(rand, "random init", data, cache, settings, a.embed_batch_size, _log))
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)

    table = markdown(results)
    print(table)
    report = {
        "command": "python benchmarks/pos_probe.py "
        + shlex.join(sys.argv[1:] if argv is None else list(argv)),
        "machine": f"{_cpu()}, {os.cpu_count()} cores, torch {torch.__version__}, torch threads {a.threads}",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "model": str(a.model) if a.weights is None else f"{a.model} + {a.weights}",
        "random_init": f"elmo.train.lm.init_like_bilm_tf, seed {a.random_seed}"
        if a.random_baseline
        else None,
        "quick": bool(a.limit_train or a.limit_eval),
        # File-backed memmap pages count here too; they are reclaimable, unlike the rest.
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "settings": {**vars(settings), "l2": list(settings.l2)},
        "data": {
            name: {"sentences": len(s), "tokens": sum(len(x.words) for x in s)} for name, s in data.items()
        },
        "results": [
            {
                "model": r.label,
                "weights_sha256": r.key,
                "embed_seconds": r.embed_seconds,
                "probe_seconds": r.probe_seconds,
                "contextual_gain": r.gain,
                "rows": [vars(row) for row in r.rows],
            }
            for r in results
        ],
    }
    if a.json:
        a.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if a.append:
        with open(results_path, "a", encoding="utf-8") as f:
            f.write("\n" + results_section(report, table))
    return report


if __name__ == "__main__":
    try:
        main()
    except (OSError, ConlluError) as e:  # missing files and malformed data: the message says it all
        sys.exit(f"pos_probe: {e}")
