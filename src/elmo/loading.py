"""``elmo.load``: from a model source (see :mod:`elmo.resolve`) to a model."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import torch

from elmo.config import ElmoConfig
from elmo.engine import DEFAULT_CACHE_SIZE
from elmo.errors import ConfigError
from elmo.files import OPTIONS_CAP, read_json_capped
from elmo.model import ElmoBiLM
from elmo.module import ElmoModule
from elmo.resolve import MIX_FILE, ModelFiles, find_model_files, resolve
from elmo.runner import EngineOptions
from elmo.weights import check_weights, load_weights

__all__ = ["find_model_files", "load", "load_bilm", "load_bilm_files"]

PathLike = str | os.PathLike[str]


def load_bilm(
    options: PathLike | ElmoConfig | dict, weights: PathLike, device: str | torch.device | None = None
) -> ElmoBiLM:
    """The plain biLM from an options file (or config) and an HDF5 weight file, in eval mode."""
    if isinstance(options, ElmoConfig):
        config = options
    elif isinstance(options, dict):
        config = ElmoConfig.from_dict(options)
    else:
        if not os.path.lexists(options):
            raise FileNotFoundError(f"{os.fspath(options)}: options file not found")
        config = ElmoConfig.from_json(options)
    # The weight file's names, shapes and types against the options before the model takes
    # any memory: options that do not belong to the weights are refused at no cost.
    check_weights(config, weights)
    bilm = ElmoBiLM(config)
    load_weights(bilm, weights)
    if device is not None:
        bilm.to(device)
    return bilm.eval()


def load_bilm_files(files: ModelFiles, device: str | torch.device | None = None) -> ElmoBiLM:
    """The plain biLM of resolved model files, whatever their format."""
    return _read_model(files, device)[0]


def _read_model(files: ModelFiles, device: str | torch.device | None) -> tuple[ElmoBiLM, dict | None]:
    """The plain biLM and the layer mix stored with it (a converted TF Hub module's), if any."""
    if files.format == "hdf5":
        assert files.options is not None
        return load_bilm(files.options, files.weights, device), _read_mix(files.mix)
    if files.format == "hub":
        from elmo.convert import convert_hub_module

        # The module's variables, in the released layout, through a temporary directory.
        with tempfile.TemporaryDirectory(prefix="elmo-hub-") as tmp:
            out = Path(tmp) / "model"
            convert_hub_module(files.weights, out)
            bilm = load_bilm(out / "options.json", out / "weights.hdf5", device)
            mix = out / MIX_FILE
            return bilm, _read_mix(mix if mix.is_file() else None)
    from elmo.train.models import load_language_model

    bilm = load_language_model(files).model.encoder
    if device is not None:
        bilm.to(device)
    return bilm.eval(), None


def _read_mix(path: Path | None) -> dict | None:
    """A layer mix written by :mod:`elmo.convert` (None: none, or several to choose from)."""
    if path is None:
        return None
    mix = read_json_capped(path, OPTIONS_CAP, "layer mix file", ConfigError)
    try:
        weights = [float(w) for w in mix["weights"]] if "weights" in mix else None
        gamma = float(mix.get("gamma", 1.0))
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise ConfigError(f"{path}: not a layer mix written by elmo convert ({e})") from None
    if not all(math.isfinite(w) for w in [*(weights or []), gamma]):
        raise ConfigError(f"{path}: layer mix weights and gamma must be finite numbers")
    return None if weights is None else {"weights": weights, "gamma": gamma, "path": path}


def _apply_mix(module: ElmoModule, mix: dict) -> None:
    """Start the module's mix at the converted module's learned one (weights before the
    softmax, and the scale)."""
    if len(mix["weights"]) != module.mix.weights.numel():
        raise ConfigError(
            f"{mix['path']}: {len(mix['weights'])} layer weights, expected {module.mix.weights.numel()}"
        )
    with torch.no_grad():
        module.mix.weights.copy_(torch.tensor(mix["weights"]))
        module.mix.gamma.fill_(mix["gamma"])


def load(
    options: PathLike | None = None,
    weights: PathLike | None = None,
    *,
    stateful: bool = False,
    finetune: bool = False,
    device: str | torch.device | None = None,
    engine: str = "auto",
    precision: str | None = None,
    cache_size: int = DEFAULT_CACHE_SIZE,
    dtype: str | None = None,
    progress: bool | None = None,
) -> ElmoModule:
    """Load an ELMo model with the TF Hub module's interface.

    ``load()`` (or ``load("default")``) for the small model bundled with the package;
    ``load("small")`` for a released model by name (downloaded once into a cache: see
    :mod:`elmo.download`); ``load("options.json", "weights.hdf5")`` (paths or URLs);
    ``load("model_dir")`` for a directory holding both; also a training run directory,
    a bilm-tf checkpoint directory or a TF Hub module directory (see :mod:`elmo.resolve`).
    A TF Hub module's learned layer mix (kept as ``hub_mix.json`` by ``elmo convert``)
    is the module's mix, so its ``elmo`` output is the hub module's.
    ``stateful=True`` carries LSTM state between calls (reproducing AllenNLP and
    bilm-tf); ``finetune=True`` makes the whole biLM trainable.

    ``engine``: ``"auto"`` (default; the fast engine for inference, the plain model while
    fine-tuning), ``"fast"`` or ``"plain"`` (the readable reference model).
    ``precision``: the fast engine's arithmetic, ``"float32"`` (default), ``"bfloat16"``
    or ``"int8"`` (CPU only); outputs are float32 whatever it is (``dtype`` is its
    deprecated old name). ``cache_size``: distinct tokens whose representations the fast
    engine keeps (0: no cache). ``progress``: how a download reports (``None``: a bar on
    a terminal, ``False``: silent).
    """
    options_of_engine = EngineOptions.from_keywords(engine, precision, cache_size, dtype=dtype)
    bilm, mix = _read_model(resolve(options, weights, progress=progress), device)
    module = ElmoModule(bilm, stateful=stateful, finetune=finetune, engine_options=options_of_engine)
    if mix is not None:
        _apply_mix(module, mix)
    if device is not None:
        module.to(device)
    return module.eval()
