import json

import pytest

from conftest import ALLENNLP, BILMTF, shared_path, tiny_model
from elmo.config import ElmoConfig
from elmo.errors import ConfigError

BILMTF_TRAINING = BILMTF / "generated" / "run_small_sampled" / "options.json"
BILMTF_INFERENCE = BILMTF / "generated" / "run_small_sampled" / "options_inference.json"


def test_reads_allennlp_options():
    cfg = ElmoConfig.from_json(shared_path(ALLENNLP / "options.json"))
    assert cfg.char_cnn.filters == [(1, 4), (2, 8), (3, 16), (4, 32), (5, 64)]
    assert cfg.char_cnn.n_filters == 124
    assert cfg.char_cnn.embedding_dim == 4 and cfg.char_cnn.n_highway == 2
    assert (cfg.lstm.dim, cfg.lstm.projection_dim, cfg.lstm.n_layers) == (64, 16, 2)
    assert cfg.lstm.cell_clip == 3 and cfg.lstm.proj_clip == 3 and cfg.lstm.use_skip_connections
    assert cfg.output_dim == 32


@pytest.mark.parametrize(
    "path",
    [ALLENNLP / "options.json", BILMTF / "model" / "options.json", BILMTF_TRAINING, BILMTF_INFERENCE],
    ids=["allennlp", "bilm-tf-model", "bilm-tf-training", "bilm-tf-inference"],
)
def test_round_trip_keeps_every_key(path, tmp_path):
    original = json.loads(shared_path(path).read_text())
    cfg = ElmoConfig.from_json(path)
    assert cfg.to_dict() == original
    cfg.to_json(tmp_path / "options.json")
    assert json.loads((tmp_path / "options.json").read_text()) == original
    assert ElmoConfig.from_json(tmp_path / "options.json") == cfg


def test_bilm_tf_training_options_omit_inference_keys():
    cfg = ElmoConfig.from_json(shared_path(BILMTF_TRAINING))
    assert cfg.char_cnn.n_characters == 261
    assert cfg.char_cnn.max_characters_per_token == 10
    assert cfg.lstm.cell_clip is None and cfg.lstm.proj_clip is None
    assert cfg.lstm.use_skip_connections is False
    assert cfg.training["n_tokens_vocab"] == 32 and cfg.training["unroll_steps"] == 10
    inference = cfg.inference_options().to_dict()
    expected = json.loads(shared_path(BILMTF_INFERENCE).read_text())
    assert inference == expected


@pytest.mark.parametrize(
    ("name", "dim", "proj", "highway"),
    [("small", 1024, 128, 1), ("medium", 2048, 256, 1), ("original", 4096, 512, 2)],
)
def test_presets(name, dim, proj, highway):
    cfg = ElmoConfig.preset(name)
    assert (cfg.lstm.dim, cfg.lstm.projection_dim, cfg.char_cnn.n_highway) == (dim, proj, highway)
    assert cfg.char_cnn.n_filters == 2048 and cfg.char_cnn.embedding_dim == 16
    assert cfg.char_cnn.n_characters == 262 and cfg.char_cnn.max_characters_per_token == 50
    assert cfg.lstm.use_skip_connections and cfg.lstm.cell_clip == 3 and cfg.lstm.n_layers == 2
    assert ElmoConfig.from_dict(cfg.to_dict()) == cfg


def test_unknown_preset():
    with pytest.raises(ConfigError, match=r"unknown model size 'huge'.*small, medium, original"):
        ElmoConfig.preset("huge")


def test_invalid_json_names_file_and_position(tmp_path):
    path = tmp_path / "options.json"
    path.write_text('{"lstm": {"dim": 4,}\n')
    with pytest.raises(ConfigError, match=r"options\.json: not valid JSON: .* line 1, column \d+"):
        ElmoConfig.from_json(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="options file not found"):
        ElmoConfig.from_json(tmp_path / "nope.json")


def _options(**changes):
    data = json.loads((tiny_model() / "options.json").read_text())
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        if value is ...:
            del data[section][key]
        else:
            data[section][key] = value
    return data


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"lstm__dim": "64"}, r"lstm\.dim: expected an integer, found \"64\""),
        ({"lstm__dim": 0}, r"lstm\.dim: expected an integer >= 1, found 0"),
        ({"lstm__projection_dim": ...}, r"missing key 'lstm\.projection_dim'"),
        (
            {"lstm__projection_dim": 128},
            r"lstm\.projection_dim: expected at most lstm\.dim \(64\), found 128",
        ),
        ({"lstm__cell_clip": -1}, r"lstm\.cell_clip: expected a positive number, found -1"),
        ({"lstm__use_skip_connections": "yes"}, r"use_skip_connections: expected true or false"),
        (
            {"char_cnn__activation": "gelu"},
            r"char_cnn\.activation: expected 'relu' or 'tanh', found \"gelu\"",
        ),
        ({"char_cnn__filters": [[1, 4], [2]]}, r"char_cnn\.filters\[1\]: expected \[width, number\]"),
        ({"char_cnn__filters": [[60, 4]]}, r"char_cnn\.filters: expected widths at most"),
        ({"char_cnn__n_characters": 300}, r"char_cnn\.n_characters: expected 261 .* or 262"),
        ({"char_cnn__max_characters_per_token": ...}, r"missing key 'char_cnn\.max_characters_per_token'"),
    ],
)
def test_bad_values_name_the_key(changes, message):
    with pytest.raises(ConfigError, match=message):
        ElmoConfig.from_dict(_options(**changes), source="opts.json")


