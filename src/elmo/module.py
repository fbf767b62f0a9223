"""The TF Hub ``google/elmo`` module's interface as a ``torch.nn.Module``.

Two signatures, as the hub module: ``m(["the cat sat", ...])`` (``default``) and
``m(tokens=[[...], ...], sequence_len=[...])`` (``tokens``). Both return the hub's
outputs ``word_emb``, ``lstm_outputs1``, ``lstm_outputs2``, ``elmo``, ``default``, plus
``mask``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from elmo import embedder
from elmo.chars import batch_to_char_ids
from elmo.choices import LAYERS, FileLayers, Layers, Precision, check_choice
from elmo.config import ElmoConfig
from elmo.engine import DEFAULT_CACHE_SIZE, FastBiLM
from elmo.inputs import padded_width, split_sentences, tokens_to_lists
from elmo.mix import ScalarMix
from elmo.model import BiLMOutput, ElmoBiLM, LayerState
from elmo.runner import BiLMRunner, EngineOptions

__all__ = ["ElmoModule"]


def _mix_inference(mix: ScalarMix, layers: list[Tensor]) -> Tensor:
    """``mix`` of the layers without autograd: one output buffer, no full-size temporaries.

    The same sum as :class:`ScalarMix` (layer 0 duplicated to the output width), within
    rounding; its fresh full-size temporaries were what made the mix show in profiles.
    """
    w = torch.softmax(mix.weights, dim=0)
    word = layers[0]
    proj = word.shape[-1]
    out = word.new_empty(*word.shape[:-1], 2 * proj)
    torch.mul(word, w[0], out=out[..., :proj])
    torch.mul(word, w[0], out=out[..., proj:])
    for k in range(1, len(layers)):
        out.addcmul_(layers[k], w[k])
    return out.mul_(mix.gamma)


class ElmoModule(nn.Module):
    """ELMo with the TF Hub module's inputs and outputs.

    By default only the layer mix (``mix.weights``, one per layer, and ``mix.gamma``)
    is trainable, as in the hub module; ``finetune=True`` makes the whole biLM
    trainable. ``stateful=True`` carries the LSTM state per batch row from call to call
    (as AllenNLP and bilm-tf do; :meth:`reset_state` starts over); by default every
    sentence starts from zero state, so its output does not depend on its batch.

    ``engine``, ``precision`` and ``cache_size`` choose what computes the biLM (see
    :class:`elmo.runner.EngineOptions`): by default the fast engine, except while
    gradients must flow into the biLM (fine-tuning), which runs the plain model;
    ``engine="plain"`` always runs the readable reference :class:`elmo.model.ElmoBiLM`.
    Outputs are float32 whatever the precision. ``dtype`` is the deprecated old name of
    ``precision``. ``engine_options`` passes all three as one value instead.

    Threads: one module may serve inference calls (``m(...)``, :meth:`embed`,
    :meth:`embed_tokens`) from many threads. Stateless calls run in parallel and each
    gives exactly what it gives alone (the fast engine locks its weight sync and token
    cache; workspaces are per call). Stateful calls run one at a time under the carried
    state's lock, so their order is the order they take it (:meth:`embed` takes it once
    per batch). Changing the model (training, ``.to()``, loading weights) while calls run
    is not supported.
    """

    def __init__(
        self,
        bilm: ElmoBiLM,
        *,
        stateful: bool = False,
        finetune: bool = False,
        engine: str = "auto",
        precision: str | None = None,
        cache_size: int = DEFAULT_CACHE_SIZE,
        dtype: str | None = None,
        engine_options: EngineOptions | None = None,
    ) -> None:
        super().__init__()
        if engine_options is None:
            engine_options = EngineOptions.from_keywords(
                engine, precision, cache_size, dtype=dtype, stacklevel=4
            )
        self.bilm = bilm
        self.mix = ScalarMix(bilm.num_layers)
        self.finetune = finetune
        self._runner = BiLMRunner(bilm, engine_options, stateful=stateful)

    @property
    def config(self) -> ElmoConfig:
        """The model's options."""
        return self.bilm.config

    @property
    def finetune(self) -> bool:
        """Whether the biLM's own weights are trainable (not only the layer mix)."""
        return self._finetune

    @finetune.setter
    def finetune(self, value: bool) -> None:
        self._finetune = bool(value)
        for p in self.bilm.parameters():
            p.requires_grad_(self._finetune)

    @property
    def device(self) -> torch.device:
        """Where the model's parameters are."""
        return self.mix.weights.device

    @property
    def engine_options(self) -> EngineOptions:
        """What computes the biLM: engine, precision and cache size."""
        return self._runner.options

    @property
    def engine(self) -> str:
        """``"auto"``, ``"fast"`` or ``"plain"``."""
        return self._runner.options.engine

    @property
    def precision(self) -> Precision:
        """The fast engine's arithmetic (``"float32"`` with the plain engine)."""
        return self._runner.precision

    @property
    def dtype(self) -> Precision:
        """Deprecated old name of :attr:`precision`."""
        return self._runner.precision

    @property
    def fast(self) -> FastBiLM | None:
        """The fast engine (None with ``engine="plain"``)."""
        return self._runner.fast

    @property
    def stateful(self) -> bool:
        """Whether each batch row's LSTM state is carried into the next call."""
        return self._runner.stateful

    @stateful.setter
    def stateful(self, value: bool) -> None:
        self._runner.stateful = bool(value)

    def uses_fast_engine(self) -> bool:
        """Whether a call now runs the fast engine (not while gradients flow into the biLM)."""
        return self._runner.uses_fast_engine()

    @property
    def carried_state(self) -> list[LayerState] | None:
        """The LSTM state carried to the next call in stateful mode (None: zero state)."""
        return self._runner.state.layers

    @carried_state.setter
    def carried_state(self, value: list[LayerState] | None) -> None:
        self._runner.state.layers = value

    def reset_state(self) -> None:
        """Forget the carried LSTM state (stateful mode); the next call starts from zero."""
        self._runner.reset_state()

    def forward(
        self,
        sentences: Any = None,
        *,
        tokens: Any = None,
        sequence_len: Any = None,
        inputs: Any = None,
        signature: str | None = None,
        as_dict: bool | None = None,
    ) -> Any:
        """Embed a batch, given either sentence strings or ``tokens`` (+ ``sequence_len``).

        Returns ``word_emb`` [B, T, P], ``lstm_outputs1`` and ``lstm_outputs2``
        [B, T, 2P], ``elmo`` [B, T, 2P], ``default`` [B, 2P] (mean of ``elmo`` over the
        real tokens) and ``mask`` [B, T] bool. Padded positions are exactly zero. T is the
        longest sentence; with ``sequence_len`` it is the padded width of ``tokens``, as
        in the hub module.

        Calls written for the hub module work as they are: ``m(x, signature="default",
        as_dict=True)`` and ``m(inputs={"tokens": ..., "sequence_len": ...},
        signature="tokens", as_dict=True)``; ``as_dict=False`` returns the ``default``
        output alone, as the hub module does.
        """
        if inputs is not None or isinstance(sentences, dict):
            if inputs is not None and sentences is not None:
                raise TypeError("pass the inputs once: positionally or as inputs=, not both")
            given = sentences if inputs is None else inputs
            sentences, tokens, sequence_len = self._signature_inputs(given, signature, tokens, sequence_len)
        elif signature is not None:
            expected = "tokens" if tokens is not None else "default"
            if signature != expected:
                raise ValueError(
                    f"signature={signature!r} does not fit the call: its inputs are those of {expected!r}"
                )
        if sentences is not None and tokens is not None:
            raise TypeError(
                "pass either sentences (signature 'default') or tokens= (signature 'tokens'), not both"
            )
        width = None
        if tokens is not None:
            batch = tokens_to_lists(tokens, sequence_len)
            if sequence_len is not None:
                width = padded_width(tokens)
        elif sequence_len is not None:
            raise TypeError("sequence_len= goes with tokens=; sentence strings need no lengths")
        elif sentences is None:
            raise TypeError(
                "expected sentences (a list of strings) or tokens= (a list of token lists), found neither"
            )
        else:
            batch = split_sentences(sentences)
        out = self.embed_tokens(batch, width)
        return out if as_dict is None or as_dict else out["default"]

    @staticmethod
    def _signature_inputs(given: Any, signature: str | None, tokens: Any, sequence_len: Any) -> tuple:
        """``(sentences, tokens, sequence_len)`` of a hub-style call with an inputs dict."""
        if tokens is not None or sequence_len is not None:
            raise TypeError("pass tokens and sequence_len in the inputs dict or as keywords, not both")
        if not isinstance(given, dict):
            if signature == "tokens":
                raise TypeError("signature='tokens' takes inputs={'tokens': ..., 'sequence_len': ...}")
            return given, None, None
        signature = signature or "default"
        allowed = {"default": {"strings"}, "tokens": {"tokens", "sequence_len"}}.get(signature)
        if allowed is None:
            raise ValueError(f"signature: expected 'default' or 'tokens', found {signature!r}")
        unknown = sorted(set(given) - allowed)
        if unknown or not given:
            expected, found = sorted(allowed), sorted(given)
            raise TypeError(f"inputs of signature {signature!r}: expected the keys {expected}, found {found}")
        if signature == "default":
            return given["strings"], None, None
        if "tokens" not in given or "sequence_len" not in given:
            raise TypeError("inputs of signature 'tokens': expected both 'tokens' and 'sequence_len'")
        return None, given["tokens"], given["sequence_len"]

    def embed(
        self,
        sentences: Sequence[Any],
        layers: Layers = "all",
        batch_size: int = 64,
        progress: bool = False,
    ) -> list[np.ndarray]:
        """Embed sentences (strings or token lists); one float32 array each, in input order.

        ``layers``: ``"all"`` -> ``[3, n, 2P]`` (layer 0 is ``word_emb`` duplicated, as
        AllenNLP), ``"top"``, ``"average"`` (of the 3 layers), ``"elmo"`` -> ``[n, 2P]``,
        ``"word_emb"`` -> ``[n, P]``, ``"default"`` -> ``[2P]``. Batching and sorting by
        length are internal (stateless mode; stateful mode keeps the input order).
        """
        return embedder.embed(self, sentences, layers, batch_size, progress)

    def embed_iter(
        self, sentences: Iterable[Any], layers: Layers = "all", batch_size: int = 64
    ) -> Iterator[np.ndarray]:
        """Like :meth:`embed` but lazy: reads sentences and yields arrays with bounded memory."""
        return embedder.embed_iter(self, sentences, layers, batch_size)

    def embed_file(
        self,
        input_path: str | os.PathLike[str],
        output_path: str | os.PathLike[str],
        layers: FileLayers = "all",
        batch_size: int = 64,
        **options: Any,
    ) -> dict:
        """Embed a text file (one tokenized sentence a line) into HDF5, as ``elmo embed`` does.

        Streams with bounded memory and writes atomically; ``options`` are the other fields
        of :class:`elmo.embedfile.EmbedJob` (``resume``, ``overwrite``, ``store_dtype``, ...).
        Returns a summary with the number of lines and tokens.
        """
        from elmo.embedfile import EmbedJob, embed_file

        job = EmbedJob(
            input=str(input_path), output=Path(output_path), layers=layers, batch_size=batch_size, **options
        )
        return embed_file(self, job)

    def embed_batch(self, batch: list[list[str]], layers: Layers = "all") -> list[np.ndarray]:
        """One batch of tokenized sentences in one model call: an array each, in order, as
        :meth:`embed` gives them (which cuts its input into such batches)."""
        return self.embed_batch_layers(batch, [layers])[layers]

    def embed_batch_layers(
        self, batch: list[list[str]], choices: Iterable[Layers]
    ) -> dict[str, list[np.ndarray]]:
        """Like :meth:`embed_batch` for several ``layers`` choices from the same model call.

        The fast engine computes real tokens only, never a padded tensor (see
        :meth:`elmo.engine.FastBiLM.ragged`); the plain model runs padded.
        """
        wanted = list(dict.fromkeys(choices))
        for layers in wanted:
            check_choice("layers", layers, LAYERS)
        with torch.no_grad():
            out = self._runner.ragged_sentences(batch)
            elmo = functools.cache(lambda: self._mix(out.layers, out.full_width_layers))
            return {layers: embedder.split_ragged(out, layers, elmo) for layers in wanted}

    def embed_tokens(self, batch: list[list[str]], width: int | None = None) -> dict[str, Tensor]:
        """The outputs for an already tokenized batch (a list of token lists); ``width``
        pads the time dimension to at least that many steps."""
        char_ids = batch_to_char_ids(batch, self.config.char_cnn.max_characters_per_token)
        if width is not None and width > char_ids.shape[1]:
            pad = char_ids.new_zeros(char_ids.shape[0], width - char_ids.shape[1], char_ids.shape[2])
            char_ids = torch.cat([char_ids, pad], dim=1)
        return self.embed_char_ids(char_ids.to(self.device))

    def embed_char_ids(self, char_ids: Tensor) -> dict[str, Tensor]:
        """The outputs for character ids [B, T, C] (+1 shifted, 0 for padding tokens)."""
        out = self.run_bilm(char_ids)
        return self.outputs(out)

    def run_bilm(self, char_ids: Tensor) -> BiLMOutput:
        """Run the biLM (with the carried state in stateful mode); no layer mix."""
        return self._runner(char_ids)

    def outputs(self, out: BiLMOutput) -> dict[str, Tensor]:
        """The hub module's output dictionary from the biLM's layers."""
        word_emb = out.layers[0]
        elmo = self._mix(out.layers, out.full_width_layers, out.mask)
        mask = out.mask
        counts = mask.sum(dim=1, keepdim=True).clamp(min=1).to(elmo.dtype)
        result = {"word_emb": word_emb}
        for k in range(1, len(out.layers)):
            result[f"lstm_outputs{k}"] = out.layers[k]
        result["elmo"] = elmo
        result["default"] = elmo.sum(dim=1) / counts
        result["mask"] = mask
        return result

    def _mix(
        self, layers: list[Tensor], full_width: Callable[[], list[Tensor]], mask: Tensor | None = None
    ) -> Tensor:
        """The ``elmo`` output: the layers' mix, without autograd unless it must give
        gradients to the mix's parameters. ``mask``: where the real tokens are (None: all)."""
        mix = self.mix
        if not mix.layer_norm and not (
            torch.is_grad_enabled() and (mix.weights.requires_grad or mix.gamma.requires_grad)
        ):
            return _mix_inference(mix, layers)
        if mix.layer_norm and mask is None:
            mask = torch.ones(layers[0].shape[:-1], dtype=torch.bool, device=layers[0].device)
        return mix(full_width(), mask)
