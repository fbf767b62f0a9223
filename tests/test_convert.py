"""Converting bilm-tf checkpoints and TF Hub modules to options.json + weights.hdf5."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import elmo
from conftest import BILMTF, needs_shared
from elmo.commands.convert import configure, run
from elmo.convert import (
    convert,
    convert_bilm_tf_checkpoint,
    convert_hub_module,
    detect_format,
    infer_options,
)
from elmo.errors import ConvertError, ElmoError
from tfckpt_writer import write_checkpoint, write_state_file

GENERATED = BILMTF / "generated"
needs_generated = needs_shared(GENERATED)
RUNS = ("run_small_sampled", "run_small_fullsoftmax_nodropout")
# The generated runs differ from the released models in what shapes cannot tell.
RUN_OPTIONS = {
    "char_cnn": {"activation": "tanh", "max_characters_per_token": 10},
    "lstm": {"use_skip_connections": False, "cell_clip": None, "proj_clip": None},
}


def _datasets(path: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as h5:
        h5.visititems(
            lambda name, obj: out.update({name: obj[()]}) if isinstance(obj, h5py.Dataset) else None
        )
    return out


def _assert_weights_equal(got: Path, want: Path) -> None:
    a, b = _datasets(got), _datasets(want)
    assert sorted(a) == sorted(b)
    for name in b:
        assert a[name].dtype == np.float32 and a[name].shape == b[name].shape, name
        assert np.array_equal(a[name], b[name]), name


def _assert_lm_outputs_match(model_dir: Path, run: str, layers: int = 3) -> None:
    """As tests/test_parity.py: bilm-tf's inference model on 8 sentences, every layer."""
    folder = GENERATED / run
    stored = np.load(folder / "inference_lm_embeddings.npz")
    sentences = json.loads((folder / "token_loglik_sentences.json").read_text(encoding="utf-8"))
    m = elmo.load(model_dir)
    with torch.no_grad():
        out = m(sentences)
    word = out["word_emb"].numpy()
    t = word.shape[1]
    mask = stored["mask"][:, :t]
    assert np.array_equal(out["mask"].numpy(), mask)
    ours = [np.concatenate([word, word], -1)] + [out[f"lstm_outputs{k}"].numpy() for k in range(1, layers)]
    for k, got in enumerate(ours):
        ref = stored["lm_embeddings"][:, k, :t]
        assert np.abs(got - ref)[mask].max() <= 1e-5, k


# --------------------------------------------------------------------------- bilm-tf


@needs_generated
@pytest.mark.parametrize("run", RUNS)
def test_bilm_tf_checkpoint_gives_the_dumped_weights(tmp_path, run):
    out = tmp_path / "model"
    result = convert_bilm_tf_checkpoint(GENERATED / run / "checkpoint", out)
    assert sorted(p.name for p in out.iterdir()) == ["options.json", "weights.hdf5"]
    _assert_weights_equal(out / "weights.hdf5", GENERATED / run / "weights.hdf5")
    options = json.loads((out / "options.json").read_text(encoding="utf-8"))
    assert options == json.loads((GENERATED / run / "options_inference.json").read_text(encoding="utf-8"))
    assert "global_step" in result.ignored and "lm/softmax/W" in result.ignored
    assert not result.filled and result.mix is None
    _assert_lm_outputs_match(out, run)
    assert not list(tmp_path.glob(".model.*"))  # no temporary directory left behind


@needs_generated
def test_bilm_tf_prefix_auto_format_and_options_override(tmp_path):
    prefix = GENERATED / "run_small_sampled" / "checkpoint" / "model_init.ckpt"
    assert detect_format(prefix) == "bilm-tf"
    result = convert(prefix, tmp_path / "out", options={"lstm": {"cell_clip": 5}})
    assert result.format == "bilm-tf" and result.checkpoint == prefix
    assert result.config.lstm.cell_clip == 5
    stored = np.load(GENERATED / "run_small_sampled" / "ckpt_init_variables.npz")
    got = _datasets(tmp_path / "out" / "weights.hdf5")
    assert np.array_equal(got["CNN/W_cnn_0"], stored["lm/CNN/W_cnn_0"])