def test_word_input_models_are_rejected():
    with pytest.raises(ConfigError, match="no 'char_cnn' block"):
        ElmoConfig.from_dict({"lstm": {"dim": 4, "projection_dim": 2}})
    with pytest.raises(ConfigError, match="expected a JSON object"):
        ElmoConfig.from_dict([1, 2])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"lstm__dim": 10**7}, r"lstm\.dim: expected an integer <= 65536 .*, found 10000000"),
        ({"lstm__dim": 1e300}, r"lstm\.dim: expected an integer <= 65536"),
        ({"lstm__dim": float("inf")}, r"lstm\.dim: expected an integer, found Infinity"),
        ({"lstm__dim": True}, r"lstm\.dim: expected an integer, found true"),
        ({"lstm__n_layers": 10**6}, r"lstm\.n_layers: expected an integer <= 64"),
        ({"lstm__cell_clip": float("nan")}, r"lstm\.cell_clip: expected a finite positive number .*NaN"),
        ({"lstm__proj_clip": float("inf")}, r"lstm\.proj_clip: expected a finite positive number"),
        ({"lstm__proj_clip": "3"}, r"lstm\.proj_clip: expected a positive number, found \"3\""),
        (
            {"char_cnn__max_characters_per_token": 10**9},
            r"char_cnn\.max_characters_per_token: expected an integer <= 2048",
        ),
        ({"char_cnn__n_highway": 10**6}, r"char_cnn\.n_highway: expected an integer <= 64"),
        ({"char_cnn__n_highway": -1}, r"char_cnn\.n_highway: expected an integer >= 0"),
        (
            {"char_cnn__filters": [[1, 4]] * 100_000},
            r"char_cnn\.filters: expected at most 256 .*100000 pairs",
        ),
        (
            {"char_cnn__filters": [[1, 10**7]]},
            r"char_cnn\.filters\[0\]: expected \[width, number\] of integers",
        ),
        ({"char_cnn__filters": [[1, 40000], [2, 40000]]}, r"char_cnn\.filters: expected at most 65536 maps"),
        ({"char_cnn__filters": []}, r"char_cnn\.filters: expected at least one"),
        ({"char_cnn__filters": [[1, True]]}, r"char_cnn\.filters\[0\]"),
        (
            {"char_cnn__activation": "x" * 10**6},
            r"char_cnn\.activation: .*found \"xxx.*\.\.\. \(str of 1,000,002",
        ),
    ],
)
def test_absurd_values_are_refused_before_any_model_is_built(changes, message):
    with pytest.raises(ConfigError, match=message) as caught:
        ElmoConfig.from_dict(_options(**changes), source="opts.json")
    assert str(caught.value).startswith("opts.json: ") and "\n" not in str(caught.value)
    assert len(str(caught.value)) < 300


def test_embedding_dim_limit_and_total_parameters():
    data = _options()
    data["char_cnn"]["embedding"]["dim"] = 10**7
    with pytest.raises(ConfigError, match=r"char_cnn\.embedding\.dim: expected an integer <= 4096"):
        ElmoConfig.from_dict(data, source="opts.json")
    # Each value within its range, together far too many parameters (about 0.6 PB).
    huge = _options(lstm__dim=65536, lstm__projection_dim=65536, lstm__n_layers=64)
    with pytest.raises(ConfigError, match=r"opts\.json: the options describe a biLM of [\d,]+ parameters"):
        ElmoConfig.from_dict(huge, source="opts.json")


@pytest.mark.parametrize("name", ["small", "medium", "original"])
def test_released_sizes_are_within_the_limits_and_counted_exactly(name):
    import torch

    from elmo.model import ElmoBiLM

    cfg = ElmoConfig.from_dict(ElmoConfig.preset(name).to_dict())
    with torch.device("meta"):
        bilm = ElmoBiLM(cfg)
    assert cfg.n_parameters == sum(p.numel() for p in bilm.parameters())


def test_options_file_caps_and_special_files(tmp_path):
    with pytest.raises(ConfigError, match=r"^/dev/zero: is a character device; expected the options file"):
        ElmoConfig.from_json("/dev/zero")
    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate(10 * 2**30)
    with pytest.raises(ConfigError, match=r"big\.json: options file of 10240 MiB, larger than the 16 MiB"):
        ElmoConfig.from_json(big)
    deep = tmp_path / "deep.json"
    deep.write_text('{"lstm": ' + "[" * 50_000 + "]" * 50_000 + "}")
    with pytest.raises(ConfigError, match=r"deep\.json: JSON nested too deeply"):
        ElmoConfig.from_json(deep)
    digits = tmp_path / "digits.json"
    digits.write_text('{"lstm": {"dim": ' + "9" * 5000 + "}}")
    with pytest.raises(ConfigError, match=r"digits\.json: not valid JSON"):
        ElmoConfig.from_json(digits)
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + (tiny_model() / "options.json").read_bytes())
    assert ElmoConfig.from_json(bom) == ElmoConfig.from_json(tiny_model() / "options.json")
