"""One resolver: from what a user names as a model to where its files are.

Every entry point (:func:`elmo.load`, the AllenNLP drop-in, the command line, training
and perplexity) calls :func:`resolve`, so each kind of model source is understood the same
way everywhere:

=============================================  ==========================================
source                                         resolved to
=============================================  ==========================================
nothing, or ``"default"``                      the model bundled with the package
a registered name (``"small"``, ``"original"``) its files in the download cache
``options`` and ``weights`` (paths or URLs)    those files (URLs: through the cache)
a model directory                              its ``options.json`` + ``weights.hdf5``
                                               (+ ``lm_head.hdf5``, ``vocab.txt``)
a training run directory or its checkpoint     ``checkpoint.pt`` + the run's options
a bilm-tf checkpoint directory                 its TF checkpoint + ``options.json``
a TF Hub ``elmo`` module directory             its variables (options are inferred)
=============================================  ==========================================

A name that is also an existing path is the path. What a model that is not in the
released layout holds is read by :func:`elmo.loading.load_bilm_files`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from elmo.default_model import DEFAULT_MODEL_NAME, default_model_dir
from elmo.download import download_model, download_urls, is_model_name, is_url, not_found_message

__all__ = ["LM_HEAD", "ModelFiles", "ModelFormat", "find_model_files", "resolve"]

PathLike = str | os.PathLike[str]
# How the weights are stored: the released HDF5 layout, a training checkpoint of
# ``elmo train``, a bilm-tf TensorFlow checkpoint, or a TF Hub module's variables.
ModelFormat = Literal["hdf5", "run", "bilm-tf", "hub"]

OPTIONS, WEIGHTS, LM_HEAD, VOCAB = "options.json", "weights.hdf5", "lm_head.hdf5", "vocab.txt"
MIX_FILE = "hub_mix.json"  # a converted TF Hub module's layer mix (written by elmo.convert)
RUN_CHECKPOINT, TF_STATE = "checkpoint.pt", "checkpoint"
HUB_MARKERS = ("tfhub_module.pb", "saved_model.pb")


@dataclass(frozen=True)
class ModelFiles:
    """Where a model's files are.

    ``options``: the options file (None for a TF Hub module: inferred from its variables).
    ``weights``: the HDF5 weight file, the training checkpoint, or the directory of a TF
    checkpoint (bilm-tf) or TF Hub module.
    ``lm_head``: the softmax of an exported language model, if any (a run's checkpoint and
    a bilm-tf checkpoint hold theirs inside ``weights``). ``vocab``: its vocabulary, if any.
    """

    options: Path | None
    weights: Path
    lm_head: Path | None = None
    vocab: Path | None = None
    format: ModelFormat = "hdf5"
    source: str = ""
    mix: Path | None = None  # a converted TF Hub module's layer mix (hub_mix.json)


def find_model_files(directory: PathLike) -> tuple[Path, Path]:
    """The options and weight files of a model directory in the released layout.

    ``options.json`` and ``weights.hdf5`` are preferred; otherwise the directory must
    hold exactly one ``*.json`` and one ``*.hdf5`` (the released files are named like
    ``elmo_2x4096_512_2048cnn_2xhighway_options.json``).
    """
    directory = Path(directory)
    found = []
    for preferred, pattern in ((OPTIONS, "*.json"), (WEIGHTS, "*.hdf5")):
        named = directory / preferred
        # Any non-directory under the name (a device, a FIFO, a broken link) is its reader's to
        # refuse with a message naming it.
        if os.path.lexists(named) and not named.is_dir():
            found.append(named)
            continue
        candidates = sorted(p for p in directory.glob(pattern) if p.is_file() and p.name != LM_HEAD)
        if len(candidates) != 1:
            what = "none" if not candidates else ", ".join(p.name for p in candidates)
            raise FileNotFoundError(
                f"{directory}: expected {preferred} (or exactly one {pattern} file), found {what}"
            )
        found.append(candidates[0])
    return found[0], found[1]


def _beside(directory: Path, name: str) -> Path | None:
    # Whatever has the name (a directory, a device, a broken link) is its reader's to refuse,
    # with a message, rather than silently ignored.
    path = directory / name
    return path if os.path.lexists(path) else None


def _directory(path: Path, source: str) -> ModelFiles:
    if (path / RUN_CHECKPOINT).is_file():
        return _run(path / RUN_CHECKPOINT, source)
    if any((path / marker).is_file() for marker in HUB_MARKERS):
        return ModelFiles(None, path, format="hub", source=source)
    if (path / TF_STATE).is_file() and not (path / WEIGHTS).is_file():
        return ModelFiles(
            _beside(path, OPTIONS), path, vocab=_beside(path, VOCAB), format="bilm-tf", source=source
        )
    try:
        options, weights = find_model_files(path)
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"{e}; not a model: nor {RUN_CHECKPOINT} (a training run), a bilm-tf '{TF_STATE}' state file "
            "or a TF Hub module"
        ) from None
    mix = _beside(path, MIX_FILE)
    return ModelFiles(options, weights, _beside(path, LM_HEAD), _beside(path, VOCAB), "hdf5", source, mix)


def _run(checkpoint: Path, source: str) -> ModelFiles:
    run = checkpoint.parent
    return ModelFiles(
        _beside(run, OPTIONS), checkpoint, vocab=_beside(run, VOCAB), format="run", source=source
    )


def _file(path: Path, source: str) -> ModelFiles:
    if path.name == TF_STATE:
        return _directory(path.parent, source)
    if path.suffix == ".pt":
        return _run(path, source)
    if path.suffix in (".hdf5", ".h5"):
        raise TypeError(f"{path}: this is a weight file; pass the options too: load(options, '{path}')")
    raise TypeError(f"{path}: pass the weights too (load(options, weights)) or a model directory")


def _pair(options: PathLike, weights: PathLike, progress: bool | None) -> ModelFiles:
    source = f"{os.fspath(options)} + {os.fspath(weights)}"
    if is_url(options) or is_url(weights):
        if not (is_url(options) and is_url(weights)):
            raise ValueError(f"{source}: give both files as URLs, or both as paths")
        directory = download_urls(str(options), str(weights), progress=progress)
        return ModelFiles(directory / OPTIONS, directory / WEIGHTS, format="hdf5", source=source)
    for kind, path in (("options", options), ("weight", weights)):
        # Only what is not there at all; a directory, device or link loop is its reader's
        # to name.
        if not os.path.lexists(path):
            raise FileNotFoundError(f"{os.fspath(path)}: {kind} file not found")
    return ModelFiles(Path(options), Path(weights), format="hdf5", source=source)


def resolve(
    source: PathLike | None = None, weights: PathLike | None = None, *, progress: bool | None = None
) -> ModelFiles:
    """Where the files of the model ``source`` names are (see the module docstring).

    ``weights`` makes ``source`` the options file of a pair. ``progress``: how downloads
    report (``None``: a bar on a terminal; ``False``: silent). Raises
    :class:`FileNotFoundError` for a source that names nothing, listing the known names.
    """
    if source is not None and not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"model: expected a name, path or URL, found {type(source).__name__}")
    if weights is not None:
        if source is None:
            raise TypeError("load(weights=...) needs the options too: load('options.json', 'weights.hdf5')")
        return _pair(source, weights, progress)
    text = "" if source is None else os.fspath(source)
    if source is None or (text == DEFAULT_MODEL_NAME and not Path(text).exists()):
        return _directory(default_model_dir(), DEFAULT_MODEL_NAME)
    if is_url(text):
        raise ValueError(f"{text}: a URL names one file; give the options URL and the weights URL together")
    path = Path(text)
    if not path.exists() and is_model_name(text):
        return _directory(download_model(text, progress=progress), text)
    if path.is_dir():
        return _directory(path, text)
    if path.is_file():
        return _file(path, text)
    raise FileNotFoundError(not_found_message(source))
