"""Converting TensorFlow ELMo checkpoints to the released layout (options.json + weights.hdf5).

Two sources:

* a **bilm-tf training checkpoint** (a directory with the ``checkpoint`` state file and
  the training ``options.json``, or a checkpoint prefix): the variables are renamed as
  bilm-tf's ``dump_weights`` does (``lm/RNN_0/rnn/multi_rnn_cell/cell_0/lstm_cell/kernel``
  -> ``RNN_0/RNN/MultiRNNCell/Cell0/LSTMCell/W_0``), with the scope removed as a prefix
  (``dump_weights`` uses ``lstrip('lm/')``, which strips characters). The softmax, the
  Adagrad slots, ``global_step`` and ``train_perplexity`` are dropped.
* a **TF Hub ``elmo`` module** (``tfhub_module.pb`` and ``variables/variables.*``). It
  holds bilm-tf's inference graph under the ``bilm/`` scope, e.g. ``bilm/CNN/W_cnn_0``,
  ``bilm/char_embed`` (262 rows, row 0 the padding zero row),
  ``bilm/RNN_0/RNN/MultiRNNCell/Cell0/rnn/lstm_cell/{kernel,bias,projection/kernel}``,
  plus the scalar mix ``aggregation/weights`` and ``aggregation/scaling``. The hub
  module has no options file, so the options are inferred from the variable shapes; what
  shapes cannot tell takes the released models' values (relu, 50 characters, clips 3,
  skip connections), which the ``options`` argument can override.

Names are recognised in any of the spellings (training graph, inference/hub graph,
dump), under any scope (:func:`elmo.names.dump_name`), so both converters accept either
kind of checkpoint. One-layer
LSTMs are written with the ``MultiRNNCell/Cell0`` names, which every loader reads
(``dump_weights`` writes ``RNN_0/RNN/LSTMCell/W_0``, which bilm-tf's own inference code
cannot load).

The output directory is written into a temporary directory beside it and renamed into
place, so it is either complete or absent.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from elmo.atomic import atomic_dir
from elmo.config import ElmoConfig
from elmo.errors import ConvertError
from elmo.files import OPTIONS_CAP, read_json_capped
from elmo.model import ElmoBiLM
from elmo.names import (
    CHAR_EMBED,
    CHAR_PROJ_B,
    CHAR_PROJ_W,
    conv_dataset,
    dump_name,
    highway_dataset,
    lstm_dataset,
)
from elmo.resolve import MIX_FILE
from elmo.tfcheckpoint import CheckpointReader, latest_checkpoint
from elmo.weights import dataset_layout

__all__ = [
    "FORMATS",
    "HUB_DEFAULTS",
    "ConversionResult",
    "convert",
    "convert_bilm_tf_checkpoint",
    "convert_hub_module",
    "detect_format",
    "infer_options",
]

PathLike = str | os.PathLike[str]
FORMATS = ("auto", "bilm-tf", "hub")
HUB_MARKERS = ("tfhub_module.pb", "saved_model.pb")

# What the variable shapes cannot tell: the values of every released ELMo model.
HUB_DEFAULTS: dict[str, Any] = {
    "lstm": {"cell_clip": 3, "proj_clip": 3, "use_skip_connections": True},
    "char_cnn": {"activation": "relu", "max_characters_per_token": 50, "n_characters": 262},
}


@dataclass
class ConversionResult:
    """What a conversion wrote and what it left out."""

    out_dir: Path
    checkpoint: Path
    format: str
    config: ElmoConfig
    ignored: list[str] = field(default_factory=list)  # checkpoint variables not converted
    filled: list[str] = field(default_factory=list)  # datasets absent from the checkpoint (identity)
    mix: dict[str, Any] | None = None
    # options the checkpoint cannot show, taken from the released models ("key=value")
    assumed: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- names


@dataclass
class _Variables:
    """The checkpoint's biLM variables under their weights.hdf5 names."""

    reader: CheckpointReader
    source: dict[str, str]  # weights.hdf5 name -> checkpoint name
    shapes: dict[str, tuple[int, ...]]
    ignored: list[str]

    def where(self, name: str) -> str:
        return f"{self.reader.prefix}: variable '{self.source.get(name, name)}'"


