"""The model configuration: a dataclass that maps 1:1 onto ELMo's ``options.json``.

Two dialects of the file exist. The released (AllenNLP / bilm-tf inference) files hold
only ``lstm`` and ``char_cnn`` with ``n_characters: 262`` and every LSTM key present.
The files bilm-tf's trainer writes add training keys at the top level, use
``n_characters: 261`` (ids without the +1 padding shift) and may omit
``use_skip_connections``, ``cell_clip`` and ``proj_clip``. Both read into the same
:class:`ElmoConfig`; keys a file omits stay omitted when it is written back.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from elmo.atomic import write_json_atomic
from elmo.errors import ConfigError
from elmo.files import OPTIONS_CAP, parse_json, read_text_capped

__all__ = ["MAX_PARAMETERS", "OPTION_LIMITS", "PRESETS", "CharCNNConfig", "ElmoConfig", "LSTMConfig"]

# The largest value each option may take, checked when an options file is read, before any
# model is built. The released models use at most: embedding.dim 16, 7 filters of width up
# to 7 and 1024 maps (2048 together), n_highway 2, 50 characters per token, lstm.dim 4096,
# projection_dim 512, n_layers 2. The limits leave room for research models many times
# larger while refusing values that could only allocate until memory runs out (a dimension
# of 10^7, 10^9 characters per token, 10^6 layers); MAX_PARAMETERS bounds their product.
OPTION_LIMITS: dict[str, int] = {
    "char_cnn.embedding.dim": 4096,
    "char_cnn.filters": 256,  # [width, number] pairs
    "char_cnn.filters number": 65536,  # maps of one filter, and of all filters together
    "char_cnn.n_highway": 64,
    "char_cnn.max_characters_per_token": 2048,
    "lstm.dim": 65536,
    "lstm.projection_dim": 65536,
    "lstm.n_layers": 64,
}
# Parameters of the whole biLM (the released "original" model has 93.6 million): 2^34 is
# 64 GiB of float32 values.
MAX_PARAMETERS = 2**34

_RELEASED_FILTERS = ((1, 32), (2, 32), (3, 64), (4, 128), (5, 256), (6, 512), (7, 1024))
_ACTIVATIONS = ("relu", "tanh")
# Top-level keys of bilm-tf's training options, in the order its trainer writes them.
_TRAINING_KEYS = (
    "n_tokens_vocab",
    "n_negative_samples_batch",
    "n_train_tokens",
    "batch_size",
    "unroll_steps",
    "n_epochs",
    "all_clip_norm_val",
    "dropout",
    "learning_rate",
    "bidirectional",
    "sample_softmax",
    "share_embedding_softmax",
)


@dataclass
class CharCNNConfig:
    """The ``char_cnn`` block: character embedding, convolutions and highway layers."""

    filters: list[tuple[int, int]] = field(default_factory=lambda: list(_RELEASED_FILTERS))
    embedding_dim: int = 16
    n_highway: int = 2
    activation: str = "relu"
    n_characters: int = 262
    max_characters_per_token: int = 50

    @property
    def n_filters(self) -> int:
        """Width of the concatenated convolution output (2048 in the released models)."""
        return sum(num for _, num in self.filters)


@dataclass
class LSTMConfig:
    """The ``lstm`` block. ``None`` clips mean no clipping (key absent from the file)."""

    dim: int = 4096
    projection_dim: int = 512
    n_layers: int = 2
    cell_clip: float | None = 3.0
    proj_clip: float | None = 3.0
    use_skip_connections: bool = True
    # Whether the file named use_skip_connections at all (bilm-tf training files do not).
    _skip_key_present: bool = field(default=True, repr=False, compare=False)


@dataclass
class ElmoConfig:
    """An ELMo biLM's options, readable from and writable to ``options.json``.

    ``training`` holds bilm-tf's top-level training keys (``n_tokens_vocab``,
    ``unroll_steps``, ...) exactly as found; ``extra`` holds any other unknown keys so
    that a file survives a read/write round trip.
    """

    char_cnn: CharCNNConfig = field(default_factory=CharCNNConfig)
    lstm: LSTMConfig = field(default_factory=LSTMConfig)
    training: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ presets
    @classmethod
    def preset(cls, name: str) -> ElmoConfig:
        """The options of a released model size: ``small``, ``medium`` or ``original``."""
        try:
            dim, proj, n_highway = PRESETS[name]
        except KeyError:
            raise ConfigError(f"unknown model size {name!r}: expected one of {', '.join(PRESETS)}") from None
        return cls(
            char_cnn=CharCNNConfig(n_highway=n_highway),
            lstm=LSTMConfig(dim=dim, projection_dim=proj),
        )

    # ------------------------------------------------------------------ reading
    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> ElmoConfig:
        """Read an ``options.json`` file; errors name the file, the key and the value."""
        path = Path(path)
        text = read_text_capped(path, OPTIONS_CAP, "options file", ConfigError)
        data = parse_json(text, str(path), ConfigError)
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: Any, source: str = "options") -> ElmoConfig:
        """Build a config from the parsed JSON object of an options file."""
        reader = _Reader(source)
        if not isinstance(data, dict):
            reader.fail("", "a JSON object with 'lstm' and 'char_cnn'", data)
        if "char_cnn" not in data:
            raise ConfigError(
                f"{source}: no 'char_cnn' block: word-input biLMs are not supported, "
                "only character-input ELMo models"
            )
        cnn_d = reader.section(data, "char_cnn")
        lstm_d = reader.section(data, "lstm")

        filters_raw = reader.get(cnn_d, "char_cnn", "filters", list)
        if not filters_raw:
            reader.fail("char_cnn.filters", "at least one [width, number] pair", filters_raw)
        if len(filters_raw) > OPTION_LIMITS["char_cnn.filters"]:
            reader.fail(
                "char_cnn.filters",
                f"at most {OPTION_LIMITS['char_cnn.filters']} [width, number] pairs",
                f"{len(filters_raw)} pairs",
            )
        most_maps = OPTION_LIMITS["char_cnn.filters number"]
        filters: list[tuple[int, int]] = []
        for i, item in enumerate(filters_raw):
            ok = (
                isinstance(item, (list, tuple))
                and len(item) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= most_maps for v in item)
            )
            if not ok:
                reader.fail(
                    f"char_cnn.filters[{i}]", f"[width, number] of integers from 1 to {most_maps}", item
                )
            filters.append((int(item[0]), int(item[1])))
        if sum(n for _, n in filters) > most_maps:
            reader.fail(
                "char_cnn.filters", f"at most {most_maps} maps together", f"{sum(n for _, n in filters)} maps"
            )

        embedding = reader.section(cnn_d, "embedding", prefix="char_cnn.")
        activation = reader.get(cnn_d, "char_cnn", "activation", str)
        if activation not in _ACTIVATIONS:
            reader.fail("char_cnn.activation", " or ".join(map(repr, _ACTIVATIONS)), activation)
        n_characters = reader.get(cnn_d, "char_cnn", "n_characters", int, default=262)
        if n_characters not in (261, 262):
            reader.fail("char_cnn.n_characters", "261 (training ids) or 262 (inference ids)", n_characters)
        max_chars = reader.get(cnn_d, "char_cnn", "max_characters_per_token", int, minimum=3)
        widest = max(w for w, _ in filters)
        if widest > max_chars:
            reader.fail(
                "char_cnn.filters",
                f"widths at most max_characters_per_token ({max_chars})",
                filters_raw,
            )
        char_cnn = CharCNNConfig(
            filters=filters,
            embedding_dim=reader.positive(embedding, "char_cnn.embedding", "dim"),
            n_highway=reader.get(cnn_d, "char_cnn", "n_highway", int, default=0, minimum=0),
            activation=activation,
            n_characters=n_characters,
            max_characters_per_token=max_chars,
        )

        skip_present = "use_skip_connections" in lstm_d
        lstm = LSTMConfig(
            dim=reader.positive(lstm_d, "lstm", "dim"),
            projection_dim=reader.positive(lstm_d, "lstm", "projection_dim"),
            n_layers=reader.get(lstm_d, "lstm", "n_layers", int, default=1, minimum=1),
            cell_clip=reader.clip(lstm_d, "cell_clip"),
            proj_clip=reader.clip(lstm_d, "proj_clip"),
            use_skip_connections=reader.get(lstm_d, "lstm", "use_skip_connections", bool, default=False),
            _skip_key_present=skip_present,
        )
        if lstm.projection_dim > lstm.dim:
            reader.fail("lstm.projection_dim", f"at most lstm.dim ({lstm.dim})", lstm.projection_dim)
        config = cls(char_cnn=char_cnn, lstm=lstm)
        if config.n_parameters > MAX_PARAMETERS:
            raise ConfigError(
                f"{source}: the options describe a biLM of {config.n_parameters:,} parameters, more than "
                f"the {MAX_PARAMETERS:,} allowed (lstm.dim={lstm.dim}, lstm.projection_dim="
                f"{lstm.projection_dim}, lstm.n_layers={lstm.n_layers}, {char_cnn.n_filters} char_cnn "
                f"filter maps, char_cnn.n_highway={char_cnn.n_highway})"
            )
        training = {k: data[k] for k in _TRAINING_KEYS if k in data}
        extra = {k: v for k, v in data.items() if k not in (*_TRAINING_KEYS, "lstm", "char_cnn")}
        config.training, config.extra = training, extra
        return config

    # ------------------------------------------------------------------ writing
    def to_dict(self) -> dict[str, Any]:
        """The options as the JSON object of an ``options.json`` file."""
        lstm: dict[str, Any] = {
            "dim": self.lstm.dim,
            "projection_dim": self.lstm.projection_dim,
            "n_layers": self.lstm.n_layers,
        }
        for key in ("cell_clip", "proj_clip"):
            value = getattr(self.lstm, key)
            if value is not None:
                lstm[key] = value
        if self.lstm._skip_key_present or self.lstm.use_skip_connections:
            lstm["use_skip_connections"] = self.lstm.use_skip_connections
        cnn = self.char_cnn
        out: dict[str, Any] = dict(self.training)
        out["lstm"] = lstm
        out["char_cnn"] = {
            "embedding": {"dim": cnn.embedding_dim},
            "filters": [list(f) for f in cnn.filters],
            "n_highway": cnn.n_highway,
            "activation": cnn.activation,
            "n_characters": cnn.n_characters,
            "max_characters_per_token": cnn.max_characters_per_token,
        }
        out.update(self.extra)
        return out

    def to_json(self, path: str | os.PathLike[str]) -> None:
        """Write ``options.json`` atomically (see :mod:`elmo.atomic`)."""
        write_json_atomic(path, self.to_dict(), indent=2)

    def inference_options(self) -> ElmoConfig:
        """This config in the released inference form (262 characters, skip key explicit).

        bilm-tf's inference code and AllenNLP need both; its trainer writes neither.
        """
        lstm = LSTMConfig(**{f.name: getattr(self.lstm, f.name) for f in fields(LSTMConfig)})
        lstm._skip_key_present = True
        cnn = CharCNNConfig(**{f.name: getattr(self.char_cnn, f.name) for f in fields(CharCNNConfig)})
        cnn.n_characters = 262
        return ElmoConfig(char_cnn=cnn, lstm=lstm, training=dict(self.training), extra=dict(self.extra))

    @property
    def n_parameters(self) -> int:
        """Number of parameters of the biLM these options describe (without an LM head)."""
        cnn, lstm = self.char_cnn, self.lstm
        width, proj, cells = cnn.n_filters, lstm.projection_dim, lstm.dim
        token = 262 * cnn.embedding_dim + sum(w * cnn.embedding_dim * n + n for w, n in cnn.filters)
        token += cnn.n_highway * 2 * (width * width + width) + width * proj + proj
        layer = (2 * proj) * 4 * cells + 4 * cells + cells * proj
        return token + 2 * lstm.n_layers * layer

    @property
    def output_dim(self) -> int:
        """Width of the contextual outputs: forward and backward concatenated."""
        return 2 * self.lstm.projection_dim


# name -> (lstm.dim, lstm.projection_dim, char_cnn.n_highway) of the released models
PRESETS: dict[str, tuple[int, int, int]] = {
    "small": (1024, 128, 1),
    "medium": (2048, 256, 1),
    "original": (4096, 512, 2),
}


class _Reader:
    """Typed access to the parsed JSON with errors that name the file and the key."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, expected: str, found: Any) -> None:
        where = f"{self.source}: {key}" if key else self.source
        shown = json.dumps(found)
        if len(shown) > 80:  # one readable line, whatever the file holds
            shown = f"{shown[:60]}... ({type(found).__name__} of {len(shown):,} characters as JSON)"
        raise ConfigError(f"{where}: expected {expected}, found {shown}")

    def section(self, data: dict, name: str, prefix: str = "") -> dict:
        if name not in data:
            raise ConfigError(f"{self.source}: missing key '{prefix}{name}'")
        value = data[name]
        if not isinstance(value, dict):
            self.fail(prefix + name, "a JSON object", value)
        return value

    def get(
        self,
        data: dict,
        section: str,
        key: str,
        kind: type,
        default: Any = ...,
        minimum: int | None = None,
    ) -> Any:
        if key not in data:
            if default is ...:
                raise ConfigError(f"{self.source}: missing key '{section}.{key}'")
            return default
        value = data[key]
        is_bool = isinstance(value, bool)
        if kind is int:
            # JSON writers sometimes emit 3.0 for 3; accept integral floats.
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            ok = isinstance(value, int) and not is_bool
        elif kind is bool:
            ok = is_bool
        else:
            ok = isinstance(value, kind)
        if not ok:
            self.fail(
                f"{section}.{key}",
                {int: "an integer", bool: "true or false", str: "a string", list: "a list"}[kind],
                value,
            )
        most = OPTION_LIMITS.get(f"{section}.{key}") if kind is int else None
        if minimum is not None and value < minimum:
            self.fail(f"{section}.{key}", f"an integer >= {minimum}", value)
        if most is not None and value > most:
            self.fail(f"{section}.{key}", f"an integer <= {most} (elmo.config.OPTION_LIMITS)", value)
        return value

    def positive(self, data: dict, section: str, key: str) -> int:
        return self.get(data, section, key, int, minimum=1)

    def clip(self, data: dict, key: str) -> float | None:
        if key not in data or data[key] is None:
            return None
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            self.fail(f"lstm.{key}", "a positive number", value)
        if not value < math.inf:  # NaN or infinity: clipping to it yields NaN or nothing
            self.fail(f"lstm.{key}", "a finite positive number (null for no clipping)", value)
        return value
