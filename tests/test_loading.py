import shutil

import pytest
import torch

import elmo
from conftest import tiny_model
from elmo.loading import find_model_files

OPTIONS = tiny_model() / "options.json"
WEIGHTS = tiny_model() / "weights.hdf5"


def test_load_directory_and_files_agree(tmp_path):
    shutil.copy(OPTIONS, tmp_path / "options.json")
    shutil.copy(WEIGHTS, tmp_path / "weights.hdf5")
    a = elmo.load(tmp_path)
    b = elmo.load(OPTIONS, WEIGHTS)
    with torch.no_grad():
        assert torch.equal(a(["x y"])["elmo"], b(["x y"])["elmo"])
    assert not a.training and not a.stateful


def test_released_file_names_are_found(tmp_path):
    shutil.copy(OPTIONS, tmp_path / "elmo_2x1024_128_2048cnn_1xhighway_options.json")
    shutil.copy(WEIGHTS, tmp_path / "elmo_2x1024_128_2048cnn_1xhighway_weights.hdf5")
    options, weights = find_model_files(tmp_path)
    assert options.name.endswith("_options.json") and weights.name.endswith("_weights.hdf5")
    assert elmo.load(tmp_path).config.lstm.dim == 64


def test_directory_errors(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"expected options\.json \(or exactly one \*\.json file\), found none"
    ):
        elmo.load(tmp_path)
    (tmp_path / "a.json").write_text("{}")
    (tmp_path / "b.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"found a\.json, b\.json"):
        elmo.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such model directory"):
        elmo.load(tmp_path / "missing")
    with pytest.raises(TypeError, match="this is a weight file; pass the options too"):
        elmo.load(WEIGHTS)
    with pytest.raises(TypeError, match=r"load\(weights=\.\.\.\) needs the options too"):
        elmo.load(weights=WEIGHTS)


def test_stateful_flag_and_reset(tmp_path):
    m = elmo.load(OPTIONS, WEIGHTS, stateful=True)
    with torch.no_grad():
        first = m(["the cat"])["elmo"]
        second = m(["the cat"])["elmo"]
        m.reset_state()
        third = m(["the cat"])["elmo"]
    assert not torch.equal(first, second)
    assert torch.equal(first, third)


def test_weights_are_checked_before_the_model_takes_memory(tmp_path, monkeypatch):
    import json

    import elmo.loading
    from elmo.errors import WeightsError

    # Options far larger than the weights (a 60000-cell LSTM: about 30 GB of parameters).
    options = json.loads(OPTIONS.read_text())
    options["lstm"].update(dim=60000, projection_dim=4096)
    (tmp_path / "options.json").write_text(json.dumps(options))
    built = []
    real = elmo.loading.ElmoBiLM

    def record(config):
        built.append(config)
        if config.lstm.dim == 60000:  # never allocate it, whatever the code under test does
            raise RuntimeError("the model was built before its weights were checked")
        return real(config)

    monkeypatch.setattr(elmo.loading, "ElmoBiLM", record)
    with pytest.raises(WeightsError, match=r"weights\.hdf5: dataset '.*': expected shape .*, found"):
        elmo.load(tmp_path / "options.json", WEIGHTS)
    assert built == []  # refused from the file's metadata, before any parameter was allocated
    elmo.load(OPTIONS, WEIGHTS)
    assert len(built) == 1


def test_layer_mix_file_errors_name_the_file(tmp_path):
    shutil.copy(OPTIONS, tmp_path / "options.json")
    shutil.copy(WEIGHTS, tmp_path / "weights.hdf5")
    from elmo.errors import ConfigError

    for text, message in [
        ('{"weights": [1, "x"]}', "not a layer mix"),
        ("[1, 2]", "not a layer mix"),
        ('{"weights": [NaN, 1, 1]}', "must be finite"),
        ("[" * 50_000, "nested too deeply"),
    ]:
        (tmp_path / "hub_mix.json").write_text(text)
        with pytest.raises(ConfigError, match=rf"hub_mix\.json: .*{message}"):
            elmo.load(tmp_path)
    (tmp_path / "hub_mix.json").unlink()
    (tmp_path / "hub_mix.json").symlink_to("/dev/zero")
    with pytest.raises(ConfigError, match=r"hub_mix\.json: is a character device"):
        elmo.load(tmp_path)