def _collect(reader: CheckpointReader) -> _Variables:
    found = {tf_name: dump_name(tf_name) for tf_name in reader.entries}
    ignored = sorted(n for n, f in found.items() if f is None)
    mapped = {n: f for n, f in found.items() if f is not None}
    if not mapped:
        raise ConvertError(
            f"{reader.prefix}: no ELMo biLM variables (char_embed, CNN/..., RNN_0/...) in this checkpoint"
        )
    scopes: dict[str, str] = {}
    for tf_name, (scope, _) in mapped.items():
        scopes.setdefault(scope, tf_name)
    if len(scopes) > 1:
        listed = ", ".join(f"'{s or '(none)'}' (e.g. {n})" for s, n in scopes.items())
        raise ConvertError(f"{reader.prefix}: biLM variables under several scopes: {listed}")
    source: dict[str, str] = {}
    for tf_name, (_, name) in mapped.items():
        if name in source:  # e.g. a one-layer name beside the Cell0 name of the same weight
            raise ConvertError(
                f"{reader.prefix}: variables '{source[name]}' and '{tf_name}' both map to '{name}'"
            )
        source[name] = tf_name
    shapes = {name: reader.entries[tf].shape for name, tf in source.items()}
    return _Variables(reader, source, shapes, ignored)


# --------------------------------------------------------------------------- options


