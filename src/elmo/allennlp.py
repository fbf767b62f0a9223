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

Differences, all deliberate:

- Positions outside the returned mask are exactly zero (AllenNLP leaves the layer-norm
  offset there when ``keep_sentence_boundaries=True`` and ``do_layer_norm=True``).
- ``batch_to_ids`` always returns ``[B, T, 50]`` (AllenNLP gives ``[1, 0]`` for ``[[]]``
  and fails on ``[]``) and rejects a sentence given as a string instead of a token list.
- ``ElmoEmbedder()`` with no files uses the released original model as AllenNLP did,
  downloaded once into this package's cache (see :mod:`elmo.download`); ``embed_file`` embeds
  blank lines as zero-length entries instead of refusing the file, streams its input,
  writes its output atomically and leaves a file object it is given open.
- Parameter names differ (``scalar_mix_0.weights`` for ``scalar_mix_0.scalar_parameters.*``
  and the biLM's own names), so AllenNLP state dicts do not load.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import IO, Any

import h5py
import numpy as np
import torch
from torch import Tensor, nn

from elmo.atomic import atomic_path
from elmo.chars import batch_to_char_ids
from elmo.config import ElmoConfig
from elmo.engine import DEFAULT_CACHE_SIZE
from elmo.loading import load_bilm_files
from elmo.mix import ScalarMix
from elmo.model import ElmoBiLM
from elmo.resolve import resolve
from elmo.runner import BiLMRunner, EngineOptions

__all__ = ["DEFAULT_BATCH_SIZE", "Elmo", "ElmoEmbedder", "batch_to_ids"]

PathLike = str | os.PathLike[str]

DEFAULT_BATCH_SIZE = 64
# AllenNLP's character ids: 50 per token, 0..261 after the +1 padding shift.
_MAX_CHARS = 50
_N_CHAR_IDS = 262
_OUTPUT_FORMATS = ("all", "top", "average")
_SENTENCE_TO_INDEX = "sentence_to_index"


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


def _check_char_ids(inputs: Any, max_chars: int | None) -> Tensor:
    shape_text = f"(batch_size, timesteps, {max_chars or _MAX_CHARS}) or with more leading dimensions"
    inputs = _check_ids(inputs, "inputs", 3, shape_text)
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


class Elmo(nn.Module):
    """ELMo representations from a pre-trained biLM, as AllenNLP's ``Elmo`` module.

    Runs the biLM once per call and mixes its layers (the token representation, duplicated
    to ``2P``, and each LSTM layer, ``2P``) into ``num_output_representations`` learned
    scalar mixes. Each mix is computed with the sentence boundaries ``<S>``/``</S>``
    present (``do_layer_norm`` normalises over them too), then the boundaries are removed
    (unless ``keep_sentence_boundaries``) and dropout is applied (active in train mode
    only, as usual for ``torch.nn.Dropout``).

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
            runs: this saves no time, unlike AllenNLP's cache). As in AllenNLP, an index
            outside the list falls back to the character ``inputs`` (with a warning).
        keep_sentence_boundaries: return ``[B, T + 2, 2P]`` with ``<S>`` at position 0 and
            ``</S>`` after each sentence, and the mask that covers them.
        scalar_mix_parameters: fixed, pre-softmax layer weights; the mixes (weights and
            gamma) are then not trainable.
        module: instead of the files, an already loaded :class:`elmo.ElmoBiLM` (shared,
            with this module's state carrying; ``requires_grad`` is ignored) or any module
            with AllenNLP's contract: a ``num_layers`` attribute and
            ``forward(inputs, word_inputs)`` returning ``{"activations": [...], "mask": ...}``
            with the boundaries included. Pass ``None`` for both files then.
        stateful: (keyword-only, not in AllenNLP) carry each batch row's LSTM state into
            the next call, as AllenNLP does (the default). ``False`` starts every call
            from zero state, so a sentence's output does not depend on earlier calls.

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
        if module is not None:
            if options_file is not None or weight_file is not None:
                raise ValueError(
                    "Elmo: pass either module= or options_file and weight_file, not both "
                    "(use Elmo(None, None, n, module=...))"
                )
            if not isinstance(module, ElmoBiLM) and not hasattr(module, "num_layers"):
                raise TypeError(
                    f"module: expected an elmo.ElmoBiLM or a module with a num_layers attribute, "
                    f"found {type(module).__name__} without one"
                )
            self._elmo_lstm = module
        else:
            if options_file is None or weight_file is None:
                raise TypeError("Elmo: options_file and weight_file are required (or pass module=)")
            self._elmo_lstm = load_bilm_files(resolve(options_file, weight_file))
            for p in self._elmo_lstm.parameters():
                p.requires_grad_(requires_grad)
        self._own_bilm = isinstance(self._elmo_lstm, ElmoBiLM)
        self._runner = BiLMRunner(self._elmo_lstm, options, stateful=stateful) if self._own_bilm else None
        if not self._own_bilm and not stateful and not hasattr(self._elmo_lstm, "reset_states"):
            raise ValueError("stateful=False with a custom module needs a module with reset_states()")
        n = num_output_representations
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"num_output_representations: expected an int >= 0, found {n!r}")
        num_layers = self._elmo_lstm.num_layers
        if scalar_mix_parameters is not None and len(scalar_mix_parameters) != num_layers:
            raise ValueError(
                f"scalar_mix_parameters: expected {num_layers} values (one per biLM layer), "
                f"found {len(scalar_mix_parameters)}"
            )

        self._cached_vocab = vocab_to_cache is not None
        if self._cached_vocab:
            if isinstance(vocab_to_cache, str) or not all(isinstance(w, str) for w in vocab_to_cache):
                raise TypeError("vocab_to_cache: expected a list of word strings")
            words = list(vocab_to_cache)
            table = batch_to_char_ids([words], self._max_chars() or _MAX_CHARS)[0]
            # Index 0 is padding (AllenNLP masks word_inputs == 0), whatever word it holds.
            table[:1] = 0
            self.register_buffer("_vocab_char_ids", table, persistent=False)
        self._keep_sentence_boundaries = keep_sentence_boundaries
        self._dropout = nn.Dropout(p=dropout)
        self._stateful = stateful
        self._num_mixes = num_output_representations
        for k in range(num_output_representations):
            mix = ScalarMix(
                num_layers,
                initial_weights=scalar_mix_parameters,
                trainable=scalar_mix_parameters is None,
                layer_norm=do_layer_norm,
            )
            self.add_module(f"scalar_mix_{k}", mix)

    @property
    def bilm(self) -> nn.Module:
        """The biLM the representations come from."""
        return self._elmo_lstm

    @property
    def scalar_mixes(self) -> list[ScalarMix]:
        """The scalar mix of each output representation, in order."""
        return [getattr(self, f"scalar_mix_{k}") for k in range(self._num_mixes)]

    def get_output_dim(self) -> int:
        """Width of each representation: twice the biLM's projection size."""
        if self._own_bilm:
            return self._elmo_lstm.config.output_dim
        return self._elmo_lstm.get_output_dim()

    @property
    def stateful(self) -> bool:
        """Whether each batch row's LSTM state is carried into the next call."""
        return self._stateful

    @stateful.setter
    def stateful(self, value: bool) -> None:
        self._stateful = bool(value)
        if self._runner is not None:
            self._runner.stateful = self._stateful

    def reset_states(self) -> None:
        """Forget the carried LSTM state: the next call starts every row from zero."""
        if self._runner is not None:
            self._runner.reset_state()
        elif hasattr(self._elmo_lstm, "reset_states"):
            self._elmo_lstm.reset_states()

    def forward(self, inputs: Tensor | None, word_inputs: Tensor | None = None) -> dict[str, Any]:
        """ELMo representations for character ids ``inputs`` [..., T, 50].

        ``word_inputs`` [..., T] (indices into ``vocab_to_cache``) replaces ``inputs`` when
        the module was built with a vocabulary; without one it is ignored with a warning,
        as in AllenNLP.
        """
        max_chars = self._max_chars()
        if word_inputs is not None:
            word_inputs = _check_ids(word_inputs, "word_inputs", 2, "(batch_size, timesteps)")
            if not self._cached_vocab:
                warnings.warn(
                    "word_inputs were passed to Elmo but it has no vocab_to_cache; "
                    "using the character inputs",
                    stacklevel=2,
                )
                word_inputs = None
        if word_inputs is None or inputs is not None:
            inputs = _check_char_ids(inputs, max_chars)

        if word_inputs is not None:
            lead_shape = word_inputs.shape[:-1]
            flat_words = word_inputs.reshape(math.prod(lead_shape), word_inputs.shape[-1])
        else:
            lead_shape = inputs.shape[:-2]
            flat_words = None
        # explicit row counts: with no time steps (every sentence empty) -1 is ambiguous
        rows = math.prod(lead_shape)
        flat_inputs = None if inputs is None else inputs.reshape(rows, *inputs.shape[-2:])

        if self._own_bilm:
            layers, mask = self._run_bilm(self._char_ids(flat_inputs, flat_words))
        else:
            if not self.stateful:
                self._elmo_lstm.reset_states()
            out = self._elmo_lstm(flat_inputs, flat_words if self._cached_vocab else None)
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
        return self._elmo_lstm.config.char_cnn.max_characters_per_token if self._own_bilm else None

    def _char_ids(self, inputs: Tensor | None, word_inputs: Tensor | None) -> Tensor:
        if word_inputs is not None:
            table = self._vocab_char_ids
            out_of_range = (word_inputs < 0) | (word_inputs >= table.shape[0])
            if not bool(out_of_range.any()):
                return table[word_inputs.to(table.device)]
            bad = int(word_inputs[out_of_range][0])
            if inputs is None:
                raise ValueError(
                    f"word_inputs: index {bad} is outside vocab_to_cache (0..{table.shape[0] - 1}) "
                    "and no character inputs were given to fall back to"
                )
            warnings.warn(
                f"word_inputs: index {bad} is outside vocab_to_cache; using the character inputs",
                stacklevel=3,
            )
        return inputs

    def _run_bilm(self, char_ids: Tensor) -> tuple[list[Tensor], Tensor]:
        assert self._runner is not None
        out = self._runner(char_ids, keep_boundaries=True)
        return out.full_width_layers(), out.mask


class ElmoEmbedder:
    """Embeds tokenized sentences with all biLM layers, as AllenNLP 0.9's ``ElmoEmbedder``.

    Each sentence of n tokens gives a float32 array ``[num_layers, n, 2P]`` (``[3, n,
    1024]`` for the released models): layer 0 is the context-free token representation
    duplicated to ``2P``, then the LSTM layers; sentence boundaries are removed.

    Stateful like AllenNLP's: the LSTM state of batch row r is carried into row r of the
    next batch, so an embedding depends on the sentences embedded before it in the same
    row. This reproduces AllenNLP's output; ``stateful=False`` (not in AllenNLP) starts
    every batch from zero state instead, and :meth:`reset_states` starts over.

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
        self.elmo_bilm: ElmoBiLM = load_bilm_files(files, device)
        for p in self.elmo_bilm.parameters():
            p.requires_grad_(False)
        self._runner = BiLMRunner(self.elmo_bilm, options, stateful=stateful)

    @property
    def config(self) -> ElmoConfig:
        """The model's configuration (from its options file)."""
        return self.elmo_bilm.config

    @property
    def stateful(self) -> bool:
        """Whether each batch row's LSTM state is carried into the next batch."""
        return self._runner.stateful

    @stateful.setter
    def stateful(self, value: bool) -> None:
        self._runner.stateful = bool(value)

    def reset_states(self) -> None:
        """Forget the carried LSTM state: the next batch starts every row from zero."""
        self._runner.reset_state()

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
        if not _check_batch(batch):
            return []
        embeddings, mask = self.batch_to_embeddings(batch)
        embeddings = embeddings.cpu().numpy()
        lengths = mask.sum(dim=1).tolist()
        # Copies, so that keeping one sentence does not keep the whole padded batch alive.
        return [np.ascontiguousarray(embeddings[i, :, :n]) for i, n in enumerate(lengths)]

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

        Unlike AllenNLP, a blank line is embedded as a zero-length entry (``[num_layers,
        0, 2P]``) instead of refusing the file, except with ``use_sentence_keys`` where it
        has no name. ``input_file`` is a path or an open text file (read line by line,
        never whole, and left open). The output is written to a temporary file beside
        ``output_file_path`` and renamed over it at the end, so an error or interruption
        leaves any previous file untouched and never a partial one.
        """
        if output_format not in _OUTPUT_FORMATS:
            raise ValueError(
                f"output_format: expected one of {', '.join(map(repr, _OUTPUT_FORMATS))}, "
                f"found {output_format!r}"
            )
        _check_batch_size(batch_size)
        with atomic_path(output_file_path) as tmp, _lines(input_file) as lines, h5py.File(tmp, "x") as fout:
            sentence_to_index: dict[str, str] = {}
            numbered = enumerate(line.strip() for line in lines)
            while group := list(itertools.islice(numbered, batch_size)):
                embeddings = self.embed_batch([sentence.split() for _, sentence in group])
                for (index, sentence), embedding in zip(group, embeddings):
                    key = sentence if use_sentence_keys else str(index)
                    if not forget_sentences and not use_sentence_keys:
                        sentence_to_index[sentence] = key
                    _write_entry(fout, key, _format(embedding, output_format), index, use_sentence_keys)
            if not forget_sentences:
                if _SENTENCE_TO_INDEX in fout:
                    raise ValueError(
                        f"a line reads {_SENTENCE_TO_INDEX!r}, the name of the index dataset; "
                        "pass forget_sentences=True or do not use sentence keys"
                    )
                dataset = fout.create_dataset(_SENTENCE_TO_INDEX, (1,), dtype=h5py.string_dtype())
                dataset[0] = json.dumps(sentence_to_index)


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, found {batch_size!r}")


def _format(embedding: np.ndarray, output_format: str) -> np.ndarray:
    if output_format == "top":
        return embedding[-1]
    if output_format == "average":
        return embedding.mean(axis=0, dtype=np.float32)
    return embedding


def _write_entry(fout: h5py.File, key: str, data: np.ndarray, index: int, by_sentence: bool) -> None:
    if by_sentence:
        where = f"line {index + 1}"
        if not key:
            raise ValueError(f"{where} is blank: with use_sentence_keys a blank line has no dataset name")
        if key in fout:
            raise ValueError(
                f"{where}: the sentence {key!r:.80} is already in the output; to embed repeated "
                "sentences, do not use sentence keys"
            )
    try:
        fout.create_dataset(key, data=data.astype(np.float32, copy=False))
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"line {index + 1}: cannot store {key!r:.80} as an HDF5 dataset name ({e})") from e


@contextmanager
def _lines(source: PathLike | IO[str]) -> Iterator[Iterator[str]]:
    """The lines of a path (opened as UTF-8) or of an open file (not closed here)."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, encoding="utf-8") as f:
            yield iter(f)
    else:
        yield (line.decode("utf-8") if isinstance(line, bytes) else line for line in source)
