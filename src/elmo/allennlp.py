"""A drop-in replacement for AllenNLP's ELMo API: ``Elmo``, ``batch_to_ids``, ``ElmoEmbedder``.

``Elmo`` and ``batch_to_ids`` follow ``allennlp.modules.elmo`` of AllenNLP 2.10.1;
``ElmoEmbedder`` (and its ``embed_file``, the ``allennlp elmo`` command) follows
``allennlp.commands.elmo`` of AllenNLP 0.9, the last release that had it.

Switch by changing one import::

    from allennlp.modules.elmo import Elmo, batch_to_ids   ->  from elmo.allennlp import Elmo, batch_to_ids
    from allennlp.commands.elmo import ElmoEmbedder        ->  from elmo.allennlp import ElmoEmbedder

Argument names, defaults, meanings and output shapes are AllenNLP's, and so are the
numbers: like AllenNLP, both classes are *stateful* by default (the LSTM state of each
batch row is carried into the next call), which reproduces embeddings made with it.
Pass ``stateful=False`` (an addition) for batch-independent outputs.

The internals that code written for AllenNLP reaches are here too, with AllenNLP's
arguments and outputs: ``_ElmoCharacterEncoder``, ``_ElmoBiLm`` (``Elmo._elmo_lstm`` and
``ElmoEmbedder.elmo_bilm``; its carried state is ``_elmo_lstm``, with
``reset_states()``), and ``ScalarMix`` (``Elmo.scalar_mix_0``, ...; ``Elmo._scalar_mixes``).
They compute with this package's model (:class:`elmo.ElmoBiLM`) through its runner
(:class:`elmo.runner.BiLMRunner`): the fast engine unless gradients must reach the biLM.

Differences, all deliberate:

- Positions outside the returned mask are exactly zero (AllenNLP leaves the layer-norm
  offset there when ``keep_sentence_boundaries=True`` and ``do_layer_norm=True``, and the
  representation of an all-padding token in ``_ElmoCharacterEncoder``'s output).
- ``batch_to_ids`` always returns ``[B, T, 50]`` (AllenNLP gives ``[1, 0]`` for ``[[]]``
  and fails on ``[]``) and rejects a sentence given as a string instead of a token list.
- ``ElmoEmbedder()`` with no files uses the released original model as AllenNLP did,
  downloaded once into this package's cache (see :mod:`elmo.download`); ``embed_file``
  writes through ``elmo embed``'s writer (:mod:`elmo.embedfile`): it streams its input
  (refusing blank lines as AllenNLP does, before embedding where the input can be read
  twice), drops a UTF-8 byte-order mark at the start (AllenNLP keeps it in the first
  sentence), writes its output atomically, reports a full disk in one line naming the
  file, and leaves a file object it is given open. An empty sentence gives
  ``[3, 0, 2P]`` (AllenNLP 0.9: ``[3, 0, 1024]`` whatever the model).
- ``vocab_to_cache``: word indices are mapped to the words' character ids and run
  through the character encoder (the fast engine keeps its own cache of token
  representations), so results equal character input exactly. ``_word_embedding``,
  ``_bos_embedding`` and ``_eos_embedding`` hold AllenNLP's values for reading, but are
  frozen and the outputs do not depend on them (AllenNLP looks words up in them and, with
  ``requires_grad``, trains them apart from the character encoder).
- ``_ElmoBiLm._elmo_lstm`` holds no weights: it is the carried state, shown as AllenNLP's
  ``ElmoLstm`` shows it (``reset_states(mask=None)``, ``stateful``, ``_states`` as
  ``(h [layers, B, 2P], c [layers, B, 2H])``). The biLM's weights are those of
  ``_ElmoBiLm.bilm`` and keep this package's names and layout
  (``_elmo_lstm.bilm.token_encoder.proj_w``, ...), so AllenNLP's biLM parameters do not
  load into it. The mixes have AllenNLP's names and shapes (``scalar_mix_0.scalar_parameters.0``
  ``[1]``, ..., ``scalar_mix_0.gamma`` ``[1]``). State dicts of this package's earlier
  ``Elmo`` (``scalar_mix_0.weights``, ``_elmo_lstm.token_encoder.proj_w``) still load.
"""

from __future__ import annotations

import itertools
import math
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import Tensor, nn

from elmo.chars import BOS_TOKEN, EOS_TOKEN, batch_to_char_ids, token_to_char_ids
from elmo.config import ElmoConfig
from elmo.embedder import split_ragged
from elmo.embedfile import EmbedJob, model_identity, write_embeddings
from elmo.engine import DEFAULT_CACHE_SIZE
from elmo.errors import ConfigurationError
from elmo.loading import load_bilm_files
from elmo.mix import mix_layers
from elmo.model import ElmoBiLM, LayerState, TokenEncoder, tokens_with_boundaries
from elmo.resolve import resolve
from elmo.runner import BiLMRunner, EngineOptions

__all__ = ["DEFAULT_BATCH_SIZE", "ConfigurationError", "Elmo", "ElmoEmbedder", "ScalarMix", "batch_to_ids"]

PathLike = str | os.PathLike[str]

DEFAULT_BATCH_SIZE = 64
# AllenNLP's character ids: 50 per token, 0..261 after the +1 padding shift.
_MAX_CHARS = 50
_N_CHAR_IDS = 262
_OUTPUT_FORMATS = ("all", "top", "average")


