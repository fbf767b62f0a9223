"""Loading and saving the released weight layout, and every way a weight file can be bad."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
import torch

import elmo
from conftest import ALLENNLP, ROOT, needs_shared, tiny_model
from elmo.config import ElmoConfig
from elmo.errors import ConfigError, WeightsError
from elmo.model import ElmoBiLM
from elmo.weights import load_weights, save_weights

# The model each bad file below is made from: the generated tiny one.
OPTIONS = tiny_model() / "options.json"
WEIGHTS = tiny_model() / "weights.hdf5"


def _datasets(path) -> dict[str, np.ndarray]:
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: out.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None)
    return out


@needs_shared(ALLENNLP)
def test_round_trip_is_identical(tmp_path):
    """AllenNLP's tiny test weight file, written by other software, comes back as it was."""
    options, weights = ALLENNLP / "options.json", ALLENNLP / "lm_weights.hdf5"
    bilm = elmo.load_bilm(options, weights)
    save_weights(bilm, tmp_path / "weights.hdf5")
    source, saved = _datasets(weights), _datasets(tmp_path / "weights.hdf5")
    assert sorted(source) == sorted(saved)
    for name in source:
        assert saved[name].shape == source[name].shape and saved[name].dtype == np.float32, name
        assert np.array_equal(saved[name], source[name]), name
    again = elmo.load_bilm(options, tmp_path / "weights.hdf5")
    for (n1, p1), (n2, p2) in zip(bilm.state_dict().items(), again.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2), n1
    assert not (tmp_path / "weights.hdf5.tmp").exists()


def test_round_trip_released_size(small_model_dir, tmp_path):
    bilm = elmo.load_bilm(small_model_dir / "options.json", small_model_dir / "weights.hdf5")
    save_weights(bilm, tmp_path / "w.hdf5")
    with h5py.File(small_model_dir / "weights.hdf5", "r") as a, h5py.File(tmp_path / "w.hdf5", "r") as b:
        names = []
        a.visit(names.append)
        for name in names:
            if isinstance(a[name], h5py.Dataset):
                assert b[name].shape == a[name].shape
                assert np.array_equal(a[name][()], b[name][()]), name
    assert bilm.token_encoder.char_embed[0].abs().sum() == 0  # the padding row added at load


def _modified(tmp_path, change) -> str:
    path = tmp_path / "weights.hdf5"
    shutil.copy(WEIGHTS, path)
    with h5py.File(path, "r+") as f:
        change(f)
    return str(path)


def test_missing_dataset(tmp_path):
    path = _modified(tmp_path, lambda f: f.__delitem__("CNN_high_1/W_carry"))
    with pytest.raises(
        WeightsError,
        match=r"weights\.hdf5: missing dataset 'CNN_high_1/W_carry' "
        r"\(expected shape \(124, 124\)",
    ):
        elmo.load_bilm(OPTIONS, path)


def test_wrong_shape(tmp_path):
    def change(f):
        del f["CNN_proj/W_proj"]
        f["CNN_proj/W_proj"] = np.zeros((124, 17), np.float32)

    path = _modified(tmp_path, change)
    with pytest.raises(
        WeightsError,
        match=r"dataset 'CNN_proj/W_proj': expected shape \(124, 16\) .*"
        r"lstm\.projection_dim=16.*found \(124, 17\)",
    ):
        elmo.load_bilm(OPTIONS, path)


def test_wrong_dtype(tmp_path):
    def change(f):
        del f["char_embed"]
        f["char_embed"] = np.zeros((261, 4), np.int32)

    path = _modified(tmp_path, change)
    with pytest.raises(
        WeightsError, match=r"dataset 'char_embed': expected float32 values, found dtype int32"
    ):
        elmo.load_bilm(OPTIONS, path)


def test_float64_values_are_converted(tmp_path):
    def change(f):
        data = f["CNN_proj/b_proj"][()].astype(np.float64)
        del f["CNN_proj/b_proj"]
        f["CNN_proj/b_proj"] = data

    bilm = elmo.load_bilm(OPTIONS, _modified(tmp_path, change))
    with h5py.File(WEIGHTS, "r") as f:
        assert np.array_equal(bilm.token_encoder.proj_b.detach().numpy(), f["CNN_proj/b_proj"][()])


def test_non_finite_values(tmp_path):
    def change(f):
        f["CNN_proj/b_proj"][3] = np.nan

    with pytest.raises(WeightsError, match=r"dataset 'CNN_proj/b_proj': contains NaN"):
        elmo.load_bilm(OPTIONS, _modified(tmp_path, change))


