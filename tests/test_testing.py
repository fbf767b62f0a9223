"""``elmo.testing``: random test models, equal to the reference fixtures' generator's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import elmo
from conftest import ALLENNLP, SHARED, needs_shared, shared_path
from elmo.config import ElmoConfig
from elmo.testing import SIZES, random_config, write_random_model
from elmo.weights import check_weights

TOOL = SHARED / "tools" / "make_random_elmo.py"


def _datasets(path: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: out.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None)
    return out


@pytest.mark.parametrize(
    ("size", "seed", "gain"),
    [("small", 1, 1), ("small", 7, 3), pytest.param("original", 1, 2, marks=pytest.mark.slow)],
)
def test_same_values_as_the_reference_generator(tmp_path, size, seed, gain):
    """The reference outputs were computed with the tool's models: ours must be those, bit for bit."""
    tool = [sys.executable, str(shared_path(TOOL)), "--size", size, "--seed", str(seed), "--gain", str(gain)]
    subprocess.run([*tool, "--out", str(tmp_path / "tool")], check=True, stdout=subprocess.DEVNULL)
    ours, theirs = write_random_model(tmp_path / "ours", size, seed, gain), tmp_path / "tool"
    assert ours == tmp_path / "ours"
    assert ElmoConfig.from_json(ours / "options.json") == ElmoConfig.from_json(theirs / "options.json")
    want, got = _datasets(theirs / "weights.hdf5"), _datasets(ours / "weights.hdf5")
    assert sorted(got) == sorted(want)
    for name, array in want.items():
        assert got[name].dtype == array.dtype == np.float32 and got[name].shape == array.shape, name
        assert np.array_equal(got[name], array), name


def test_tiny_model_loads_and_runs(tmp_path):
    directory = write_random_model(tmp_path, "tiny")
    m = elmo.load(directory)
    assert m.config == random_config("tiny")
    with torch.no_grad():
        out = m(["the cat sat", "hello"])
    assert out["elmo"].shape == (2, 3, 32) and out["default"].shape == (2, 32)
    assert torch.isfinite(out["lstm_outputs2"]).all() and out["lstm_outputs2"].abs().max() > 0
    bilm = elmo.load(directory, engine="plain").bilm
    assert sum(p.numel() for p in bilm.parameters()) < 300_000  # small enough for quick tests


def test_seed_and_gain_decide_the_values(tmp_path):
    a = _datasets(write_random_model(tmp_path / "a", "tiny", seed=1) / "weights.hdf5")
    again = _datasets(write_random_model(tmp_path / "again", "tiny", seed=1) / "weights.hdf5")
    other = _datasets(write_random_model(tmp_path / "other", "tiny", seed=2) / "weights.hdf5")
    doubled = _datasets(write_random_model(tmp_path / "doubled", "tiny", seed=1, gain=2) / "weights.hdf5")
    for name in a:
        assert np.array_equal(a[name], again[name]), name
        assert not np.array_equal(a[name], other[name]), name
        assert np.allclose(doubled[name], 2 * a[name], rtol=1e-6, atol=0), name
    # char_embed uses fan-in 3 (values within ±gain); biases are a tenth of their kernel's range.
    assert np.abs(a["char_embed"]).max() <= 1 and np.abs(a["char_embed"]).max() > 0.99
    kernel, bias = a["CNN_proj/W_proj"], a["CNN_proj/b_proj"]
    bound = np.sqrt(3 / kernel.shape[0])
    assert np.abs(kernel).max() <= bound and np.abs(bias).max() <= 0.1 * bound


@needs_shared(ALLENNLP)
def test_tiny_has_the_shapes_of_allennlps_tiny_test_model():
    assert random_config("tiny") == ElmoConfig.from_json(ALLENNLP / "options.json")
    check_weights(random_config("tiny"), ALLENNLP / "lm_weights.hdf5")


def test_sizes_and_unknown_size():
    assert SIZES == ("tiny", "small", "original")
    assert random_config("small") == ElmoConfig.preset("small")
    with pytest.raises(ValueError, match="unknown random model size 'huge': expected one of tiny, small"):
        random_config("huge")  # type: ignore[arg-type]