def _merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` applied, merging nested objects key by key."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_json(path: Path) -> dict[str, Any]:
    data = read_json_capped(path, OPTIONS_CAP, "options file", ConvertError)
    if not isinstance(data, dict):
        raise ConvertError(f"{path}: expected a JSON object of options")
    return data


def _overrides(options: Mapping[str, Any] | PathLike | None) -> dict[str, Any]:
    if options is None:
        return {}
    if isinstance(options, Mapping):
        return dict(options)
    return _read_json(Path(options))


def _shape(shapes: Mapping[str, tuple[int, ...]], where: Any, name: str, rank: int) -> tuple[int, ...]:
    if name not in shapes:
        raise ConvertError(f"{where('')}cannot infer the options: no variable for '{name}'")
    shape = tuple(shapes[name])
    if len(shape) != rank:
        raise ConvertError(f"{where(name)}expected {rank} dimensions, found shape {shape}")
    return shape


def infer_options(
    shapes: Mapping[str, tuple[int, ...]], overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Inference-form options of a biLM from its weights' shapes (weights.hdf5 names).

    Shapes give the char embedding size, the filters, the highway count, the LSTM size,
    projection and depth. The rest comes from :data:`HUB_DEFAULTS`, then ``overrides``.
    """
    return _infer(shapes, lambda name: f"variable '{name}': " if name else "", overrides or {})


def _infer(shapes: Mapping[str, tuple[int, ...]], where: Any, overrides: Mapping[str, Any]) -> dict[str, Any]:
    rows, dim = _shape(shapes, where, CHAR_EMBED, 2)
    if rows not in (261, 262):
        raise ConvertError(f"{where(CHAR_EMBED)}expected 261 or 262 rows, found shape {(rows, dim)}")
    filters: list[list[int]] = []
    while conv_dataset(len(filters)) in shapes:
        name = conv_dataset(len(filters))
        one, width, emb, num = _shape(shapes, where, name, 4)
        if one != 1 or emb != dim:
            raise ConvertError(
                f"{where(name)}expected shape (1, width, {dim}, n), found {(one, width, emb, num)}"
            )
        filters.append([width, num])
    if not filters:
        raise ConvertError(f"{where('')}cannot infer the options: no variable for '{conv_dataset(0)}'")
    n_highway = 0
    while highway_dataset(n_highway) in shapes:
        n_highway += 1
    n_layers = 0
    while lstm_dataset(0, n_layers, "W_0") in shapes:
        n_layers += 1
    kernel = lstm_dataset(0, 0, "W_0")
    _, gates = _shape(shapes, where, kernel, 2)
    if gates % 4:
        raise ConvertError(f"{where(kernel)}{gates} columns is not 4 gates of equal size")
    cells = gates // 4
    proj = lstm_dataset(0, 0, "W_P_0")
    projection = _shape(shapes, where, proj, 2)[1] if proj in shapes else cells
    base = {
        "lstm": {"dim": cells, "projection_dim": projection, "n_layers": n_layers},
        "char_cnn": {"embedding": {"dim": dim}, "filters": filters, "n_highway": n_highway},
    }
    return _merge(_merge(base, HUB_DEFAULTS), overrides)


def _assumed(overrides: Mapping[str, Any]) -> list[str]:
    """The ``HUB_DEFAULTS`` that ``overrides`` leave in place, as ``section.key=value``."""
    out = []
    for section, values in HUB_DEFAULTS.items():
        given = overrides.get(section, {})
        for key, value in values.items():
            if not (isinstance(given, Mapping) and key in given):
                out.append(f"{section}.{key}={json.dumps(value)}")
    return out


def _infer_from(v: _Variables, overrides: Mapping[str, Any]) -> dict[str, Any]:
    return _infer(v.shapes, lambda name: f"{v.where(name)}: " if name else f"{v.reader.prefix}: ", overrides)


def _config(data: dict[str, Any], source: str) -> ElmoConfig:
    # ElmoConfig raises ConfigError (an ElmoError) naming the key.
    return ElmoConfig.from_dict(data, source=source).inference_options()


# --------------------------------------------------------------------------- weights


def _layout(config: ElmoConfig) -> list[tuple[str, tuple[int, ...], str]]:
    """(dataset, shape, options that fix it) of a model, without allocating its weights."""
    with torch.device("meta"):
        bilm = ElmoBiLM(config)
    return [(name, tuple(t.shape), why) for name, t, why in dataset_layout(bilm)]


def _identity_fill(name: str, shape: tuple[int, ...], config: ElmoConfig) -> np.ndarray | None:
    """An exact stand-in for a weight bilm-tf leaves out, or None.

    bilm-tf has no ``CNN_proj`` when the filters already have the projection width, and no
    LSTM projection when ``projection_dim == dim``; an identity matrix (zero bias) then
    computes the same thing. For the LSTM this holds while |h| <= 1 is never clipped.
    """
    square = len(shape) == 2 and shape[0] == shape[1]
    if name == CHAR_PROJ_W and square:
        return np.eye(shape[0], dtype=np.float32)
    if name == CHAR_PROJ_B:
        return np.zeros(shape, np.float32)
    clip = config.lstm.proj_clip
    if name.endswith("/W_P_0") and square and (clip is None or clip >= 1):
        return np.eye(shape[0], dtype=np.float32)
    return None


def _plan(v: _Variables, config: ElmoConfig) -> tuple[list[tuple[str, tuple[int, ...]]], list[str]]:
    """Check every dataset the options call for against the checkpoint; returns the plan."""
    layout = _layout(config)
    expected = {name for name, _, _ in layout}
    extra = sorted(n for n in v.source if n not in expected)
    if extra:
        listed = ", ".join(f"'{v.source[n]}' {v.shapes[n]}" for n in extra[:5])
        raise ConvertError(
            f"{v.reader.prefix}: variable(s) {listed} not described by the options (lstm.n_layers="
            f"{config.lstm.n_layers}, char_cnn.n_highway={config.char_cnn.n_highway}, "
            f"{len(config.char_cnn.filters)} char_cnn.filters); do the options belong to this checkpoint?"
        )
    plan, filled = [], []
    for name, shape, why in layout:
        if name not in v.shapes:
            if _identity_fill(name, shape, config) is None:
                raise ConvertError(
                    f"{v.reader.prefix}: no variable for '{name}' (expected shape {shape} from the "
                    f"options: {why})"
                )
            filled.append(name)
        else:
            found = v.shapes[name]
            ok = found == shape or (name == CHAR_EMBED and found == (shape[0] + 1, *shape[1:]))
            if not ok:
                raise ConvertError(
                    f"{v.where(name)}: expected shape {shape} for '{name}' (from the options: {why}), "
                    f"found {found}; do the options belong to this checkpoint?"
                )
        plan.append((name, shape))
    return plan, filled


def _write_weights(path: Path, v: _Variables, plan: list, config: ElmoConfig) -> None:
    values = v.reader.read_many(v.source[name] for name, _ in plan if name in v.source)
    with h5py.File(path, "w") as h5:
        for name, shape in plan:
            if name in v.source:
                value = values.pop(v.source[name])
                if name == CHAR_EMBED and value.shape[0] == shape[0] + 1:
                    value = value[1:]  # the graph's padding row 0; the file starts at id 1
            else:
                filled = _identity_fill(name, shape, config)
                assert filled is not None  # the plan only leaves out what can be filled
                value = filled
            value = np.asarray(value, dtype=np.float32)
            if not np.isfinite(value).all():
                raise ConvertError(f"{v.where(name)}: contains NaN or infinite values")
            h5.create_dataset(name, data=value)


# A layer mix's two variables under the names exporters give them: the TF Hub module's
# (``aggregation/weights`` and ``aggregation/scaling``) and bilm-tf's ``weight_layers``
# (``NAME_ELMo_W`` and ``NAME_ELMo_gamma``, e.g. ``elmo_output_ELMo_W``).
_MIX_NAMES = (
    re.compile(r"^(?P<scope>(?:.*/)?aggregation/)(?P<part>weights|scaling)(?::0)?$"),
    re.compile(r"^(?P<scope>(?:.*/)?[^/]*_ELMo_)(?P<part>W|gamma)(?::0)?$"),
)


def _mix(reader: CheckpointReader) -> dict[str, Any] | None:
    """The learned layer mix of the checkpoint, if it has exactly one.

    How the module uses it: bilm-tf's ``weight_layers`` (``bilm/elmo.py``), which the TF Hub
    ``elmo`` module's graph was exported from, computes ``gamma * sum_k s_k * layer_k`` with
    ``s = softmax(W + 1 / L)`` over the L layers (layer 0 the token representation, doubled);
    adding a constant to every ``W`` does not change a softmax, so ``s = softmax(W)``, which
    is what :class:`elmo.mix.ScalarMix` computes from the raw ``weights`` kept here. Several
    mixes (a task model's input and output mixes) are listed under ``"candidates"`` and
    none is applied.
    """
    found: dict[str, dict[str, str]] = {}
    for tf_name in reader.entries:
        for pattern in _MIX_NAMES:
            m = pattern.match(tf_name)
            if m:
                part = "weights" if m["part"] in ("weights", "W") else "scaling"
                found.setdefault(m["scope"], {})[part] = tf_name
    mixes = {scope: names for scope, names in found.items() if "weights" in names}
    if not mixes:
        return None
    if len(mixes) > 1:
        return {"candidates": [names for _, names in sorted(mixes.items())]}
    names = next(iter(mixes.values()))
    raw = reader.read(names["weights"]).astype(np.float64).reshape(-1)
    soft = np.exp(raw - raw.max())
    mix: dict[str, Any] = {
        "weights": raw.tolist(),
        "normalized_weights": (soft / soft.sum()).tolist(),
        "variables": names,
    }
    if "scaling" in names:
        mix["gamma"] = float(reader.read(names["scaling"]).reshape(-1)[0])
    return mix


# --------------------------------------------------------------------------- output


def _check_output(out_dir: Path, overwrite: bool, source_dir: Path) -> None:
    resolved, source = out_dir.resolve(), source_dir.resolve()
    # Replacing the output must never delete the checkpoint it was made from.
    if resolved == source or resolved in source.parents:
        raise ConvertError(f"{out_dir}: is (or contains) the checkpoint being converted; choose another")
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ConvertError(f"{out_dir}: exists and is not a directory")
    if any(out_dir.iterdir()) and not overwrite:
        raise ConvertError(
            f"{out_dir}: exists and is not empty; pass overwrite=True (--overwrite) to replace it"
        )


def _write(
    out_dir: Path, v: _Variables, config: ElmoConfig, fmt: str, overwrite: bool, mix: dict | None
) -> ConversionResult:
    prefix = v.reader.prefix
    if mix is not None and len(mix.get("weights", ())) not in (0, config.lstm.n_layers + 1):
        raise ConvertError(
            f"{prefix}: the layer mix {mix['variables']['weights']} has {len(mix['weights'])} weights, "
            f"expected {config.lstm.n_layers + 1} (one per layer)"
        )
    _check_output(out_dir, overwrite, prefix.parent)
    plan, filled = _plan(v, config)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out_dir) as tmp:
        _write_weights(tmp / "weights.hdf5", v, plan, config)
        config.to_json(tmp / "options.json")
        if mix is not None:
            (tmp / MIX_FILE).write_text(json.dumps(mix, indent=2) + "\n", encoding="utf-8")
    return ConversionResult(out_dir, prefix, fmt, config, v.ignored, filled, mix)


# --------------------------------------------------------------------------- public API


def _find_options(src: Path, prefix: Path) -> Path | None:
    for folder in (src if src.is_dir() else None, prefix.parent):
        if folder is not None and (folder / "options.json").is_file():
            return folder / "options.json"
    return None


def convert_bilm_tf_checkpoint(
    src: PathLike,
    out_dir: PathLike,
    options: Mapping[str, Any] | PathLike | None = None,
    overwrite: bool = False,
) -> ConversionResult:
    """Write a bilm-tf training checkpoint as ``out_dir/options.json`` + ``weights.hdf5``.

    ``src`` is a checkpoint directory (its ``checkpoint`` state file names the latest) or a
    prefix. The options are the training ``options.json`` beside the checkpoint, turned
    into the inference form (262 characters, ``use_skip_connections`` explicit; the
    training keys are kept). ``options`` (a dict or a JSON file) is merged over them; with
    no options.json, it is merged over the options inferred from the shapes instead.
    """
    src = Path(src)
    reader = CheckpointReader(src)
    v = _collect(reader)
    found = _find_options(src, reader.prefix)
    overrides = _overrides(options)
    if found is not None:
        data = _merge(_read_json(found), overrides)
        where = str(found)
    elif overrides:
        data, where = _infer_from(v, overrides), f"{reader.prefix} (inferred) + options"
    else:
        raise ConvertError(
            f"{src}: no options.json beside the checkpoint; pass the options (options=, --options) "
            "or convert it as a hub module (--format hub) to infer them from the shapes"
        )
    return _write(Path(out_dir), v, _config(data, where), "bilm-tf", overwrite, None)


def convert_hub_module(
    src: PathLike,
    out_dir: PathLike,
    options: Mapping[str, Any] | PathLike | None = None,
    overwrite: bool = False,
) -> ConversionResult:
    """Write a TF Hub ``elmo`` module as ``out_dir/options.json`` + ``weights.hdf5``.

    ``src`` is the module directory (``variables/variables.index``) or a checkpoint
    prefix. Options are inferred from the shapes (see :func:`infer_options`), with
    ``options`` (a dict or a JSON file) merged over them; ``result.assumed`` lists the
    released models' values taken for what the shapes cannot show. The module's layer mix,
    if present (see :func:`_mix`), is written to ``hub_mix.json`` (raw and
    softmax-normalized weights, gamma), which :func:`elmo.load` applies.
    """
    src = Path(src)
    reader = CheckpointReader(src)
    v = _collect(reader)
    overrides = _overrides(options)
    data = _infer_from(v, overrides)
    config = _config(data, f"{reader.prefix} (options inferred from the shapes)")
    result = _write(Path(out_dir), v, config, "hub", overwrite, _mix(reader))
    result.assumed = _assumed(overrides)
    return result


def detect_format(src: PathLike) -> str:
    """``"hub"`` for a hub module / SavedModel directory or a checkpoint without an
    options.json beside it, else ``"bilm-tf"``."""
    src = Path(src)
    if src.is_dir() and (
        any((src / m).is_file() for m in HUB_MARKERS) or (src / "variables" / "variables.index").is_file()
    ):
        return "hub"
    prefix = latest_checkpoint(src)
    return "bilm-tf" if _find_options(src, prefix) is not None else "hub"


def convert(
    src: PathLike,
    out_dir: PathLike,
    format: str = "auto",
    options: Mapping[str, Any] | PathLike | None = None,
    overwrite: bool = False,
) -> ConversionResult:
    """Convert ``src`` (format ``auto``, ``bilm-tf`` or ``hub``) into ``out_dir``."""
    if format not in FORMATS:
        raise ConvertError(f"unknown format {format!r}: expected one of {', '.join(FORMATS)}")
    fmt = detect_format(src) if format == "auto" else format
    fn = convert_hub_module if fmt == "hub" else convert_bilm_tf_checkpoint
    return fn(src, out_dir, options=options, overwrite=overwrite)