def test_truncated_file(tmp_path):
    path = tmp_path / "weights.hdf5"
    path.write_bytes(WEIGHTS.read_bytes()[: WEIGHTS.stat().st_size // 2])
    with pytest.raises(WeightsError, match=r"weights\.hdf5: cannot read as HDF5 .*truncated"):
        elmo.load_bilm(OPTIONS, path)


def test_corrupt_data_inside_a_valid_file(tmp_path):
    """Damage the middle of the file (the data area), keeping the HDF5 structure."""
    path = tmp_path / "weights.hdf5"
    data = bytearray(WEIGHTS.read_bytes())
    with h5py.File(WEIGHTS, "r") as f:
        offset = f["RNN_0/RNN/MultiRNNCell/Cell0/LSTMCell/W_0"].id.get_offset()
    data[offset : offset + 64] = b"\xff" * 64  # NaN bit patterns
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=r"'RNN_0/RNN/MultiRNNCell/Cell0/LSTMCell/W_0': contains NaN"):
        elmo.load_bilm(OPTIONS, path)


def test_not_hdf5_and_missing(tmp_path):
    (tmp_path / "weights.hdf5").write_text("this is not hdf5")
    with pytest.raises(WeightsError, match="cannot read as HDF5"):
        elmo.load_bilm(OPTIONS, tmp_path / "weights.hdf5")
    with pytest.raises(WeightsError, match=r"nope\.hdf5: weight file not found"):
        elmo.load_bilm(OPTIONS, tmp_path / "nope.hdf5")
    with pytest.raises(WeightsError, match="is a directory"):
        elmo.load_bilm(OPTIONS, tmp_path)


def _options(tmp_path, **lstm) -> str:
    data = json.loads(OPTIONS.read_text())
    data["lstm"].update(lstm)
    path = tmp_path / "options.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_options_that_disagree_with_the_weights(tmp_path):
    with pytest.raises(
        WeightsError,
        match=r"'RNN_0/RNN/MultiRNNCell/Cell0/LSTMCell/W_0': expected shape "
        r"\(32, 512\) \(from the options: lstm\.dim=128",
    ):
        elmo.load_bilm(_options(tmp_path, dim=128), WEIGHTS)
    with pytest.raises(
        WeightsError,
        match=r"dataset 'RNN_0/RNN/MultiRNNCell/Cell1/LSTMCell/B' \(256,\).* "
        r"not described by the options \(lstm\.n_layers=1",
    ):
        elmo.load_bilm(_options(tmp_path, n_layers=1), WEIGHTS)
    with pytest.raises(WeightsError, match=r"missing dataset 'RNN_0/RNN/MultiRNNCell/Cell2/LSTMCell/W_0'"):
        elmo.load_bilm(_options(tmp_path, n_layers=3), WEIGHTS)


def test_options_file_that_is_not_json(tmp_path):
    path = tmp_path / "options.json"
    path.write_text("{'lstm': 1}")
    with pytest.raises(ConfigError, match=r"options\.json: not valid JSON: .*line 1, column 2"):
        elmo.load(path, WEIGHTS)


def test_softmax_datasets_are_ignored(tmp_path):
    path = _modified(tmp_path, lambda f: f.__setitem__("softmax/W", np.zeros((5, 16), np.float32)))
    elmo.load_bilm(OPTIONS, path)


def test_single_layer_bilm_tf_names(tmp_path):
    """bilm-tf dumps a one-layer LSTM without the MultiRNNCell scope."""
    config = ElmoConfig.from_json(OPTIONS)
    config.lstm.n_layers = 1
    bilm = ElmoBiLM(config)
    torch.manual_seed(0)
    for p in bilm.parameters():
        torch.nn.init.uniform_(p, -0.1, 0.1)
    path = tmp_path / "w.hdf5"
    with h5py.File(path, "w") as f:
        for name, tensor, _ in __import__("elmo.weights", fromlist=["x"]).dataset_layout(bilm):
            f[name.replace("/MultiRNNCell/Cell0/", "/")] = tensor.numpy()
    again = ElmoBiLM(config)
    load_weights(again, path)
    assert torch.equal(again.forward_layers[0].kernel, bilm.forward_layers[0].kernel)


@pytest.mark.slow
def test_loading_original_size_needs_at_most_1_5x_file_size(original_model_dir):
    """Peak resident memory added by loading, measured in a fresh process."""
    weights = original_model_dir / "weights.hdf5"
    script = textwrap.dedent(
        f"""
        import json, os, re
        import torch, elmo

        def status(key):
            text = open("/proc/self/status").read()
            return int(re.search(key + r":\\s+(\\d+) kB", text).group(1)) * 1024

        # reset the peak (VmHWM) to the current RSS, so the peak below is the loading's
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = status("VmRSS")
        m = elmo.load({str(original_model_dir)!r})
        print(json.dumps({{"before": before, "peak": status("VmHWM")}}))
        """
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT, check=True
    )
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    added = figures["peak"] - figures["before"]
    assert added <= 1.5 * weights.stat().st_size, (added, weights.stat().st_size)
