"""The one resolver: every kind of model source to its files."""

from __future__ import annotations

import shutil

import pytest
import torch

import elmo
from conftest import BILMTF, needs_shared, tiny_model
from elmo.default_model import default_model_dir
from elmo.resolve import ModelFiles, resolve

RUN = BILMTF / "generated" / "run_small_sampled"


def test_default_is_the_bundled_model_with_head_and_vocabulary():
    d = default_model_dir()
    for source in (None, "default"):
        files = resolve(source)
        assert files == ModelFiles(
            d / "options.json", d / "weights.hdf5", d / "lm_head.hdf5", d / "vocab.txt", "hdf5", "default"
        )


def test_a_pair_and_a_directory(tmp_path):
    tiny = tiny_model()
    pair = resolve(tiny / "options.json", tiny / "weights.hdf5")
    assert (pair.options, pair.weights, pair.format) == (
        tiny / "options.json",
        tiny / "weights.hdf5",
        "hdf5",
    )
    shutil.copy(tiny / "options.json", tmp_path / "options.json")
    shutil.copy(tiny / "weights.hdf5", tmp_path / "weights.hdf5")
    files = resolve(tmp_path)
    assert (files.options, files.weights, files.lm_head, files.vocab) == (
        tmp_path / "options.json",
        tmp_path / "weights.hdf5",
        None,
        None,
    )
    (tmp_path / "vocab.txt").write_text("<S>\n</S>\n<UNK>\n")
    assert resolve(str(tmp_path)).vocab == tmp_path / "vocab.txt"


def test_missing_files_are_file_not_found(tmp_path):
    tiny = tiny_model()
    with pytest.raises(FileNotFoundError, match=r"nowhere\.json: options file not found"):
        resolve(tmp_path / "nowhere.json", tiny / "weights.hdf5")
    with pytest.raises(FileNotFoundError, match=r"nowhere\.hdf5: weight file not found"):
        resolve(tiny / "options.json", tmp_path / "nowhere.hdf5")
    with pytest.raises(FileNotFoundError, match="not a model"):
        resolve(tmp_path)
    with pytest.raises(ValueError, match="give both files as URLs, or both as paths"):
        resolve("http://127.0.0.1:1/options.json", tiny / "weights.hdf5")
    with pytest.raises(ValueError, match="a URL names one file"):
        resolve("http://127.0.0.1:1/options.json")
    with pytest.raises(TypeError, match="model: expected a name, path or URL, found int"):
        resolve(3)  # type: ignore[arg-type]


def test_training_run_directory_and_checkpoint(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    (tmp_path / "options.json").write_text("{}")
    (tmp_path / "vocab.txt").write_text("<S>\n")
    want = ModelFiles(
        tmp_path / "options.json", tmp_path / "checkpoint.pt", None, tmp_path / "vocab.txt", "run", ""
    )
    for source in (tmp_path, tmp_path / "checkpoint.pt"):
        got = resolve(source)
        assert got == ModelFiles(**{**vars(want), "source": str(source)})


@needs_shared(RUN)
def test_bilm_tf_checkpoint_directory_loads_as_a_model():
    """bilm-tf's checkpoint directory: the same biLM as its dumped weights."""
    folder = RUN / "checkpoint"
    files = resolve(folder)
    assert files.format == "bilm-tf" and files.weights == folder and files.options == folder / "options.json"
    assert resolve(folder / "checkpoint") == ModelFiles(
        **{**vars(files), "source": str(folder / "checkpoint")}
    )
    got = elmo.load(folder, engine="plain")
    want = elmo.load(RUN / "options_inference.json", RUN / "weights.hdf5", engine="plain")
    for a, b in zip(got.bilm.state_dict().values(), want.bilm.state_dict().values()):
        assert torch.equal(a, b)


def test_hub_module_directory(tmp_path):
    (tmp_path / "tfhub_module.pb").write_bytes(b"\x08\x03")
    assert resolve(tmp_path) == ModelFiles(None, tmp_path, format="hub", source=str(tmp_path))
