"""The model bundled with the package: present, small, and usable with no arguments."""

from __future__ import annotations

import json
import math

import h5py
import pytest
import torch

import elmo
from conftest import ROOT, SHARED, shared_path
from elmo.cli import main
from elmo.default_model import default_model_dir
from elmo.train.models import load_language_model


def test_bundled_files_and_sizes():
    d = default_model_dir()
    assert sorted(p.name for p in d.iterdir() if not p.name.startswith(".")) == [
        "lm_head.hdf5",
        "options.json",
        "training_options.json",
        "vocab.txt",
        "weights.hdf5",
    ]
    assert (d / "weights.hdf5").stat().st_size <= 30 * 2**20
    options = json.loads((d / "options.json").read_text())
    recipe = json.loads((ROOT / "recipes" / "default" / "options.json").read_text())
    assert options["lstm"] == recipe["lstm"]
    assert {k: v for k, v in options["char_cnn"].items() if k != "n_characters"} == {
        k: v for k, v in recipe["char_cnn"].items() if k != "n_characters"
    }
    vocab = (d / "vocab.txt").read_text(encoding="utf-8").splitlines()
    with h5py.File(d / "lm_head.hdf5", "r") as h5:
        assert h5["softmax/W"].shape == (len(vocab), options["lstm"]["projection_dim"])


def test_load_with_no_arguments_embeds():
    m = elmo.load()
    out = m(["The cat sat on the mat .", "Hello"])
    assert out["elmo"].shape == (2, 7, 256)
    assert out["default"].shape == (2, 256)
    assert torch.isfinite(out["elmo"]).all()
    same = elmo.load("default")(["The cat sat on the mat .", "Hello"])
    assert torch.equal(same["elmo"], out["elmo"])


def test_cli_embed_without_model(tmp_path):
    text = tmp_path / "in.txt"
    text.write_text("The cat sat on the mat .\n\nHello world !\n", encoding="utf-8")
    out = tmp_path / "out.hdf5"
    assert main(["embed", str(text), str(out), "--quiet"]) == 0
    with h5py.File(out, "r") as h5:
        assert h5["0"].shape == (3, 7, 256) and h5["1"].shape[1] == 0 and h5["2"].shape == (3, 3, 256)


def test_perplexity_default_needs_no_other_arguments(tmp_path, capsys):
    text = tmp_path / "heldout.txt"
    text.write_text("the first film of the series was released in 1995 .\n", encoding="utf-8")
    assert main(["perplexity", "default", "--data", str(text), "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["tokens"] == 12
    assert math.isfinite(result["combined"]) and result["combined"] > 1
    assert load_language_model("default").vocab is not None


@pytest.mark.parametrize("name", ["weights.hdf5", "options.json"])
def test_missing_bundled_files_are_reported(name, monkeypatch, tmp_path):
    import elmo.default_model as dm

    monkeypatch.setattr(dm, "_DIRECTORY", tmp_path)
    with pytest.raises(elmo.ElmoError, match="bundled default model is missing"):
        dm.default_model_dir()


def test_bundled_model_is_a_trained_language_model(tmp_path, capsys):
    """Heldout perplexity far below the vocabulary size (33,233 for an untrained model):
    the bundled weights are the trained ones (MODEL_CARD.md has the full-split figures)."""
    valid = shared_path(SHARED / "data" / "wikitext-2" / "sentences" / "valid" / "shard-00000.txt")
    lines = valid.read_text(encoding="utf-8").splitlines()[:100]
    text = tmp_path / "valid100.txt"
    text.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert main(["perplexity", "default", "--data", str(text), "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["combined"] < 250