def _check_batch(batch: Any, what: str = "batch") -> list[list[str]]:
    """``batch`` as a list of token lists, or a TypeError saying what is wrong."""
    if isinstance(batch, (str, bytes)) or not isinstance(batch, Sequence):
        raise TypeError(f"{what}: expected a list of token lists, found {type(batch).__name__} {batch!r:.60}")
    out = []
    for i, sentence in enumerate(batch):
        if isinstance(sentence, (str, bytes)) or not isinstance(sentence, Sequence):
            raise TypeError(
                f"{what}[{i}]: expected a list of token strings, found {type(sentence).__name__} "
                f"{sentence!r:.60}; split sentences into tokens first (e.g. sentence.split())"
            )
        for j, token in enumerate(sentence):
            if not isinstance(token, str):
                raise TypeError(f"{what}[{i}][{j}]: expected a token string, found {type(token).__name__}")
        out.append(list(sentence))
    return out


def batch_to_ids(batch: list[list[str]]) -> Tensor:
    """Character ids of a batch of tokenized sentences, ``[B, T, 50]`` int64.

    T is the longest sentence; shorter ones are padded with all-zero tokens. Sentence
    markers are not added (the model adds them), as in AllenNLP.
    """
    return batch_to_char_ids(_check_batch(batch), _MAX_CHARS)


