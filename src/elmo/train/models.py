"""Language models on disk: finding, loading and exporting them.

A language model (the biLM plus its softmax) can be given as:

* a run directory of ``elmo train`` (``checkpoint.pt``, ``options.json``, ``vocab.txt``)
  or its ``checkpoint.pt``;
* an exported model directory: ``options.json`` + ``weights.hdf5`` (the released
  layout) + ``lm_head.hdf5`` (``softmax/W`` [V, P], ``softmax/b`` [V]) + ``vocab.txt``;
* a bilm-tf checkpoint directory: its ``checkpoint`` state file, the checkpoint files
  and the ``options.json`` that bilm-tf's trainer wrote there.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from elmo.atomic import atomic_dir
from elmo.config import ElmoConfig
from elmo.errors import ModelError
from elmo.files import OPTIONS_CAP, read_json_capped
from elmo.resolve import LM_HEAD, ModelFiles, resolve
from elmo.train.checkpoint import load_checkpoint
from elmo.train.lm import TrainingBiLM
from elmo.train.optim import Adagrad
from elmo.train.vocab import Vocabulary
from elmo.weights import check_weights, load_weights, save_weights

__all__ = [
    "EXPORT_MARKER",
    "LM_HEAD",
    "LoadedLM",
    "export_model",
    "load_initial_weights",
    "load_language_model",
]

log = logging.getLogger("elmo.train")


@dataclass
class LoadedLM:
    """A language model with where it came from.

    ``vocab`` is ``None`` for a bilm-tf checkpoint (it has no vocabulary file);
    ``accumulators`` holds Adagrad's state when the source has one.
    """

    model: TrainingBiLM
    vocab: Vocabulary | None
    kind: str  # "run", "export" or "bilm-tf"
    accumulators: dict[str, torch.Tensor] | None = None
    step: int = 0


def _vocab_beside(directory: Path) -> Vocabulary | None:
    path = directory / "vocab.txt"
    return Vocabulary.from_file(path) if os.path.lexists(path) else None


def _from_checkpoint(path: Path) -> LoadedLM:
    ckpt = load_checkpoint(path)
    config = ElmoConfig.from_dict(ckpt.options, source=f"{path} (options)")
    model = TrainingBiLM(config, ckpt.vocab_size)
    try:
        model.load_state_dict(ckpt.model, strict=False)
    except RuntimeError as e:
        raise ModelError(f"{path}: parameters do not fit the options stored with them: {e}") from None
    return LoadedLM(model, _vocab_beside(path.parent), "run", dict(ckpt.optimizer), ckpt.step)


def _from_export(files: ModelFiles) -> LoadedLM:
    assert files.options is not None and files.lm_head is not None
    head = files.lm_head
    config = ElmoConfig.from_json(files.options)
    try:
        with h5py.File(head, "r") as h5:
            weight = np.asarray(h5["softmax/W"], dtype=np.float32)
            bias = np.asarray(h5["softmax/b"], dtype=np.float32)
    except (OSError, KeyError) as e:
        raise ModelError(f"{head}: not a readable LM head (softmax/W, softmax/b): {e}") from None
    if weight.ndim != 2 or weight.shape[1] != config.lstm.projection_dim or bias.shape != weight.shape[:1]:
        raise ModelError(
            f"{head}: softmax/W {weight.shape} and softmax/b {bias.shape} do not fit "
            f"lstm.projection_dim={config.lstm.projection_dim}"
        )
    if not (np.isfinite(weight).all() and np.isfinite(bias).all()):
        raise ModelError(f"{head}: softmax/W or softmax/b contains NaN or infinite values")
    check_weights(config, files.weights)  # before the model takes memory
    model = TrainingBiLM(config, weight.shape[0])
    load_weights(model.encoder, files.weights)
    with torch.no_grad():
        model.softmax.weight.copy_(torch.from_numpy(weight))
        model.softmax.bias.copy_(torch.from_numpy(bias))
    return LoadedLM(model, _vocab_beside(files.weights.parent), "export")


def _from_bilm_tf(directory: Path, optimizer_state: bool) -> LoadedLM:
    from elmo.train.tf_import import load_bilm_tf_checkpoint

    options_path = directory / "options.json"
    if not options_path.is_file():
        raise ModelError(f"{directory}: a bilm-tf checkpoint directory needs the options.json of its run")
    options = read_json_capped(options_path, OPTIONS_CAP, "options file", ModelError)
    config = ElmoConfig.from_dict(options, source=str(options_path))
    if "n_tokens_vocab" not in options:
        raise ModelError(f"{options_path}: missing 'n_tokens_vocab' (the softmax size)")
    model = TrainingBiLM(config, int(options["n_tokens_vocab"]))
    opt = Adagrad(dict(model.named_parameters())) if optimizer_state else None
    step = load_bilm_tf_checkpoint(model, directory, optimizer=opt)
    return LoadedLM(model, None, "bilm-tf", opt.state_dict() if opt else None, step)


def load_language_model(
    source: str | os.PathLike[str] | ModelFiles, optimizer_state: bool = False
) -> LoadedLM:
    """Load a language model from any of the forms in this module's docstring.

    ``source`` is anything :func:`elmo.resolve.resolve` takes (``"default"`` is the model
    bundled with the package), or its result.
    """
    files = source if isinstance(source, ModelFiles) else resolve(source)
    if files.format == "run":
        return _from_checkpoint(files.weights)
    if files.format == "bilm-tf":
        return _from_bilm_tf(files.weights, optimizer_state)
    if files.format == "hub":
        raise ModelError(f"{files.source}: a TF Hub module holds no LM head (softmax): not a language model")
    if files.lm_head is None:
        raise ModelError(
            f"{files.weights.parent}: holds only the embedder (weights.hdf5) and no LM head ({LM_HEAD}); "
            "perplexity needs the softmax: export the model with its head (elmo export)"
        )
    return _from_export(files)


def _architecture(config: ElmoConfig) -> dict:
    # Training (261) and inference (262) character counts describe the same table.
    arch = ElmoConfig(char_cnn=config.char_cnn, lstm=config.lstm).inference_options().to_dict()
    return {"lstm": arch["lstm"], "char_cnn": arch["char_cnn"]}


def load_initial_weights(
    model: TrainingBiLM,
    source: str | os.PathLike[str],
    vocab: Vocabulary,
    optimizer: Adagrad | None = None,
    reset_softmax: bool = False,
) -> None:
    """Start ``model`` (about to be fine-tuned) from a trained language model.

    The embedder must have the same architecture. The softmax is taken over when the
    vocabularies agree (same words; for bilm-tf checkpoints, which carry no vocabulary,
    the same size) and re-initialised otherwise or with ``reset_softmax``. Adagrad's
    accumulators are taken over too when the source has them (bilm-tf's restart does).
    """
    loaded = load_language_model(source, optimizer_state=optimizer is not None)
    src = loaded.model
    ours_arch, theirs_arch = _architecture(model.config), _architecture(src.config)
    if ours_arch != theirs_arch:
        diff = [k for k in ("lstm", "char_cnn") if ours_arch[k] != theirs_arch[k]]
        raise ModelError(
            f"{source}: its architecture differs from the options ({', '.join(diff)}): "
            f"{json.dumps({k: theirs_arch[k] for k in diff})} vs "
            f"{json.dumps({k: ours_arch[k] for k in diff})}"
        )
    same_vocab = (
        loaded.vocab.words == vocab.words if loaded.vocab is not None else src.vocab_size == vocab.size
    )
    keep_softmax = same_vocab and not reset_softmax
    if not keep_softmax:
        log.info("fine-tuning with a new softmax (vocabulary changed or reset asked)")
    ours = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in src.named_parameters():
            if name.startswith("softmax.") and not keep_softmax:
                continue
            ours[name].copy_(value)
    if optimizer is not None and loaded.accumulators:
        for name, acc in loaded.accumulators.items():
            if name.startswith("softmax.") and not keep_softmax:
                continue
            if name in optimizer.accumulators:
                optimizer.accumulators[name].copy_(acc)


EXPORT_MARKER = ".elmo-export"
# Every name an export writes: an --overwrite may delete these and nothing else.
_EXPORT_FILES = frozenset(
    {EXPORT_MARKER, "options.json", "weights.hdf5", LM_HEAD, "vocab.txt", "training_options.json"}
)


def _check_export_target(out: Path, overwrite: bool) -> None:
    """Refuse an output directory whose replacement would delete what an export did not write."""
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir() or out.is_symlink():
        raise ModelError(f"{out}: exists and is not a directory; choose a directory for the export")
    try:
        names = sorted(p.name for p in out.iterdir())
    except OSError as e:
        raise ModelError(f"{out}: cannot list the directory: {e.strerror}") from None
    if not names:
        return
    if not overwrite:
        raise ModelError(f"{out}: exists and is not empty (pass overwrite=True / --overwrite to replace it)")
    if EXPORT_MARKER not in names:
        raise ModelError(
            f"{out}: not a directory elmo export made (no {EXPORT_MARKER}); --overwrite replaces only "
            "those: choose another directory or empty this one yourself"
        )
    foreign = [name for name in names if name not in _EXPORT_FILES]
    if foreign:
        raise ModelError(
            f"{out}: holds files elmo export did not write ({', '.join(foreign[:3])}"
            f"{', ...' if len(foreign) > 3 else ''}); --overwrite would delete them: move them away "
            "or choose another directory"
        )


def export_model(
    source: str | os.PathLike[str], out_dir: str | os.PathLike[str], overwrite: bool = False
) -> Path:
    """Write ``source`` as a released-layout model directory with its LM head.

    ``options.json`` (inference form: ``n_characters`` 262, every LSTM key present)
    and ``weights.hdf5`` load with :func:`elmo.load`, AllenNLP and bilm-tf's inference
    code; ``lm_head.hdf5`` and ``vocab.txt`` make it usable for perplexity and
    fine-tuning. The directory appears complete or not at all, marked as an export by
    ``.elmo-export``. ``overwrite`` replaces only such a directory, and only while it holds
    nothing but the files an export writes: anything else there is refused, never deleted.
    """
    out = Path(out_dir)
    _check_export_target(out, overwrite)
    loaded = load_language_model(source)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out) as tmp:
        (tmp / EXPORT_MARKER).write_text(
            "written by elmo export; elmo export --overwrite may replace this directory\n", encoding="utf-8"
        )
        config = loaded.model.config.inference_options()
        inference = ElmoConfig(char_cnn=config.char_cnn, lstm=config.lstm)
        inference.to_json(tmp / "options.json")
        save_weights(loaded.model.encoder, tmp / "weights.hdf5")
        with h5py.File(tmp / LM_HEAD, "w") as h5:
            h5.create_dataset("softmax/W", data=loaded.model.softmax.weight.detach().cpu().numpy())
            h5.create_dataset("softmax/b", data=loaded.model.softmax.bias.detach().cpu().numpy())
        if loaded.vocab is not None:
            loaded.vocab.save(tmp / "vocab.txt")
        if config.training:
            (tmp / "training_options.json").write_text(
                json.dumps(loaded.model.config.to_dict(), indent=2) + "\n", encoding="utf-8"
            )
    return out
