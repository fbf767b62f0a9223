"""One way to run the biLM: character ids in, :class:`~elmo.model.BiLMOutput` out.

Every public interface (the TF Hub-style :class:`elmo.ElmoModule`, the AllenNLP drop-in
:mod:`elmo.allennlp`, :meth:`~elmo.ElmoModule.embed` and ``elmo embed``) runs its biLM
through a :class:`BiLMRunner`, which decides three things in one place:

- **which engine computes**: the fast engine (:class:`elmo.engine.FastBiLM`) unless
  gradients must reach the biLM's parameters (autograd is on and one of them requires a
  gradient), which only the plain model (:class:`elmo.model.ElmoBiLM`) can give; never
  the fast engine with ``engine="plain"`` (:meth:`BiLMRunner.uses_fast_engine`);
- **carried state**: in stateful mode, row r of a call starts where row r of the
  previous call ended, as AllenNLP and bilm-tf do (:class:`CarriedState`);
- **the device**: character ids are moved to the biLM's device.

The engine's options travel together as one validated :class:`EngineOptions`.

Threads: a runner may be called from many threads at once. Stateless calls share nothing
mutable but the fast engine's weights and token cache, which it locks itself (see
:mod:`elmo.engine.bilm`), so they run in parallel and each gives what it gives alone.
Stateful calls are sequential by nature: each holds the carried state's lock from reading
the state to storing the new one, so they run one at a time, in the order they take the
lock, and never tear or lose an update.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor

from elmo.chars import sentence_to_char_ids
from elmo.choices import ENGINES, PRECISIONS, Engine, Precision, check_choice
from elmo.engine import DEFAULT_CACHE_SIZE, FastBiLM
from elmo.model import BiLMOutput, ElmoBiLM, LayerState, RaggedOutput

__all__ = ["BiLMRunner", "CarriedState", "EngineOptions"]

_Output = TypeVar("_Output", BiLMOutput, RaggedOutput)


@dataclass(frozen=True)
class EngineOptions:
    """How the biLM is computed for inference.

    ``engine``: ``"auto"`` (default) or ``"fast"``: the fast engine, except while
    gradients must reach the biLM; ``"plain"``: always the plain reference model.
    ``precision``: the fast engine's arithmetic, ``"float32"`` (within 1e-5 of the plain
    model), ``"bfloat16"`` or ``"int8"`` (CPU only); outputs are float32 in all of them.
    ``cache_size``: distinct tokens whose context-free representations the fast engine
    keeps (0: none).
    """

    engine: Engine = "auto"
    precision: Precision = "float32"
    cache_size: int = DEFAULT_CACHE_SIZE

    @classmethod
    def from_keywords(
        cls,
        engine: str = "auto",
        precision: str | None = None,
        cache_size: int = DEFAULT_CACHE_SIZE,
        *,
        dtype: str | None = None,
        stacklevel: int = 3,
    ) -> EngineOptions:
        """The options from the keyword arguments of the public functions.

        ``dtype`` is the deprecated old name of ``precision``: it warns, and errors then
        name it ``dtype``, as the caller wrote it. ``stacklevel`` points the warning at the
        caller's line.
        """
        name = "precision"
        if dtype is not None:
            if precision is not None:
                raise TypeError("pass precision= only (dtype= is its deprecated old name)")
            warnings.warn(
                "dtype= is deprecated: the fast engine's arithmetic is now precision= "
                "(same values: 'float32', 'bfloat16', 'int8')",
                DeprecationWarning,
                stacklevel=stacklevel,
            )
            precision, name = dtype, "dtype"
        precision = "float32" if precision is None else precision
        _check(engine, precision, cache_size, name)
        return cls(engine, precision, cache_size)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        _check(self.engine, self.precision, self.cache_size, "precision")


def _check(engine: object, precision: object, cache_size: object, precision_name: str) -> None:
    """Raise ``ValueError`` naming the first invalid option (``precision_name``: what the
    caller calls the precision option)."""
    check_choice("engine", engine, ENGINES)
    check_choice(precision_name, precision, PRECISIONS)
    if engine == "plain" and precision != "float32":
        raise ValueError(
            f"{precision_name}={precision!r} needs the fast engine; the plain model computes in float32"
        )
    if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 0:
        raise ValueError(f"cache_size: expected an int >= 0, found {cache_size!r}")


class CarriedState:
    """LSTM state kept per batch row between calls, as AllenNLP and bilm-tf keep it.

    Row r of a call starts where row r of the previous call ended. A call with more rows
    than stored starts the new rows from zero; a call with fewer rows uses the first
    rows and leaves the others stored for later.

    ``lock`` (reentrant) guards the state: :meth:`reset` and setting :attr:`layers` take
    it, and a stateful :class:`BiLMRunner` call holds it from :meth:`take` to
    :meth:`update`. Copies and pickles carry the state with a new lock.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._layers: list[LayerState] | None = None

    def __getstate__(self) -> dict:
        return {"layers": self._layers}

    def __setstate__(self, state: dict) -> None:
        self.__init__()  # type: ignore[misc]
        self._layers = state["layers"]

    @property
    def layers(self) -> list[LayerState] | None:
        """The carried state (None: every row starts from zero)."""
        return self._layers

    @layers.setter
    def layers(self, value: list[LayerState] | None) -> None:
        with self.lock:
            self._layers = value

    def reset(self) -> None:
        self.layers = None

    def take(self, bilm: ElmoBiLM, batch: int) -> list[LayerState]:
        """The initial state of a call of ``batch`` rows (fresh tensors)."""
        zero = bilm.zero_state(batch)
        layers = self._layers  # one read: a concurrent update replaces the list whole
        if layers is None:
            return zero
        out = []
        for stored, new in zip(layers, zero):
            n = min(batch, stored.forward_h.shape[0])
            parts = []
            for old, fresh in zip(vars(stored).values(), vars(new).values()):
                fresh[:n] = old[:n].to(fresh.device)
                parts.append(fresh)
            out.append(LayerState(*parts))
        return out

    def update(self, final: list[LayerState]) -> None:
        """Store a call's final state (rows beyond it keep their stored state)."""
        final = [LayerState(*(t.detach() for t in vars(s).values())) for s in final]
        with self.lock:
            self._update(final)

    def _update(self, final: list[LayerState]) -> None:
        if self._layers is None:
            self._layers = final
            return
        merged = []
        for stored, new in zip(self._layers, final):
            parts = []
            for old, cur in zip(vars(stored).values(), vars(new).values()):
                if cur.shape[0] >= old.shape[0]:
                    parts.append(cur)
                else:
                    keep = old.to(cur.device).clone()
                    keep[: cur.shape[0]] = cur
                    parts.append(keep)
            merged.append(LayerState(*parts))
        self._layers = merged