def _check_ids(value: Any, name: str, min_rank: int, shape_text: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor {shape_text}, found {type(value).__name__}")
    if value.dtype == torch.bool or value.is_floating_point() or value.is_complex():
        raise TypeError(f"{name}: expected an integer tensor (torch.int64), found dtype {value.dtype}")
    if value.dim() < min_rank:
        raise ValueError(f"{name}: expected shape {shape_text}, found {tuple(value.shape)}")
    return value


def _check_char_ids(inputs: Any, max_chars: int | None, *, leading_dims: bool = True) -> Tensor:
    """``inputs`` as character ids ``[B, T, max_chars]`` (with more leading dimensions if
    ``leading_dims``), or an error naming what is wrong. ``max_chars`` None: any width."""
    shape_text = f"(batch_size, timesteps, {max_chars or _MAX_CHARS})"
    if leading_dims:
        shape_text += " or with more leading dimensions"
    inputs = _check_ids(inputs, "inputs", 3, shape_text)
    if not leading_dims and inputs.dim() != 3:
        raise ValueError(f"inputs: expected shape {shape_text}, found {tuple(inputs.shape)}")
    if max_chars is not None:
        if inputs.shape[-1] != max_chars:
            raise ValueError(
                f"inputs: expected {max_chars} character ids per token (max_characters_per_token "
                f"of the options), found {inputs.shape[-1]} (shape {tuple(inputs.shape)})"
            )
        # An id outside the embedding table would otherwise fail deep inside the model
        # (on CUDA as a device-side assert that poisons the whole context).
        if inputs.numel() and bool(((inputs < 0) | (inputs >= _N_CHAR_IDS)).any()):
            raise ValueError(
                f"inputs: character ids must be in 0..{_N_CHAR_IDS - 1} (from batch_to_ids), found "
                f"values from {int(inputs.min())} to {int(inputs.max())}"
            )
    return inputs


def _marker_ids(config: ElmoConfig) -> Tensor:
    """The character ids of ``<S>`` and ``</S>``, ``[2, max_characters_per_token]``."""
    max_chars = config.char_cnn.max_characters_per_token
    return torch.tensor([token_to_char_ids(BOS_TOKEN, max_chars), token_to_char_ids(EOS_TOKEN, max_chars)])


def _load_files(options_file: PathLike, weight_file: PathLike, requires_grad: bool) -> ElmoBiLM:
    bilm = load_bilm_files(resolve(options_file, weight_file))
    bilm.requires_grad_(requires_grad)
    return bilm


class ScalarMix(nn.Module):
    """AllenNLP's ``ScalarMix``: ``gamma * sum_k softmax(w)_k * tensor_k``, in AllenNLP's layout.

    The mix is this package's (:func:`elmo.mix.mix_layers`, as :class:`elmo.mix.ScalarMix`);
    only the parameters are laid out as AllenNLP's, so that state dicts and code that reads
    them carry over: ``scalar_parameters``, one parameter of shape ``[1]`` per layer
    (pre-softmax, 0 at the start: an equal mix), and ``gamma`` of shape ``[1]`` (1 at the
    start). ``trainable=False`` freezes both. With ``do_layer_norm``, each tensor is first
    normalised by the mean and variance of its elements under ``mask`` (the whole batch).

    A state dict of this package's earlier ``Elmo`` (one ``weights`` vector, a 0-d
    ``gamma``) still loads.
    """

    def __init__(
        self,
        mixture_size: int,
        do_layer_norm: bool = False,
        initial_scalar_parameters: Sequence[float] | None = None,
        trainable: bool = True,
    ) -> None:
        super().__init__()
        if initial_scalar_parameters is None:
            initial_scalar_parameters = [0.0] * mixture_size
        init = [float(w) for w in initial_scalar_parameters]
        if len(init) != mixture_size:
            raise ConfigurationError(
                f"initial_scalar_parameters: expected {mixture_size} values (one per layer), "
                f"found {len(init)}"
            )
        self.mixture_size = mixture_size
        self.do_layer_norm = do_layer_norm
        self.scalar_parameters = nn.ParameterList(
            [nn.Parameter(torch.tensor([w]), requires_grad=trainable) for w in init]
        )
        self.gamma = nn.Parameter(torch.tensor([1.0]), requires_grad=trainable)

    def forward(self, tensors: Sequence[Tensor], mask: Tensor | None = None) -> Tensor:
        """The mix of ``tensors`` (all of one shape); ``mask`` (their shape without the last
        dimension) is needed with ``do_layer_norm`` only."""
        weights = torch.cat(list(self.scalar_parameters))
        return mix_layers(tensors, weights, self.gamma, mask, self.do_layer_norm)

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        old_weights = state_dict.pop(prefix + "weights", None)
        if old_weights is not None:
            for k, w in enumerate(old_weights.reshape(-1)):
                state_dict[f"{prefix}scalar_parameters.{k}"] = w.reshape(1)
            if prefix + "gamma" in state_dict:
                state_dict[prefix + "gamma"] = state_dict[prefix + "gamma"].reshape(1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class _ElmoCharacterEncoder(nn.Module):
    """The context-free token representations, as AllenNLP's ``_ElmoCharacterEncoder``.

    ``forward(inputs)`` takes character ids ``[B, T, 50]`` (from :func:`batch_to_ids`) and
    returns ``{"token_embedding": [B, T + 2, P], "mask": bool [B, T + 2]}``: ``<S>`` at
    position 0 and ``</S>`` right after each sentence are added, as in AllenNLP; positions
    outside the mask are zero. ``get_output_dim()`` is P, the projection size.

    The computation is the char CNN, highway and projection of this package's model
    (``token_encoder``, an :class:`elmo.model.TokenEncoder`). An ``_ElmoBiLm``'s
    ``_token_embedder`` shares its biLM's encoder.
    """

    _marker_ids: Tensor  # buffer: the character ids of <S> and </S>

    def __init__(self, options_file: PathLike, weight_file: PathLike, requires_grad: bool = False) -> None:
        super().__init__()
        # The weight loader reads and checks a model's file as a whole; the LSTMs are
        # dropped here and only the token encoder is kept.
        bilm = _load_files(options_file, weight_file, requires_grad)
        self._attach(bilm.token_encoder, bilm.config)

    @classmethod
    def _sharing(cls, bilm: ElmoBiLM) -> _ElmoCharacterEncoder:
        """An encoder over ``bilm``'s own token encoder (the same parameters)."""
        encoder = cls.__new__(cls)
        nn.Module.__init__(encoder)
        encoder._attach(bilm.token_encoder, bilm.config)
        return encoder

    def _attach(self, token_encoder: TokenEncoder, config: ElmoConfig) -> None:
        self.token_encoder = token_encoder
        self.config = config
        self.output_dim = config.lstm.projection_dim
        self.register_buffer("_marker_ids", _marker_ids(config), persistent=False)

    def get_output_dim(self) -> int:
        """P, the width of the token representations."""
        return self.output_dim

    def forward(self, inputs: Tensor) -> dict[str, Tensor]:
        """Token representations of character ids ``[B, T, 50]`` with the sentence markers added."""
        char_ids = _check_char_ids(inputs, self.config.char_cnn.max_characters_per_token, leading_dims=False)
        device = self.token_encoder.proj_b.device
        # The marker ids move here too: the encoder an _ElmoBiLm shares is not registered
        # with it, so its buffer does not follow the biLM's moves.
        _, with_markers, lengths = tokens_with_boundaries(
            self.token_encoder, char_ids.to(device), self._marker_ids.to(device)
        )
        mask = torch.arange(with_markers.shape[1], device=device) < (lengths + 2).unsqueeze(1)
        return {"token_embedding": with_markers, "mask": mask}


class _CarriedLstmState:
    """What AllenNLP code reaches as ``_ElmoBiLm._elmo_lstm``: the carried LSTM state.

    AllenNLP's ``ElmoLstm`` holds the LSTM weights and the state carried between calls.
    Here the weights are those of the biLM (``_ElmoBiLm.bilm``) and the state is its
    runner's (:class:`elmo.runner.CarriedState`); this object shows that state as
    AllenNLP's does: ``reset_states(mask=None)``, ``stateful`` and ``_states``.
    """

    def __init__(self, runner: BiLMRunner) -> None:
        self._runner = runner

    @property
    def stateful(self) -> bool:
        """Whether each batch row's state is carried into the next call."""
        return self._runner.stateful

    @stateful.setter
    def stateful(self, value: bool) -> None:
        self._runner.stateful = bool(value)

    def reset_states(self, mask: Tensor | None = None) -> None:
        """Forget the carried state: of every row, or of the rows where ``mask`` [B] is True."""
        if mask is None:
            self._runner.reset_state()
            return
        with self._runner.state.lock:  # read, change, write back: no call in between
            states = self._states
            if states is None:
                raise ValueError("reset_states(mask): there is no carried state yet")
            rows = states[0].shape[1]
            if mask.shape != (rows,):
                raise ValueError(
                    f"reset_states: expected a mask of shape ({rows},) (one per stored row), "
                    f"found {tuple(mask.shape)}"
                )
            keep = ~mask.to(device=states[0].device, dtype=torch.bool).view(1, rows, 1)
            self._states = (states[0] * keep, states[1] * keep)

    @property
    def _states(self) -> tuple[Tensor, Tensor] | None:
        """The carried state in AllenNLP's layout, or None before the first call:
        ``(h [layers, B, 2P], c [layers, B, 2H])``, forward then backward on the last axis."""
        layers = self._runner.state.layers
        if layers is None:
            return None
        h = torch.stack([torch.cat([s.forward_h, s.backward_h], dim=-1) for s in layers])
        c = torch.stack([torch.cat([s.forward_c, s.backward_c], dim=-1) for s in layers])
        return h, c

    @_states.setter
    def _states(self, value: tuple[Tensor, Tensor] | None) -> None:
        if value is None:
            self._runner.reset_state()
            return
        config = self._runner.bilm.config
        h, c = value
        expected = (config.lstm.n_layers, h.shape[1] if h.dim() == 3 else -1)
        for name, tensor, width in (("h", h, config.lstm.projection_dim), ("c", c, config.lstm.dim)):
            if tensor.dim() != 3 or tuple(tensor.shape) != (*expected, 2 * width):
                raise ValueError(
                    f"_states: expected {name} of shape (layers={expected[0]}, batch, {2 * width}), "
                    f"found {tuple(tensor.shape)}"
                )
        p, cells = config.lstm.projection_dim, config.lstm.dim
        self._runner.state.layers = [
            LayerState(h[k, :, :p], c[k, :, :cells], h[k, :, p:], c[k, :, cells:]) for k in range(h.shape[0])
        ]


class _ElmoBiLm(nn.Module):
    """The pre-trained biLM with AllenNLP's ``_ElmoBiLm`` interface.

    ``forward(inputs, word_inputs=None)`` takes character ids ``[B, T, 50]`` and returns
    ``{"activations": [...], "mask": bool [B, T + 2]}`` with the sentence markers
    ``<S>``/``</S>`` included: activation 0 is the token representation duplicated to
    ``[B, T + 2, 2P]``, then one ``[B, T + 2, 2P]`` per LSTM layer; positions outside the
    mask are zero. Stateful like AllenNLP's: row r of a call starts from the LSTM state
    row r ended in at the previous call; ``_elmo_lstm.reset_states()`` starts over.

    The biLM is this package's plain model (``bilm``, an :class:`elmo.ElmoBiLM`), run by a
    :class:`elmo.runner.BiLMRunner`: the fast engine unless gradients must reach the
    biLM. Also as in AllenNLP: ``num_layers``, ``get_output_dim()`` (2P),
    ``_token_embedder`` (an :class:`_ElmoCharacterEncoder` over the same weights) and
    :meth:`create_cached_cnn_embeddings`.

    Args:
        options_file, weight_file: the model's files (paths or URLs, see :func:`elmo.resolve.resolve`).
        requires_grad: make the biLM's weights trainable.
        vocab_to_cache: a word list; ``forward`` then takes ``word_inputs`` ``[B, T]`` of
            indices into it (0 = padding) instead of character ids. An index outside the
            list falls back to the character ``inputs``, with a warning.
        stateful, engine, precision, cache_size: (keyword-only, not in AllenNLP) as for :class:`Elmo`.
    """

    def __init__(
        self,
        options_file: PathLike,
        weight_file: PathLike,
        requires_grad: bool = False,
        vocab_to_cache: list[str] | None = None,
        *,
        stateful: bool = True,
        engine: str = "auto",
        precision: str | None = None,
        cache_size: int = DEFAULT_CACHE_SIZE,
        dtype: str | None = None,
    ) -> None:
        super().__init__()
        options = EngineOptions.from_keywords(engine, precision, cache_size, dtype=dtype)
        self._attach(_load_files(options_file, weight_file, requires_grad), options, stateful, vocab_to_cache)

    @classmethod
    def _wrap(
        cls,
        bilm: ElmoBiLM,
        options: EngineOptions,
        *,
        stateful: bool,
        vocab_to_cache: list[str] | None = None,
    ) -> _ElmoBiLm:
        """An ``_ElmoBiLm`` running an already loaded ``bilm`` (shared, not copied)."""
        wrapper = cls.__new__(cls)
        nn.Module.__init__(wrapper)
        wrapper._attach(bilm, options, stateful, vocab_to_cache)
        return wrapper

    def _attach(
        self, bilm: ElmoBiLM, options: EngineOptions, stateful: bool, vocab_to_cache: list[str] | None
    ) -> None:
        self.bilm = bilm
        self._runner = BiLMRunner(bilm, options, stateful=stateful)
        self._elmo_lstm = _CarriedLstmState(self._runner)
        # Not registered as a submodule: its parameters are the biLM's, registered once
        # (as "bilm.token_encoder.*") in parameters() and the state dict.
        object.__setattr__(self, "_token_embedder", _ElmoCharacterEncoder._sharing(bilm))
        self._word_embedding: nn.Embedding | None = None
        self.register_buffer("_bos_embedding", None, persistent=False)
        self.register_buffer("_eos_embedding", None, persistent=False)
        self.register_buffer("_vocab_char_ids", None, persistent=False)
        if vocab_to_cache:
            self.create_cached_cnn_embeddings(vocab_to_cache)

    @property
    def config(self) -> ElmoConfig:
        """The biLM's configuration (from its options file)."""
        return self.bilm.config

    @property
    def num_layers(self) -> int:
        """Number of activations: the token layer plus one per LSTM layer."""
        return self.bilm.num_layers

    def get_output_dim(self) -> int:
        """Width of each activation: twice the biLM's projection size."""
        return self.bilm.config.output_dim

    def create_cached_cnn_embeddings(self, tokens: list[str]) -> None:
        """Use ``tokens`` as the vocabulary of ``word_inputs`` (index i is ``tokens[i]``, 0 is padding).

        As in AllenNLP, this sets ``_word_embedding`` (an ``nn.Embedding`` whose row i is the
        context-free representation of ``tokens[i]``), ``_bos_embedding`` and
        ``_eos_embedding`` (of ``<S>`` and ``</S>``). Unlike AllenNLP, ``forward`` maps word
        indices to the words' character ids and runs the character encoder (the fast
        engine keeps its own cache of token representations), so these three are computed
        here for reading only: frozen, and outputs do not depend on them.
        """
        if isinstance(tokens, str) or not all(isinstance(w, str) for w in tokens):
            raise TypeError("vocab_to_cache: expected a list of word strings")
        words = list(tokens)
        encoder = self.bilm.token_encoder
        device = encoder.proj_b.device
        table = batch_to_char_ids([words], self.config.char_cnn.max_characters_per_token)[0].to(device)
        with torch.no_grad():
            vectors = encoder(table) if words else encoder.proj_b.new_zeros(0, encoder.proj_b.shape[0])
            bos, eos = encoder(_marker_ids(self.config).to(device))
        self._word_embedding = nn.Embedding.from_pretrained(vectors, freeze=True, padding_idx=0)
        self._bos_embedding, self._eos_embedding = bos, eos
        # Index 0 is padding (AllenNLP masks word_inputs == 0), whatever word it holds.
        # Ids are below 262: int16 keeps a large vocabulary's table small.
        table[:1] = 0
        self._vocab_char_ids = table.to(torch.int16)

    def forward(self, inputs: Tensor | None, word_inputs: Tensor | None = None) -> dict[str, Any]:
        """All layers for character ids ``inputs`` [B, T, 50] (or ``word_inputs`` [B, T] with a
        cached vocabulary; without one they are ignored, as in AllenNLP)."""
        out = self._runner(self._char_ids(inputs, word_inputs), keep_boundaries=True)
        return {"activations": out.full_width_layers(), "mask": out.mask}

    def _char_ids(self, inputs: Tensor | None, word_inputs: Tensor | None) -> Tensor:
        table = self._vocab_char_ids
        if word_inputs is not None and table is not None:
            word_inputs = _check_ids(word_inputs, "word_inputs", 2, "(batch_size, timesteps)")
            out_of_range = (word_inputs < 0) | (word_inputs >= table.shape[0])
            if not bool(out_of_range.any()):
                return table[word_inputs.to(table.device)].long()
            bad = int(word_inputs[out_of_range][0])
            if inputs is None:
                raise ValueError(
                    f"word_inputs: index {bad} is outside vocab_to_cache (0..{table.shape[0] - 1}) "
                    "and no character inputs were given to fall back to"
                )
            warnings.warn(
                f"word_inputs: index {bad} is outside vocab_to_cache; using the character inputs",
                stacklevel=2,
            )
        return _check_char_ids(inputs, self.config.char_cnn.max_characters_per_token, leading_dims=False)

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        # Before this wrapper, Elmo's biLM parameters had no "bilm." in their names
        # ("_elmo_lstm.token_encoder.proj_w"); such state dicts still load.
        children = {name for name, _ in self.bilm.named_children()}
        old = [
            k for k in state_dict if k.startswith(prefix) and k[len(prefix) :].split(".", 1)[0] in children
        ]
        for key in old:
            state_dict[f"{prefix}bilm.{key[len(prefix) :]}"] = state_dict.pop(key)
        if old and self._word_embedding is not None:
            state_dict.setdefault(prefix + "_word_embedding.weight", self._word_embedding.weight.detach())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class Elmo(nn.Module):
    """ELMo representations from a pre-trained biLM, as AllenNLP's ``Elmo`` module.

    Runs the biLM once per call and mixes its layers (the token representation, duplicated
    to ``2P``, and each LSTM layer, ``2P``) into ``num_output_representations`` learned
    scalar mixes. Each mix is computed with the sentence boundaries ``<S>``/``</S>``
    present (``do_layer_norm`` normalises over them too), then the boundaries are removed
    (unless ``keep_sentence_boundaries``) and dropout is applied (active in train mode
    only, as usual for ``torch.nn.Dropout``).

    As in AllenNLP, the biLM is ``_elmo_lstm`` (an :class:`_ElmoBiLm`; its carried state
    is reset by ``_elmo_lstm._elmo_lstm.reset_states()`` or :meth:`reset_states`) and the
    mixes are ``scalar_mix_0``, ``scalar_mix_1``, ... (also listed in ``_scalar_mixes``),
    each a :class:`ScalarMix` with AllenNLP's ``scalar_parameters`` and ``gamma``.

    Inference calls from several threads are safe, as for :class:`ElmoEmbedder` (stateless:
    in parallel, each as alone; stateful: one at a time, in the order they take the lock).

    Args:
        options_file, weight_file: the model's ``options.json`` and ``weights.hdf5``.
        num_output_representations: how many independently mixed representations to return.
        requires_grad: make the biLM's weights trainable (fine-tuning); the mixes are
            trainable either way unless ``scalar_mix_parameters`` is given.
        do_layer_norm: normalise each layer by its mean and variance over the unmasked
            positions of the batch before mixing.
        dropout: dropout probability on the returned representations.
        vocab_to_cache: a word list; ``forward`` then accepts ``word_inputs`` [B, T] of
            indices into it (0 = padding) instead of character ids. Words are mapped to
            their character ids, so results equal character input (the char CNN still
            runs: the fast engine's own token cache is what saves time). As in AllenNLP, an
            index outside the list falls back to the character ``inputs`` (with a warning).
        keep_sentence_boundaries: return ``[B, T + 2, 2P]`` with ``<S>`` at position 0 and
            ``</S>`` after each sentence, and the mask that covers them.
        scalar_mix_parameters: fixed, pre-softmax layer weights; the mixes (weights and
            gamma) are then not trainable.
        module: instead of the files, an already loaded :class:`elmo.ElmoBiLM` (shared,
            with this module's state carrying; ``requires_grad`` is ignored), an
            :class:`_ElmoBiLm` (used as it is, with its own engine options and carried
            state), or any module with AllenNLP's contract: a ``num_layers`` attribute and
            ``forward(inputs, word_inputs)`` returning ``{"activations": [...], "mask": ...}``
            with the boundaries included. Pass ``None`` for both files then.
        stateful: (keyword-only, not in AllenNLP) carry each batch row's LSTM state into
            the next call, as AllenNLP does (the default). ``False`` starts every call
            from zero state, so a sentence's output does not depend on earlier calls (a
            given ``_ElmoBiLm`` stops carrying state; a custom module is reset before
            every call).
        engine, precision, cache_size: (keyword-only, not in AllenNLP) how the biLM is
            computed, see :class:`elmo.runner.EngineOptions`.

    ``forward(inputs, word_inputs=None)`` takes character ids ``[B, T, 50]`` from
    :func:`batch_to_ids` (extra leading dimensions are flattened and restored) and returns
    ``{"elmo_representations": [tensor [B, T, 2P], ...], "mask": bool [B, T]}``.
    """

    def __init__(
        self,
        options_file: PathLike | None,
        weight_file: PathLike | None,
        num_output_representations: int,
        requires_grad: bool = False,
        do_layer_norm: bool = False,
        dropout: float = 0.5,
        vocab_to_cache: list[str] | None = None,
        keep_sentence_boundaries: bool = False,
        scalar_mix_parameters: list[float] | None = None,
        module: nn.Module | None = None,
        *,
        stateful: bool = True,
        engine: str = "auto",
        precision: str | None = None,
        cache_size: int = DEFAULT_CACHE_SIZE,
        dtype: str | None = None,
    ) -> None:
        super().__init__()
        options = EngineOptions.from_keywords(engine, precision, cache_size, dtype=dtype)
        n = num_output_representations
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"num_output_representations: expected an int >= 0, found {n!r}")
        if module is not None:
            if options_file is not None or weight_file is not None:
                raise ConfigurationError(
                    "Elmo: pass either module= or options_file and weight_file, not both "
                    "(use Elmo(None, None, n, module=...))"
                )
            if isinstance(module, ElmoBiLM):
                module = _ElmoBiLm._wrap(module, options, stateful=stateful, vocab_to_cache=vocab_to_cache)
            elif isinstance(module, _ElmoBiLm):
                if not stateful:
                    module._elmo_lstm.stateful = False
            elif not hasattr(module, "num_layers"):
                raise TypeError(
                    f"module: expected an elmo.ElmoBiLM or a module with a num_layers attribute, "
                    f"found {type(module).__name__} without one"
                )
            elif not stateful and not hasattr(module, "reset_states"):
                raise ValueError("stateful=False with a custom module needs a module with reset_states()")
            # an _ElmoBiLm, or any module with AllenNLP's contract (duck-typed)
            self._elmo_lstm: Any = module
        else:
            if options_file is None or weight_file is None:
                raise TypeError("Elmo: options_file and weight_file are required (or pass module=)")
            self._elmo_lstm = _ElmoBiLm(
                options_file,
                weight_file,
                requires_grad=requires_grad,
                vocab_to_cache=vocab_to_cache,
                stateful=stateful,
                engine=options.engine,
                precision=options.precision,
                cache_size=options.cache_size,
            )
        num_layers = self._elmo_lstm.num_layers
        if scalar_mix_parameters is not None and len(scalar_mix_parameters) != num_layers:
            raise ConfigurationError(
                f"scalar_mix_parameters: expected {num_layers} values (one per biLM layer), "
                f"found {len(scalar_mix_parameters)}"
            )
        self._has_cached_vocab = vocab_to_cache is not None
        self._keep_sentence_boundaries = keep_sentence_boundaries
        self._dropout = nn.Dropout(p=dropout)
        self._stateful = stateful  # what a custom module's calls do; an _ElmoBiLm keeps its own
        self._scalar_mixes: list[ScalarMix] = []
        for k in range(num_output_representations):
            mix = ScalarMix(
                num_layers,
                do_layer_norm=do_layer_norm,
                initial_scalar_parameters=scalar_mix_parameters,
                trainable=scalar_mix_parameters is None,
            )
            self.add_module(f"scalar_mix_{k}", mix)
            self._scalar_mixes.append(mix)

    @property
    def bilm(self) -> nn.Module:
        """The biLM the representations come from: the :class:`elmo.ElmoBiLM` (or the custom module)."""
        return self._elmo_lstm.bilm if isinstance(self._elmo_lstm, _ElmoBiLm) else self._elmo_lstm

    @property
    def _runner(self) -> BiLMRunner | None:
        return self._elmo_lstm._runner if isinstance(self._elmo_lstm, _ElmoBiLm) else None

    @property
    def scalar_mixes(self) -> list[ScalarMix]:
        """The scalar mix of each output representation, in order."""
        return [getattr(self, f"scalar_mix_{k}") for k in range(len(self._scalar_mixes))]

    def get_output_dim(self) -> int:
        """Width of each representation: twice the biLM's projection size."""
        return self._elmo_lstm.get_output_dim()

    @property
    def stateful(self) -> bool:
        """Whether each batch row's LSTM state is carried into the next call."""
        if isinstance(self._elmo_lstm, _ElmoBiLm):
            return self._elmo_lstm._elmo_lstm.stateful
        return self._stateful

    @stateful.setter
    def stateful(self, value: bool) -> None:
        if isinstance(self._elmo_lstm, _ElmoBiLm):
            self._elmo_lstm._elmo_lstm.stateful = bool(value)
        self._stateful = bool(value)

    def reset_states(self) -> None:
        """Forget the carried LSTM state: the next call starts every row from zero."""
        if isinstance(self._elmo_lstm, _ElmoBiLm):
            self._elmo_lstm._elmo_lstm.reset_states()
        elif hasattr(self._elmo_lstm, "reset_states"):
            self._elmo_lstm.reset_states()

    def forward(self, inputs: Tensor | None, word_inputs: Tensor | None = None) -> dict[str, Any]:
        """ELMo representations for character ids ``inputs`` [..., T, 50].

        ``word_inputs`` [..., T] (indices into ``vocab_to_cache``) replaces ``inputs`` when
        the module was built with a vocabulary; without one it is ignored with a warning,
        as in AllenNLP.
        """
        if word_inputs is not None:
            word_inputs = _check_ids(word_inputs, "word_inputs", 2, "(batch_size, timesteps)")
            if not self._has_cached_vocab:
                warnings.warn(
                    "word_inputs were passed to Elmo but it has no vocab_to_cache; "
                    "using the character inputs",
                    stacklevel=2,
                )
                word_inputs = None
        if word_inputs is None or inputs is not None:
            inputs = _check_char_ids(inputs, self._max_chars())

        if word_inputs is not None:
            lead_shape = word_inputs.shape[:-1]
            flat_words = word_inputs.reshape(math.prod(lead_shape), word_inputs.shape[-1])
        else:
            assert inputs is not None  # checked above: character ids are needed without word ids
            lead_shape = inputs.shape[:-2]
            flat_words = None
        # explicit row counts: with no time steps (every sentence empty) -1 is ambiguous
        rows = math.prod(lead_shape)
        flat_inputs = None if inputs is None else inputs.reshape(rows, *inputs.shape[-2:])

        if not isinstance(self._elmo_lstm, _ElmoBiLm) and not self._stateful:
            self._elmo_lstm.reset_states()
        out = self._elmo_lstm(flat_inputs, flat_words)
        if not isinstance(out, dict) or "activations" not in out or "mask" not in out:
            raise TypeError("module: forward must return a dict with 'activations' and 'mask'")
        layers, mask = list(out["activations"]), out["mask"].bool()

        if not self._keep_sentence_boundaries:
            # Sentences are prefixes of their rows, so dropping <S> and </S> keeps
            # positions 1..n of each row: the mask shifted by two.
            steps = mask.shape[1] - 2
            lengths = (mask.sum(dim=1) - 2).clamp(min=0)
            new_mask = torch.arange(steps, device=mask.device) < lengths.unsqueeze(1)
        representations = []
        for mix in self.scalar_mixes:
            rep = mix(layers, mask)
            if self._keep_sentence_boundaries:
                rep = rep.masked_fill(~mask.unsqueeze(-1), 0.0)
            else:
                rep = rep[:, 1 : steps + 1].masked_fill(~new_mask.unsqueeze(-1), 0.0)
            representations.append(self._dropout(rep))
        if not self._keep_sentence_boundaries:
            mask = new_mask

        return {
            "elmo_representations": [r.reshape(*lead_shape, *r.shape[1:]) for r in representations],
            "mask": mask.reshape(*lead_shape, mask.shape[1]),
        }

    def _max_chars(self) -> int | None:
        """Characters per token of our own biLM; a custom module's is unknown."""
        if isinstance(self._elmo_lstm, _ElmoBiLm):
            return self._elmo_lstm.config.char_cnn.max_characters_per_token
        return None


class ElmoEmbedder:
    """Embeds tokenized sentences with all biLM layers, as AllenNLP 0.9's ``ElmoEmbedder``.

    Each sentence of n tokens gives a float32 array ``[num_layers, n, 2P]`` (``[3, n,
    1024]`` for the released models): layer 0 is the context-free token representation
    duplicated to ``2P``, then the LSTM layers; sentence boundaries are removed.

    Stateful like AllenNLP's: the LSTM state of batch row r is carried into row r of the
    next batch, so an embedding depends on the sentences embedded before it in the same
    row. This reproduces AllenNLP's output; ``stateful=False`` (not in AllenNLP) starts
    every batch from zero state instead, and :meth:`reset_states` starts over.

    Threads: one embedder may be shared. With ``stateful=False`` concurrent calls run in
    parallel and each gives what it gives alone. Stateful batches run one at a time under
    the carried state's lock (see :mod:`elmo.runner`), each continuing the state the
    previous one left, so the order of concurrent batches is the order they take the lock.

    As in AllenNLP, the biLM is ``elmo_bilm``, an :class:`_ElmoBiLm` that shares this
    embedder's carried state (``elmo_bilm._elmo_lstm.reset_states()`` resets it too).

    Args:
        options_file, weight_file: the model's files; both omitted: the released original
            model, as in AllenNLP (downloaded once into the cache, see :mod:`elmo.download`).
        cuda_device: a CUDA device index, or -1 for the CPU.
        stateful: see above.
        engine, precision, cache_size: (keyword-only, not in AllenNLP) as in :func:`elmo.load`;
            the fast engine by default, ``engine="plain"`` for the reference model.
    """

    def __init__(
        self,
        options_file: PathLike | None = None,
        weight_file: PathLike | None = None,
        cuda_device: int = -1,
        *,
        stateful: bool = True,
        engine: str = "auto",
        precision: str | None = None,
        cache_size: int = DEFAULT_CACHE_SIZE,
        dtype: str | None = None,
    ) -> None:
        options = EngineOptions.from_keywords(engine, precision, cache_size, dtype=dtype)
        if options_file is None and weight_file is None:
            files = resolve("original")
        elif options_file is None or weight_file is None:
            raise TypeError(
                "ElmoEmbedder needs options_file and weight_file together (or neither, for the "
                "released original model)"
            )
        else:
            files = resolve(options_file, weight_file)
        device = None
        if cuda_device >= 0:
            if not torch.cuda.is_available():
                raise ValueError(
                    f"cuda_device={cuda_device}: CUDA is not available here; use cuda_device=-1 for the CPU"
                )
            if cuda_device >= torch.cuda.device_count():
                raise ValueError(
                    f"cuda_device={cuda_device}: expected an index below {torch.cuda.device_count()} "
                    "(the number of CUDA devices)"
                )
            device = torch.device("cuda", cuda_device)
        self.cuda_device = cuda_device
        bilm = load_bilm_files(files, device).requires_grad_(False)
        self.elmo_bilm = _ElmoBiLm._wrap(bilm, options, stateful=stateful)

    @property
    def config(self) -> ElmoConfig:
        """The model's configuration (from its options file)."""
        return self.elmo_bilm.config

    @property
    def _runner(self) -> BiLMRunner:
        return self.elmo_bilm._runner

    @property
    def stateful(self) -> bool:
        """Whether each batch row's LSTM state is carried into the next batch."""
        return self.elmo_bilm._elmo_lstm.stateful

    @stateful.setter
    def stateful(self, value: bool) -> None:
        self.elmo_bilm._elmo_lstm.stateful = value

    def reset_states(self) -> None:
        """Forget the carried LSTM state: the next batch starts every row from zero."""
        self.elmo_bilm._elmo_lstm.reset_states()

    def batch_to_embeddings(self, batch: list[list[str]]) -> tuple[Tensor, Tensor]:
        """All layers of a batch as tensors: ``([B, num_layers, T, 2P], mask [B, T])``."""
        batch = _check_batch(batch)
        char_ids = batch_to_char_ids(batch, self.config.char_cnn.max_characters_per_token)
        with torch.no_grad():
            out = self._runner(char_ids)
        return torch.stack(out.full_width_layers(), dim=1), out.mask

    def embed_sentence(self, sentence: list[str]) -> np.ndarray:
        """One tokenized sentence: ``[num_layers, n, 2P]``."""
        if isinstance(sentence, (str, bytes)):
            raise TypeError(
                f"sentence: expected a list of token strings, found a {type(sentence).__name__}; "
                "split it into tokens first (e.g. sentence.split())"
            )
        return self.embed_batch([sentence])[0]

    def embed_batch(self, batch: list[list[str]]) -> list[np.ndarray]:
        """One array ``[num_layers, n_i, 2P]`` per sentence (``n_i = 0`` for an empty one).

        An empty sentence still runs ``<S> </S>`` through the LSTM of its row, which
        moves that row's carried state, as in AllenNLP.
        """
        batch = _check_batch(batch)
        if not batch:
            return []
        with torch.no_grad():
            out = self._runner.ragged_sentences(batch)
        # Copies, so that keeping one sentence does not keep the whole batch alive.
        return [array.copy() for array in split_ragged(out, "all")]

    def embed_sentences(
        self, sentences: Iterable[list[str]], batch_size: int = DEFAULT_BATCH_SIZE
    ) -> Iterator[np.ndarray]:
        """Embed sentences lazily in batches of ``batch_size``; yields one array per sentence."""
        _check_batch_size(batch_size)
        iterator = iter(sentences)
        while batch := list(itertools.islice(iterator, batch_size)):
            yield from self.embed_batch(batch)

    def embed_file(
        self,
        input_file: PathLike | IO[str],
        output_file_path: PathLike,
        output_format: str = "all",
        batch_size: int = DEFAULT_BATCH_SIZE,
        forget_sentences: bool = False,
        use_sentence_keys: bool = False,
    ) -> None:
        """Embed a file of one whitespace-tokenized sentence a line into HDF5, as ``allennlp elmo``.

        Each line (stripped) becomes a float32 dataset named by its 0-based line index
        (``"0"``, ``"1"``, ...) or, with ``use_sentence_keys``, by the line itself (a
        repeated line is then an error). ``output_format``: ``"all"`` ``[num_layers, n,
        2P]``, ``"top"`` (the last layer) ``[n, 2P]`` or ``"average"`` (mean of the
        layers) ``[n, 2P]``. Unless ``forget_sentences``, a dataset ``sentence_to_index``
        holds one JSON string mapping each line to its key (``{}`` with
        ``use_sentence_keys``, as in AllenNLP).

        As in AllenNLP 0.9, a file with blank lines is refused (:class:`ConfigurationError`
        naming their 0-based indexes), before anything is embedded where the input can be
        read twice (a path, or a seekable file); a repeated line with ``use_sentence_keys``
        is refused too. ``input_file`` is a path or an open text file (read line by line,
        never whole, and left open). As in AllenNLP, the carried LSTM state is not reset
        first. The output is written by ``elmo embed``'s writer (:mod:`elmo.embedfile`):
        the work goes into ``output_file_path + ".partial/"`` (locked against a second
        writer) and the finished file is renamed over ``output_file_path`` at the end, so
        an error or interruption leaves any previous file untouched, never a partial one,
        and removes the partial work. (``elmo embed``, this package's own command, embeds
        blank lines as zero-length entries instead, and keeps partial work to resume.)
        """
        if output_format not in _OUTPUT_FORMATS:
            raise ValueError(
                f"output_format: expected one of {', '.join(map(repr, _OUTPUT_FORMATS))}, "
                f"found {output_format!r}"
            )
        _check_batch_size(batch_size)
        source = input_file if not isinstance(input_file, (str, os.PathLike)) else os.fspath(input_file)
        job = EmbedJob(
            input=source,
            output=Path(output_file_path),
            layers="all",  # the arrays are formatted by _EmbedderLines
            batch_size=batch_size,
            overwrite=True,
            forget_sentences=forget_sentences,
            sentence_keys=use_sentence_keys,
            blank_lines="refuse",
            reset_state=False,
            keep_partial=False,
            overwrite_foreign=True,
        )
        write_embeddings(_EmbedderLines(self, output_format, batch_size), job)


class _EmbedderLines:
    """An :class:`ElmoEmbedder` as :func:`elmo.embedfile.write_embeddings` uses it: AllenNLP's
    batches in file order, through ``embed_batch``, formatted as ``output_format`` asks."""

    def __init__(self, embedder: ElmoEmbedder, output_format: str, batch_size: int) -> None:
        self.embedder, self.output_format, self.batch_size = embedder, output_format, batch_size

    @property
    def stateful(self) -> bool:
        return self.embedder.stateful

    def identity(self) -> str:
        runner = self.embedder._runner
        return model_identity(self.embedder.config, runner.bilm.state_dict().values(), runner.precision)

    def embed(self, tokens: list[list[str]]) -> Iterator[np.ndarray]:
        for start in range(0, len(tokens), self.batch_size):
            for embedding in self.embedder.embed_batch(tokens[start : start + self.batch_size]):
                yield _format(embedding, self.output_format).astype(np.float32, copy=False)

    def get_state(self) -> list[LayerState] | None:
        return self.embedder._runner.state.layers

    def set_state(self, state: list[LayerState] | None) -> None:
        self.embedder._runner.state.layers = state


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, found {batch_size!r}")


def _format(embedding: np.ndarray, output_format: str) -> np.ndarray:
    if output_format == "top":
        return embedding[-1]
    if output_format == "average":
        return embedding.mean(axis=0, dtype=np.float32)
    return embedding