def _training_variables(run: str = "run_small_fullsoftmax_nodropout") -> dict[str, np.ndarray]:
    return dict(np.load(GENERATED / run / "ckpt_all_variables.npz"))


def _write_bilm_tf(folder: Path, variables: dict[str, np.ndarray], options: dict | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_checkpoint(folder / "model.ckpt-7", variables)
    write_state_file(folder, "model.ckpt-7")
    if options is not None:
        (folder / "options.json").write_text(json.dumps(options), encoding="utf-8")
    return folder


def _run_options(run: str = "run_small_fullsoftmax_nodropout") -> dict:
    return json.loads((GENERATED / run / "options.json").read_text(encoding="utf-8"))


@needs_generated
def test_single_layer_lstm_names(tmp_path):
    """bilm-tf names a one-layer LSTM without multi_rnn_cell; we write the Cell0 names."""
    variables = {}
    for name, value in _training_variables().items():
        if "cell_1" in name:
            continue
        variables[name.replace("multi_rnn_cell/cell_0/", "")] = value
    assert "lm/RNN_0/rnn/lstm_cell/kernel" in variables
    options = _run_options()
    options["lstm"]["n_layers"] = 1
    src = _write_bilm_tf(tmp_path / "ckpt", variables, options)
    convert_bilm_tf_checkpoint(src, tmp_path / "out")
    got = _datasets(tmp_path / "out" / "weights.hdf5")
    assert "RNN_0/RNN/MultiRNNCell/Cell0/LSTMCell/W_0" in got and len(got) == 23
    # Layer 1 of the two-layer model is the top layer of this one.
    _assert_lm_outputs_match(tmp_path / "out", "run_small_fullsoftmax_nodropout", layers=2)


def test_absent_char_projection_becomes_identity(tmp_path):
    """bilm-tf creates no CNN_proj when the filters already have the projection width."""
    rng = np.random.default_rng(3)
    h, p = 16, 12  # n_filters 4 + 8 = 12 = projection_dim
    shapes = {
        "lm/char_embed": (261, 4),
        "lm/CNN/W_cnn_0": (1, 1, 4, 4),
        "lm/CNN/b_cnn_0": (4,),
        "lm/CNN/W_cnn_1": (1, 2, 4, 8),
        "lm/CNN/b_cnn_1": (8,),
    }
    for d in range(2):
        pre = f"lm/RNN_{d}/rnn/lstm_cell/"
        shapes.update(
            {pre + "kernel": (2 * p, 4 * h), pre + "bias": (4 * h,), pre + "projection/kernel": (h, p)}
        )
    variables = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    options = {
        "lstm": {"dim": h, "projection_dim": p, "n_layers": 1},
        "char_cnn": {
            "n_characters": 261,
            "max_characters_per_token": 10,
            "filters": [[1, 4], [2, 8]],
            "activation": "relu",
            "embedding": {"dim": 4},
            "n_highway": 0,
        },
    }
    src = _write_bilm_tf(tmp_path / "ckpt", variables, options)
    result = convert(src, tmp_path / "out")
    assert result.filled == ["CNN_proj/W_proj", "CNN_proj/b_proj"]
    got = _datasets(tmp_path / "out" / "weights.hdf5")
    assert np.array_equal(got["CNN_proj/W_proj"], np.eye(p, dtype=np.float32))
    assert not got["CNN_proj/b_proj"].any()
    with torch.no_grad():
        assert elmo.load(tmp_path / "out")(tokens=[["a", "b"]])["lstm_outputs1"].shape == (1, 2, 2 * p)


# --------------------------------------------------------------------------- hub


def _hub_name(dump: str) -> str:
    """The TF Hub elmo module's name of a weights.hdf5 dataset (bilm-tf inference graph)."""
    for leaf, graph in (("W_0", "kernel"), ("B", "bias"), ("W_P_0", "projection/kernel")):
        if dump.startswith("RNN_") and dump.endswith(f"/LSTMCell/{leaf}"):
            return "bilm/" + dump.removesuffix(f"LSTMCell/{leaf}") + f"rnn/lstm_cell/{graph}"
    return "bilm/" + dump


def _write_hub_module(folder: Path, run: str) -> Path:
    variables = {}
    for name, value in _datasets(GENERATED / run / "weights.hdf5").items():
        if name == "char_embed":  # the graph's table has the zero padding row 0
            value = np.concatenate([np.zeros((1, value.shape[1]), np.float32), value])
        variables[_hub_name(name)] = value
    variables["aggregation/weights"] = np.array([0.5, -1.0, 2.0], np.float32)
    variables["aggregation/scaling"] = np.float32(1.25)
    variables["bilm/RNN_0/Variable"] = np.zeros((4, 16), np.float32)  # a state variable
    (folder / "variables").mkdir(parents=True)
    (folder / "tfhub_module.pb").write_bytes(b"\x08\x03")
    write_checkpoint(folder / "variables" / "variables", variables, num_shards=2)
    return folder


def test_hub_names_as_written():
    assert _hub_name("RNN_1/RNN/MultiRNNCell/Cell0/LSTMCell/W_P_0") == (
        "bilm/RNN_1/RNN/MultiRNNCell/Cell0/rnn/lstm_cell/projection/kernel"
    )
    assert _hub_name("CNN_high_0/W_carry") == "bilm/CNN_high_0/W_carry"


@needs_generated
@pytest.mark.parametrize("run", RUNS)
def test_hub_module_gives_the_same_model(tmp_path, run):
    module = _write_hub_module(tmp_path / "module", run)
    assert detect_format(module) == "hub"
    result = convert(module, tmp_path / "out", options=RUN_OPTIONS)
    assert result.format == "hub"
    assert result.ignored == ["aggregation/scaling", "aggregation/weights", "bilm/RNN_0/Variable"]
    _assert_weights_equal(tmp_path / "out" / "weights.hdf5", GENERATED / run / "weights.hdf5")
    options = json.loads((tmp_path / "out" / "options.json").read_text(encoding="utf-8"))
    reference = json.loads((GENERATED / run / "options_inference.json").read_text(encoding="utf-8"))
    assert options == {"lstm": reference["lstm"], "char_cnn": reference["char_cnn"]}
    _assert_lm_outputs_match(tmp_path / "out", run)
    mix = json.loads((tmp_path / "out" / "hub_mix.json").read_text(encoding="utf-8"))
    assert mix["weights"] == [0.5, -1.0, 2.0] and mix["gamma"] == 1.25
    assert np.isclose(sum(mix["normalized_weights"]), 1.0)


@needs_generated
def test_hub_defaults_are_the_released_values(tmp_path):
    module = _write_hub_module(tmp_path / "module", "run_small_sampled")
    result = convert_hub_module(module, tmp_path / "out")
    options = json.loads((tmp_path / "out" / "options.json").read_text(encoding="utf-8"))
    assert options["lstm"] == {
        "dim": 16,
        "projection_dim": 8,
        "n_layers": 2,
        "cell_clip": 3,
        "proj_clip": 3,
        "use_skip_connections": True,
    }
    assert options["char_cnn"] == {
        "embedding": {"dim": 4},
        "filters": [[1, 8], [2, 8], [3, 16], [4, 32], [5, 64]],
        "n_highway": 1,
        "activation": "relu",
        "n_characters": 262,
        "max_characters_per_token": 50,
    }
    assert result.config.output_dim == 16


@needs_shared(BILMTF / "model")
def test_infer_options_from_shapes():
    shapes = {n: v.shape for n, v in _datasets(BILMTF / "model" / "lm_weights.hdf5").items()}
    options = infer_options(shapes, {"lstm": {"use_skip_connections": False}})
    reference = json.loads((BILMTF / "model" / "options.json").read_text(encoding="utf-8"))
    assert options == reference
    with pytest.raises(ConvertError, match="no variable for 'char_embed'"):
        infer_options({})


# --------------------------------------------------------------------------- output handling


@needs_generated
def test_refuses_non_empty_output_unless_overwrite(tmp_path):
    src = GENERATED / "run_small_sampled" / "checkpoint"
    out = tmp_path / "out"
    out.mkdir()
    convert(src, out)  # an empty directory is fine
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConvertError, match="not empty; pass overwrite=True"):
        convert(src, out)
    assert (out / "notes.txt").exists()
    convert(src, out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["options.json", "weights.hdf5"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConvertError, match="not a directory"):
        convert(src, tmp_path / "file", overwrite=True)


@needs_generated
def test_never_overwrites_its_own_source(tmp_path):
    src = _write_bilm_tf(tmp_path / "ckpt", _training_variables(), _run_options())
    with pytest.raises(ConvertError, match="checkpoint being converted"):
        convert(src, src, overwrite=True)
    with pytest.raises(ConvertError, match="checkpoint being converted"):
        convert(src / "model.ckpt-7", tmp_path, overwrite=True)
    assert (src / "model.ckpt-7.index").is_file()


# --------------------------------------------------------------------------- errors


def test_error_class():
    assert issubclass(ConvertError, ElmoError) and issubclass(ConvertError, ValueError)


@needs_generated
def test_missing_variable_is_named_and_nothing_is_written(tmp_path):
    variables = _training_variables()
    del variables["lm/CNN_high_0/W_carry"]
    src = _write_bilm_tf(tmp_path / "ckpt", variables, _run_options())
    with pytest.raises(
        ConvertError, match=r"no variable for 'CNN_high_0/W_carry' \(expected shape \(128, 128\)"
    ):
        convert(src, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


@needs_generated
def test_shape_mismatch_names_the_variable(tmp_path):
    options = _run_options()
    options["lstm"]["dim"] = 32
    src = _write_bilm_tf(tmp_path / "ckpt", _training_variables(), options)
    with pytest.raises(
        ConvertError,
        match=r"variable 'lm/RNN_0/rnn/multi_rnn_cell/cell_0/lstm_cell/kernel'.*"
        r"expected shape \(16, 128\)",
    ):
        convert(src, tmp_path / "out")


@needs_generated
def test_variables_the_options_do_not_describe(tmp_path):
    options = _run_options()
    options["char_cnn"]["n_highway"] = 0
    src = _write_bilm_tf(tmp_path / "ckpt", _training_variables(), options)
    with pytest.raises(
        ConvertError, match=r"'lm/CNN_high_0/W_carry' \(128, 128\).*not described by the options"
    ):
        convert(src, tmp_path / "out")


@needs_generated
def test_bilm_tf_without_options(tmp_path):
    src = _write_bilm_tf(tmp_path / "ckpt", _training_variables(), None)
    with pytest.raises(ConvertError, match=r"no options\.json"):
        convert_bilm_tf_checkpoint(src, tmp_path / "out")
    # Auto-detection infers them instead (a hub-style conversion), overridable as always.
    assert detect_format(src) == "hub"
    result = convert(src, tmp_path / "out", options=RUN_OPTIONS)
    assert result.format == "hub"
    _assert_weights_equal(
        tmp_path / "out" / "weights.hdf5", GENERATED / "run_small_fullsoftmax_nodropout" / "weights.hdf5"
    )


def test_not_an_elmo_checkpoint(tmp_path):
    prefix = write_checkpoint(tmp_path / "other.ckpt", {"dense/kernel": np.zeros((2, 2), np.float32)})
    with pytest.raises(ConvertError, match="no ELMo biLM variables"):
        convert_hub_module(prefix, tmp_path / "out")


@needs_generated
def test_two_models_in_one_checkpoint(tmp_path):
    variables = _training_variables()
    variables["other/CNN/W_cnn_0"] = variables["lm/CNN/W_cnn_0"]
    src = _write_bilm_tf(tmp_path / "ckpt", variables, _run_options())
    with pytest.raises(ConvertError, match="several scopes"):
        convert(src, tmp_path / "out")


@needs_generated
def test_bad_options(tmp_path):
    src = GENERATED / "run_small_sampled" / "checkpoint"
    with pytest.raises(ElmoError, match="activation"):
        convert(src, tmp_path / "out", options={"char_cnn": {"activation": "gelu"}})
    with pytest.raises(ConvertError, match="unknown format"):
        convert(src, tmp_path / "out", format="keras")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- CLI


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    configure(p)
    return p.parse_args(list(argv))


@needs_generated
def test_cli_handler(tmp_path, capsys):
    module = _write_hub_module(tmp_path / "module", "run_small_sampled")
    out = tmp_path / "out"
    assert run(_args(str(module), "-o", str(out), "--options", json.dumps(RUN_OPTIONS))) == 0
    assert "wrote" in capsys.readouterr().err
    _assert_lm_outputs_match(out, "run_small_sampled")
    with pytest.raises(ConvertError, match="not empty"):
        run(_args(str(module), "-o", str(out)))
    options_file = tmp_path / "opts.json"
    options_file.write_text(json.dumps({"char_cnn": {"max_characters_per_token": 10}}))
    args = _args(
        str(module), "--output", str(out), "--overwrite", "--format", "hub", "--options", str(options_file)
    )
    assert run(args) == 0
    assert json.loads((out / "options.json").read_text())["char_cnn"]["max_characters_per_token"] == 10
    with pytest.raises(ConvertError, match="--options: not valid JSON"):
        run(_args(str(module), "-o", str(out), "--overwrite", "--options", "{oops"))


@needs_generated
def test_cli_copies_of_fixture_checkpoint(tmp_path):
    """A copied checkpoint directory (read-only files) converts from its state file."""
    src = tmp_path / "ckpt"
    shutil.copytree(GENERATED / "run_small_sampled" / "checkpoint", src)
    assert run(_args(str(src), "-o", str(tmp_path / "out"), "--format", "bilm-tf")) == 0
    _assert_weights_equal(tmp_path / "out" / "weights.hdf5", GENERATED / "run_small_sampled" / "weights.hdf5")


@needs_generated
def test_two_spellings_of_one_weight(tmp_path):
    variables = _training_variables()
    variables["lm/RNN_0/rnn/lstm_cell/bias"] = variables["lm/RNN_0/rnn/multi_rnn_cell/cell_0/lstm_cell/bias"]
    src = _write_bilm_tf(tmp_path / "ckpt", variables, _run_options())
    with pytest.raises(ConvertError, match=r"both map to 'RNN_0/RNN/MultiRNNCell/Cell0/LSTMCell/B'"):
        convert(src, tmp_path / "out")


# --------------------------------------------------------------------------- hub layer mix


def _expected_elmo(model, sentences, weights, gamma):
    """gamma * sum_k softmax(weights)_k * layer_k of a model's own layers."""
    with torch.no_grad():
        out = model(sentences)
    s = torch.softmax(torch.tensor(weights, dtype=torch.float64), 0).float()
    word = torch.cat([out["word_emb"], out["word_emb"]], dim=-1)
    return gamma * (s[0] * word + s[1] * out["lstm_outputs1"] + s[2] * out["lstm_outputs2"])


@needs_generated
def test_a_converted_module_applies_its_layer_mix(tmp_path):
    """elmo.load of the converted directory, and of the module itself, mixes as the hub did."""
    module = _write_hub_module(tmp_path / "module", "run_small_sampled")
    convert(module, tmp_path / "out", options=RUN_OPTIONS)
    sentences = ["the cat sat", "hello"]
    for source in (tmp_path / "out", module):
        m = elmo.load(source, engine="plain")
        assert m.mix.weights.tolist() == [0.5, -1.0, 2.0] and m.mix.gamma.item() == 1.25
        with torch.no_grad():
            got = m(sentences)["elmo"]
        want = _expected_elmo(m, sentences, [0.5, -1.0, 2.0], 1.25)
        assert (got - want).abs().max() <= 1e-5
    # without the mix file: the equal mix the hub module starts from
    (tmp_path / "out" / "hub_mix.json").unlink()
    plain = elmo.load(tmp_path / "out")
    assert plain.mix.weights.tolist() == [0.0, 0.0, 0.0] and plain.mix.gamma.item() == 1.0


@needs_generated
def test_mix_variables_under_other_exporters_names(tmp_path):
    variables = {}
    for name, value in _datasets(GENERATED / "run_small_sampled" / "weights.hdf5").items():
        variables["lm/" + name] = value
    variables["lm/elmo_output_ELMo_W"] = np.array([1.0, 0.0, -1.0], np.float32)
    variables["lm/elmo_output_ELMo_gamma"] = np.array([0.5], np.float32)
    (tmp_path / "module" / "variables").mkdir(parents=True)
    (tmp_path / "module" / "tfhub_module.pb").write_bytes(b"\x08\x03")
    write_checkpoint(tmp_path / "module" / "variables" / "variables", variables)
    result = convert(tmp_path / "module", tmp_path / "out", options=RUN_OPTIONS)
    assert result.mix is not None and result.mix["gamma"] == 0.5
    assert result.mix["variables"] == {
        "weights": "lm/elmo_output_ELMo_W",
        "scaling": "lm/elmo_output_ELMo_gamma",
    }
    assert elmo.load(tmp_path / "out").mix.weights.tolist() == [1.0, 0.0, -1.0]

    # two mixes (a task model's input and output ones): reported, none applied
    variables["lm/elmo_input_ELMo_W"] = np.array([0.0, 1.0, 0.0], np.float32)
    (tmp_path / "two" / "variables").mkdir(parents=True)
    write_checkpoint(tmp_path / "two" / "variables" / "variables", variables)
    (tmp_path / "two" / "tfhub_module.pb").write_bytes(b"\x08\x03")
    result = convert(tmp_path / "two", tmp_path / "out2", options=RUN_OPTIONS)
    assert result.mix is not None and len(result.mix["candidates"]) == 2
    assert elmo.load(tmp_path / "out2").mix.weights.tolist() == [0.0, 0.0, 0.0]


@needs_generated
def test_options_a_checkpoint_cannot_show(tmp_path, capsys):
    module = _write_hub_module(tmp_path / "module", "run_small_sampled")
    result = convert(module, tmp_path / "out")
    assert result.assumed == [
        "lstm.cell_clip=3",
        "lstm.proj_clip=3",
        "lstm.use_skip_connections=true",
        'char_cnn.activation="relu"',
        "char_cnn.max_characters_per_token=50",
        "char_cnn.n_characters=262",
    ]
    flags = ["--activation", "tanh", "--max-characters-per-token", "10", "--no-skip-connections"]
    flags += ["--cell-clip", "3", "--proj-clip", "3"]
    assert run(_args(str(module), "-o", str(tmp_path / "flags"), *flags)) == 0
    err = capsys.readouterr().err
    assert "assumed char_cnn.n_characters=262" in err and "applied by elmo.load" in err
    options = json.loads((tmp_path / "flags" / "options.json").read_text())
    assert options["char_cnn"]["activation"] == "tanh" and options["lstm"]["use_skip_connections"] is False
    _assert_lm_outputs_match(tmp_path / "flags", "run_small_sampled")