class BiLMRunner:
    """Runs a plain :class:`~elmo.model.ElmoBiLM`, or the fast engine derived from it.

    The plain model stays the owner of the weights (a ``torch.nn.Module`` the caller
    registers, moves and trains); the runner holds no parameters, only the engine's
    derived copies and the carried state.

    Thread-safe (see the module docstring): stateless calls run concurrently; stateful
    calls (``stateful=True``) hold the carried state's lock for the whole call, so they
    run one at a time and each continues from the state the previous one left.
    """

    def __init__(
        self, bilm: ElmoBiLM, options: EngineOptions | None = None, *, stateful: bool = False
    ) -> None:
        self.bilm = bilm
        self.options = options if options is not None else EngineOptions()
        self.fast: FastBiLM | None = None
        if self.options.engine != "plain":
            self.fast = FastBiLM(bilm, self.options.precision, self.options.cache_size)
        self.stateful = stateful
        self.state = CarriedState()

    @property
    def precision(self) -> Precision:
        """The arithmetic of the engine (``"float32"`` with the plain model)."""
        return self.options.precision

    def needs_gradients(self) -> bool:
        """Whether this call must give gradients to the biLM's own parameters."""
        return torch.is_grad_enabled() and any(p.requires_grad for p in self.bilm.parameters())

    def uses_fast_engine(self) -> bool:
        """The rule: the fast engine unless gradients must reach the biLM (or ``engine="plain"``)."""
        return self.fast is not None and not self.needs_gradients()

    def reset_state(self) -> None:
        """Forget the carried state; the next call starts every row from zero."""
        self.state.reset()

    def __call__(self, char_ids: Tensor, *, keep_boundaries: bool = False) -> BiLMOutput:
        """The biLM's layers for character ids ``[B, T, C]`` (+1 shifted, 0 for padding)."""
        char_ids = char_ids.to(self.bilm.token_encoder.proj_b.device)
        return self._with_state(
            char_ids.shape[0], lambda initial: self._run(char_ids, initial, keep_boundaries)
        )

    def ragged(self, tokens: Tensor, lengths: list[int]) -> RaggedOutput:
        """The biLM's layers for real tokens only (:class:`~elmo.model.RaggedOutput`):
        ``tokens`` [N, C] holds the character ids of every sentence's tokens, sentence
        after sentence, ``lengths`` how many each has. The fast engine never builds a
        padded tensor for it; the plain model runs padded and its padding is dropped
        (the same values as :meth:`__call__`)."""
        tokens = tokens.to(self.bilm.token_encoder.proj_b.device)
        return self._with_state(len(lengths), lambda initial: self._run_ragged(tokens, lengths, initial))

    def ragged_sentences(self, batch: list[list[str]]) -> RaggedOutput:
        """:meth:`ragged` for tokenized sentences (token lists)."""
        max_chars = self.bilm.config.char_cnn.max_characters_per_token
        tokens = sentence_to_char_ids([t for s in batch for t in s], max_chars)
        return self.ragged(tokens, [len(s) for s in batch])

    def _with_state(self, rows: int, run: Callable[[list[LayerState] | None], _Output]) -> _Output:
        if not self.stateful:
            return run(None)
        # Take the state, run, store the new state: one step, one call at a time.
        with self.state.lock:
            out = run(self.state.take(self.bilm, rows))
            self.state.update(out.state)
        return out

    def _run(self, char_ids: Tensor, initial: list[LayerState] | None, keep_boundaries: bool) -> BiLMOutput:
        if self.fast is not None and self.uses_fast_engine():
            return self.fast(char_ids, initial, keep_boundaries=keep_boundaries)
        with torch.set_grad_enabled(self.needs_gradients()):
            return self.bilm(char_ids, initial, keep_boundaries=keep_boundaries)

    def _run_ragged(
        self, tokens: Tensor, lengths: list[int], initial: list[LayerState] | None
    ) -> RaggedOutput:
        if self.fast is not None and self.uses_fast_engine():
            return self.fast.ragged(tokens, lengths, initial)
        steps = max(lengths, default=0)
        mask = torch.arange(steps, device=tokens.device) < torch.tensor(
            lengths, device=tokens.device
        ).unsqueeze(1)
        char_ids = tokens.new_zeros(len(lengths), steps, tokens.shape[1])
        char_ids[mask] = tokens
        out = self._run(char_ids, initial, keep_boundaries=False)
        return RaggedOutput(
            layers=[layer[out.mask] for layer in out.layers], lengths=list(lengths), state=out.state
        )
