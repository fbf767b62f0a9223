"""The AllenNLP drop-in (``elmo.allennlp``): parity with AllenNLP's outputs, shapes, state, files."""

from __future__ import annotations

import errno
import io
import json

import h5py
import numpy as np
import pytest
import torch

import elmo
from conftest import (
    ALLENNLP,
    REFERENCE,
    fixture_batches,
    random_sentences,
    reference_sentences,
    run_in_threads,
    shared_path,
)
from elmo.allennlp import ConfigurationError, Elmo, ElmoEmbedder, batch_to_ids
from elmo.chars import batch_to_char_ids
from elmo.embedfile import OUTPUT_MARK
from elmo.errors import EmbedFileError
from elmo.loading import load_bilm

P = 16  # projection size of the tiny models (generated and AllenNLP's)
MIX = [0.2, 0.5, -0.3]


@pytest.fixture(autouse=True)
def _one_thread():
    """Run on one thread: the per-step matrices here are tiny, and on a busy machine
    multi-threaded BLAS spins against other processes (the parity test took 120 s on two
    threads beside another job, 5 s on one). Results agree to float32 rounding either way."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_elmo(tiny_model_files):
    def make(**kwargs) -> Elmo:
        kwargs.setdefault("dropout", 0.0)
        return Elmo(*tiny_model_files, kwargs.pop("num_output_representations", 1), **kwargs)

    return make


@pytest.fixture
def embedder(tiny_model_files) -> ElmoEmbedder:
    return ElmoEmbedder(*tiny_model_files)


def _reps(module: Elmo, batch: list[list[str]]) -> list[torch.Tensor]:
    with torch.no_grad():
        return module(batch_to_ids(batch))["elmo_representations"]


# --- parity with AllenNLP 2.10.1 -------------------------------------------------------


def test_elmo_reproduces_allennlp_module_outputs(small_model_dir):
    """Two fresh stateful modules (plain and layer-normed mix), 42 lines in batches of 4."""
    options, weights = small_model_dir / "options.json", small_model_dir / "weights.hdf5"
    modules = {
        name: Elmo(options, weights, 2, dropout=0.0, scalar_mix_parameters=MIX, do_layer_norm=norm)
        for name, norm in (("mix", False), ("mix_layernorm", True))
    }
    sentences = reference_sentences()
    worst = dict.fromkeys(modules, 0.0)
    reference = shared_path(REFERENCE / "small_seed1_gain1_elmo_module.hdf5")
    with h5py.File(reference, "r") as ref, torch.no_grad():
        for start in range(0, len(sentences), 4):
            batch = sentences[start : start + 4]
            ids = batch_to_ids(batch)
            for name, module in modules.items():
                out = module(ids)
                first, second = out["elmo_representations"]
                assert torch.equal(first, second)
                for j, tokens in enumerate(batch):
                    n = len(tokens)
                    got, want = first[j, :n].numpy(), ref[f"{name}/{start + j}"][()]
                    assert got.shape == want.shape
                    assert np.allclose(got, want, rtol=1e-5, atol=1e-5), (name, start + j)
                    worst[name] = max(worst[name], float(np.abs(got - want).max()))
                    assert np.array_equal(out["mask"][j, :n].numpy(), ref[f"mask/{start + j}"][()])
                    assert not out["mask"][j, n:].any() and not first[j, n:].any()
    # Measured: 4.8e-7 (plain) and 1.7e-6 (layer norm).
    assert max(worst.values()) <= 1e-5, worst


def test_embedder_reproduces_allennlp_lm_embeddings(allennlp_model_files):
    """Ten batches through one stateful embedder; the fixtures hold the top layer."""
    files = [h5py.File(shared_path(ALLENNLP / f"lm_embeddings_{k}.hdf5"), "r") for k in range(3)]
    embedder = ElmoEmbedder(*allennlp_model_files)
    worst = 0.0
    for i, batch in enumerate(fixture_batches(ALLENNLP / "sentences.json")):
        embeddings = embedder.embed_batch([s.split() for s in batch])
        for k, embedding in enumerate(embeddings):
            want = np.concatenate(list(files[k][str(i)][()]), axis=-1)
            assert embedding.shape == (3, len(batch[k].split()), 2 * P)
            worst = max(worst, float(np.abs(embedding[2] - want).max()))
    for f in files:
        f.close()
    assert worst <= 1e-5, worst  # measured 1.2e-6


# --- batch_to_ids ----------------------------------------------------------------------


def test_batch_to_ids_pads_with_zero_tokens():
    ids = batch_to_ids([["a", "bc"], ["<S>"], []])
    assert ids.shape == (3, 2, 50) and ids.dtype == torch.int64
    assert ids[0, 0, :4].tolist() == [259, 98, 260, 261]  # begin-word, 'a' + 1, end-word, padding
    assert ids[1, 0, :3].tolist() == [259, 257, 260]  # the literal <S> gets the marker's ids
    assert not ids[1, 1].any() and not ids[2].any()
    assert torch.equal(ids, batch_to_char_ids([["a", "bc"], ["<S>"], []]))
    assert batch_to_ids([]).shape == (0, 0, 50) and batch_to_ids([[]]).shape == (1, 0, 50)


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        ("the cat", "expected a list of token lists, found str"),
        (["the cat"], r"batch\[0\]: expected a list of token strings, found str"),
        ([["the", 3]], r"batch\[0\]\[1\]: expected a token string, found int"),
    ],
)
def test_batch_to_ids_rejects_untokenized_input(batch, message):
    with pytest.raises(TypeError, match=message):
        batch_to_ids(batch)


# --- Elmo: outputs ---------------------------------------------------------------------


def test_elmo_output_shapes_and_mask(tiny_elmo):
    module = tiny_elmo(num_output_representations=3)
    with torch.no_grad():
        out = module(batch_to_ids([["the", "cat", "sat"], ["hello"]]))
    assert set(out) == {"elmo_representations", "mask"}
    assert len(out["elmo_representations"]) == 3
    for rep in out["elmo_representations"]:
        assert rep.shape == (2, 3, 2 * P)
        assert not rep[1, 1:].any()
    assert out["mask"].dtype == torch.bool
    assert out["mask"].tolist() == [[True, True, True], [True, False, False]]
    assert module.get_output_dim() == 2 * P


def test_keep_sentence_boundaries(tiny_elmo):
    batch = [["the", "cat", "sat"], ["hello"], []]
    plain = _reps(tiny_elmo(stateful=False, do_layer_norm=True), batch)[0]
    module = tiny_elmo(stateful=False, do_layer_norm=True, keep_sentence_boundaries=True)
    with torch.no_grad():
        out = module(batch_to_ids(batch))
    rep, mask = out["elmo_representations"][0], out["mask"]
    assert rep.shape == (3, 5, 2 * P)
    assert mask.tolist() == [[True] * 5, [True, True, True, False, False], [True, True] + [False] * 3]
    # Position 0 is <S>, the words follow; everything outside the mask is zero.
    assert torch.equal(rep[0, 1:4], plain[0]) and torch.equal(rep[1, 1], plain[1, 0])
    assert not rep[~mask].any()


def test_extra_leading_dimensions_are_restored(tiny_elmo):
    module = tiny_elmo(stateful=False)
    ids = batch_to_ids([["a", "b", "c"], ["d"], ["e", "f"], ["g"], ["h", "i", "j"], []])
    with torch.no_grad():
        flat = module(ids)
        nested = module(ids.view(2, 3, 3, 50))
    assert nested["mask"].shape == (2, 3, 3)
    assert nested["elmo_representations"][0].shape == (2, 3, 3, 2 * P)
    assert torch.equal(nested["mask"].view(6, 3), flat["mask"])
    assert torch.equal(nested["elmo_representations"][0].view(6, 3, 2 * P), flat["elmo_representations"][0])


def test_mix_is_gamma_scaled_softmax_of_the_layers(tiny_elmo, tiny_model_files):
    batch = [["the", "cat", "sat"], ["a", "dog"]]
    module = tiny_elmo(stateful=False, scalar_mix_parameters=MIX)
    got = _reps(module, batch)[0]
    embedder = ElmoEmbedder(*tiny_model_files, stateful=False)
    layers, mask = embedder.batch_to_embeddings(batch)
    w = torch.softmax(torch.tensor(MIX), 0)
    want = (w.view(1, 3, 1, 1) * layers).sum(1) * mask.unsqueeze(-1)
    assert torch.allclose(got, want, atol=1e-6)


# --- Elmo: training behaviour ----------------------------------------------------------


def _trainable(module: torch.nn.Module) -> set[str]:
    return {name for name, p in module.named_parameters() if p.requires_grad}


def test_only_the_scalar_mixes_are_trainable_by_default(tiny_elmo):
    module = tiny_elmo(num_output_representations=2)
    names = ("scalar_parameters.0", "scalar_parameters.1", "scalar_parameters.2", "gamma")
    assert _trainable(module) == {f"scalar_mix_{k}.{p}" for k in range(2) for p in names}
    assert [p.item() for p in module.scalar_mix_0.scalar_parameters] == [0.0, 0.0, 0.0]
    assert module.scalar_mix_1.gamma.item() == 1.0
    out = module(batch_to_ids([["the", "cat"], ["a"]]))
    out["elmo_representations"][1].sum().backward()
    grads = torch.cat([p.grad for p in module.scalar_mix_1.scalar_parameters])
    assert grads.abs().sum() > 0 and module.scalar_mix_1.gamma.grad != 0
    assert all(p.grad is None for p in module.bilm.parameters())


def test_fixed_scalar_mix_parameters_are_not_trainable(tiny_elmo):
    module = tiny_elmo(num_output_representations=2, scalar_mix_parameters=MIX)
    assert _trainable(module) == set()
    assert torch.equal(torch.cat(list(module.scalar_mix_0.scalar_parameters)), torch.tensor(MIX))


def test_requires_grad_unfreezes_the_bilm(tiny_elmo):
    module = tiny_elmo(requires_grad=True, scalar_mix_parameters=MIX)
    bilm_names = {f"_elmo_lstm.bilm.{name}" for name, _ in module.bilm.named_parameters()}
    assert _trainable(module) == bilm_names and len(bilm_names) > 30
    module(batch_to_ids([["the", "cat"]]))["elmo_representations"][0].sum().backward()
    assert module.bilm.forward_layers[0].kernel.grad.abs().sum() > 0
    assert module.bilm.token_encoder.proj_w.grad.abs().sum() > 0


def test_dropout_is_active_in_train_mode_only(tiny_elmo):
    batch = [["the", "cat", "sat", "on", "the", "mat"]]
    module = tiny_elmo(stateful=False, dropout=0.5)
    assert module.training  # a fresh module is in train mode, as any torch module
    module.eval()
    clean = _reps(module, batch)[0]
    assert torch.equal(clean, _reps(module, batch)[0])
    module.train()
    torch.manual_seed(0)
    dropped = _reps(module, batch)[0]
    kept = dropped != 0
    assert 0.3 < kept.float().mean() < 0.7
    assert torch.allclose(dropped[kept], 2 * clean[kept])  # survivors scaled by 1 / (1 - p)


# --- Elmo: state -----------------------------------------------------------------------


def test_elmo_is_stateful_by_default(tiny_elmo):
    batch = [["the", "cat", "sat"], ["a", "dog"]]
    module = tiny_elmo()
    first = _reps(module, batch)[0]
    second = _reps(module, batch)[0]
    assert (first - second).abs().max() > 1e-3
    module.reset_states()
    assert torch.equal(_reps(module, batch)[0], first)
    assert torch.equal(_reps(tiny_elmo(), batch)[0], first)


def test_stateless_elmo_is_batch_independent(tiny_elmo):
    module = tiny_elmo(stateful=False)
    alone = _reps(module, [["a", "dog"]])[0]
    _reps(module, [["something", "else", "first"]])
    batched = _reps(module, [["the", "cat", "sat", "down"], ["a", "dog"]])[0]
    assert torch.allclose(batched[1, :2], alone[0], atol=1e-6)
    assert torch.equal(_reps(module, [["a", "dog"]])[0], alone)


def test_module_can_be_a_loaded_bilm(tiny_elmo, tiny_model_files):
    bilm = load_bilm(*tiny_model_files)
    shared = Elmo(None, None, 1, dropout=0.0, module=bilm)
    assert shared.bilm is bilm
    batch = [["the", "cat"], ["a"]]
    assert torch.equal(_reps(shared, batch)[0], _reps(tiny_elmo(), batch)[0])


class _ConstantBiLM(torch.nn.Module):
    """A module with AllenNLP's contract: layer k is k + 1 everywhere, markers included."""

    num_layers = 3

    def forward(self, inputs, word_inputs=None):
        mask = torch.nn.functional.pad((inputs > 0).any(-1), (0, 2))
        lengths = mask.sum(1)
        mask[torch.arange(len(lengths)), lengths] = True
        mask[torch.arange(len(lengths)), lengths + 1] = True
        ones = mask.unsqueeze(-1).float().expand(*mask.shape, 4)
        return {"activations": [ones * (k + 1) for k in range(3)], "mask": mask}


def test_module_can_follow_allennlps_contract():
    module = Elmo(None, None, 1, dropout=0.0, module=_ConstantBiLM())
    out = module(batch_to_ids([["a", "b"], ["c"]]))
    rep = out["elmo_representations"][0]
    assert out["mask"].tolist() == [[True, True], [True, False]]
    assert torch.allclose(rep[out["mask"]], torch.full((3, 4), 2.0))  # equal weights: mean of 1, 2, 3
    assert not rep[1, 1].any()


def test_vocab_to_cache_takes_word_ids(tiny_elmo):
    vocab = ["@@PADDING@@", "the", "cat", "sat", "a"]
    module = tiny_elmo(stateful=False, vocab_to_cache=vocab)
    batch = [["the", "cat", "sat"], ["a"]]
    words = torch.tensor([[1, 2, 3], [4, 0, 0]])
    by_chars = module(batch_to_ids(batch))
    by_words = module(None, words)
    assert torch.equal(by_words["mask"], by_chars["mask"])
    assert torch.equal(by_words["elmo_representations"][0], by_chars["elmo_representations"][0])
    with pytest.warns(UserWarning, match="outside vocab_to_cache"):
        fallback = module(batch_to_ids(batch), torch.tensor([[1, 2, 9], [4, 0, 0]]))
    assert torch.equal(fallback["elmo_representations"][0], by_chars["elmo_representations"][0])
    with pytest.raises(ValueError, match="index 9 is outside vocab_to_cache"):
        module(None, torch.tensor([[9]]))


def test_word_inputs_without_a_cache_are_ignored_with_a_warning(tiny_elmo):
    module = tiny_elmo(stateful=False)
    ids = batch_to_ids([["the", "cat"]])
    with pytest.warns(UserWarning, match="no vocab_to_cache"):
        out = module(ids, torch.tensor([[1, 2]]))
    assert torch.equal(out["elmo_representations"][0], module(ids)["elmo_representations"][0])


# --- Elmo: bad calls -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("inputs", "error", "message"),
    [
        ([[[1] * 50]], TypeError, "inputs: expected a torch.Tensor .* found list"),
        (torch.ones(1, 2, 50), TypeError, "expected an integer tensor .* found dtype torch.float32"),
        (torch.ones(1, 2, 50, dtype=torch.bool), TypeError, "found dtype torch.bool"),
        (torch.ones(2, 50, dtype=torch.long), ValueError, r"expected shape \(batch_size, timesteps, 50\)"),
        (torch.ones(1, 2, 40, dtype=torch.long), ValueError, "expected 50 character ids .* found 40"),
        (torch.full((1, 2, 50), 300), ValueError, "must be in 0..261.* from 300 to 300"),
        (torch.tensor([[[0] * 50, [5] * 50]]), ValueError, "padding tokens .* must come after"),
    ],
)
def test_bad_inputs_are_named(tiny_elmo, inputs, error, message):
    with pytest.raises(error, match=message):
        tiny_elmo()(inputs)


def test_bad_construction_is_named(tiny_model_files):
    with pytest.raises(ValueError, match=r"scalar_mix_parameters: expected 3 values .* found 2"):
        Elmo(*tiny_model_files, 1, scalar_mix_parameters=[0.0, 1.0])
    with pytest.raises(ValueError, match="not both"):
        Elmo(*tiny_model_files, 1, module=_ConstantBiLM())
    with pytest.raises(TypeError, match="options_file and weight_file are required"):
        Elmo(None, None, 1)
    with pytest.raises(TypeError, match="num_layers"):
        Elmo(None, None, 1, module=torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="reset_states"):
        Elmo(None, None, 1, module=_ConstantBiLM(), stateful=False)


# --- ElmoEmbedder ----------------------------------------------------------------------


def test_embed_sentence_and_batch_shapes(tiny_model_files):
    embedder = ElmoEmbedder(*tiny_model_files, stateful=False)
    one = embedder.embed_sentence(["the", "cat", "sat"])
    assert one.shape == (3, 3, 2 * P) and one.dtype == np.float32
    assert np.array_equal(one[0, :, :P], one[0, :, P:])  # layer 0: the token representation twice
    batch = embedder.embed_batch([["a", "dog"], [], ["the", "cat", "sat"]])
    assert [e.shape for e in batch] == [(3, 2, 2 * P), (3, 0, 2 * P), (3, 3, 2 * P)]
    assert np.allclose(batch[2], one, atol=1e-6)  # stateless: the batch does not matter
    assert embedder.embed_batch([]) == []
    assert embedder.embed_batch([[]])[0].shape == (3, 0, 2 * P)


@pytest.mark.parametrize("engine", ["fast", "plain"])
def test_embed_batch_is_batch_to_embeddings_without_padding(tiny_model_files, engine):
    """``embed_batch`` (unpadded on the fast engine) gives exactly what ``batch_to_embeddings``
    (padded) holds at the real positions, stateful calls included; each array its own copy."""
    padded = ElmoEmbedder(*tiny_model_files, engine=engine)
    unpadded = ElmoEmbedder(*tiny_model_files, engine=engine)
    for batch in ([["the", "cat", "sat"], [], ["a"] * 30], [["dog"], ["x" * 60, "y"]]):
        tensor, mask = padded.batch_to_embeddings(batch)
        got = unpadded.embed_batch(batch)
        for i, array in enumerate(got):
            n = int(mask[i].sum())
            assert array.flags.owndata and array.flags.c_contiguous
            assert np.array_equal(array, tensor[i, :, :n].numpy())


def test_embedder_state_and_reset(embedder):
    batch = [["the", "cat", "sat"], ["a", "dog"]]
    first = embedder.embed_batch(batch)
    second = embedder.embed_batch(batch)
    assert np.abs(first[0] - second[0]).max() > 1e-3
    embedder.reset_states()
    assert all(np.array_equal(a, b) for a, b in zip(embedder.embed_batch(batch), first))


def test_stateless_embedder_and_elmo_serve_many_threads(tiny_model_files):
    """One ElmoEmbedder and one Elmo (stateless, small token cache) called from 8 threads
    with mixed batches give exactly what the same calls give in sequence, then alone too."""
    sentences = random_sentences(7, 60)
    batches = [sentences[k : k + 1 + k % 5] for k in range(0, 48, 3)]
    embedder = ElmoEmbedder(*tiny_model_files, stateful=False, cache_size=8)
    module = Elmo(*tiny_model_files, 1, dropout=0.0, stateful=False, cache_size=8)
    want = [embedder.embed_batch(b) for b in batches]
    want_elmo = [_reps(module, b)[0] for b in batches]
    for _ in range(2):
        got = run_in_threads([lambda b=b: embedder.embed_batch(b) for b in batches])
        for arrays, expected in zip(got, want, strict=True):
            assert all(np.array_equal(a, b) for a, b in zip(arrays, expected, strict=True))
        got_elmo = run_in_threads([lambda b=b: _reps(module, b)[0] for b in batches])
        assert all(torch.equal(a, b) for a, b in zip(got_elmo, want_elmo, strict=True))
    for b, expected in zip(batches, want):
        assert all(np.array_equal(x, y) for x, y in zip(embedder.embed_batch(b), expected))


def test_stateful_embedder_batches_from_threads_run_in_sequence(tiny_model_files):
    """Stateful (as AllenNLP): batches from 8 threads run one at a time, each continuing the
    carried state; together they give the outputs of as many batches in sequence."""
    batch = [["the", "cat", "sat"], ["a", "dog"]]
    calls = 16
    sequential = ElmoEmbedder(*tiny_model_files)
    want = [sequential.embed_batch(batch) for _ in range(calls)]
    shared = ElmoEmbedder(*tiny_model_files, cache_size=4)
    got = run_in_threads([lambda: shared.embed_batch(batch)] * calls)
    unmatched = list(range(calls))
    for arrays in got:
        step = next(k for k in unmatched if all(map(np.array_equal, arrays, want[k])))
        unmatched.remove(step)  # StopIteration above: an output no sequential batch gives
    assert not unmatched
    assert all(map(np.array_equal, shared.embed_batch(batch), sequential.embed_batch(batch)))


def test_embed_sentences_batches_lazily(tiny_model_files, embedder):
    sentences = [["a", "b"], ["c"], ["d", "e", "f"], ["g"], ["h"]]
    got = embedder.embed_sentences(iter(sentences), batch_size=2)
    assert not isinstance(got, list)
    reference = ElmoEmbedder(*tiny_model_files)
    want = [e for start in (0, 2, 4) for e in reference.embed_batch(sentences[start : start + 2])]
    assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))


def test_embedder_without_files_uses_the_original_model(tiny_model_files, tmp_path, monkeypatch):
    """As AllenNLP's ElmoEmbedder(): the released original model, fetched by name."""
    model_dir = tmp_path / "original"
    model_dir.mkdir()
    (model_dir / "options.json").symlink_to(tiny_model_files[0])
    (model_dir / "weights.hdf5").symlink_to(tiny_model_files[1])
    asked = []

    def fake_download(name, progress=None):
        asked.append(name)
        return model_dir

    monkeypatch.setattr("elmo.resolve.download_model", fake_download)
    embedder = ElmoEmbedder(stateful=False)
    assert asked == ["original"]
    want = ElmoEmbedder(*tiny_model_files, stateful=False).embed_sentence(["a", "b"])
    assert np.array_equal(embedder.embed_sentence(["a", "b"]), want)


def test_embedder_bad_calls(tiny_model_files, embedder):
    with pytest.raises(TypeError, match="needs options_file and weight_file together"):
        ElmoEmbedder(tiny_model_files[0])
    with pytest.raises(TypeError, match="sentence: expected a list of token strings, found a str"):
        embedder.embed_sentence("the cat")
    with pytest.raises(TypeError, match=r"batch\[0\]: expected a list of token strings"):
        embedder.embed_batch(["the cat"])
    with pytest.raises(ValueError, match="batch_size: expected a positive int"):
        list(embedder.embed_sentences([["a"]], batch_size=0))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_cuda_device_without_cuda_is_named(tiny_model_files):
    with pytest.raises(ValueError, match="cuda_device=0: CUDA is not available"):
        ElmoEmbedder(*tiny_model_files, cuda_device=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_device_matches_cpu(tiny_model_files):
    batch = [["the", "cat", "sat"], ["a"]]
    cpu = ElmoEmbedder(*tiny_model_files).embed_batch(batch)
    gpu_embedder = ElmoEmbedder(*tiny_model_files, cuda_device=0)
    assert gpu_embedder.elmo_bilm.bilm.token_encoder.proj_w.is_cuda
    gpu = gpu_embedder.embed_batch(batch)
    assert all(np.allclose(a, b, atol=1e-5) for a, b in zip(cpu, gpu))
    module = Elmo(*tiny_model_files, 1, dropout=0.0).cuda()
    out = module(batch_to_ids(batch).cuda())
    assert out["elmo_representations"][0].is_cuda


# --- embed_file ------------------------------------------------------------------------

LINES = ["the cat sat", "a  dog", "the cat sat", "hello"]


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "input.txt"
    path.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    return path


def _read(path) -> dict:
    with h5py.File(path, "r") as f:
        return {key: f[key][()] for key in f}


def test_embed_file_formats(tiny_model_files, text_file, tmp_path):
    outputs = {}
    for fmt in ("all", "top", "average"):
        ElmoEmbedder(*tiny_model_files).embed_file(text_file, tmp_path / f"{fmt}.hdf5", fmt, batch_size=3)
        outputs[fmt] = _read(tmp_path / f"{fmt}.hdf5")
    want = ElmoEmbedder(*tiny_model_files)
    batches = [[s.split() for s in LINES[start : start + 3]] for start in (0, 3)]
    expected = [e for batch in batches for e in want.embed_batch(batch)]
    for i, embedding in enumerate(expected):
        assert np.array_equal(outputs["all"][str(i)], embedding)
        assert np.array_equal(outputs["top"][str(i)], embedding[2])
        assert np.allclose(outputs["average"][str(i)], embedding.mean(0), atol=1e-6)
    assert outputs["all"]["1"].shape == (3, 2, 2 * P) and outputs["top"]["1"].dtype == np.float32
    index = json.loads(outputs["all"]["sentence_to_index"][0])
    assert index == {"the cat sat": "2", "a  dog": "1", "hello": "3"}  # a repeated line keeps the last


def test_embed_file_keys_and_forgetting(embedder, text_file, tmp_path):
    embedder.embed_file(text_file, tmp_path / "forget.hdf5", forget_sentences=True)
    assert set(_read(tmp_path / "forget.hdf5")) == {"0", "1", "2", "3"}
    unique = tmp_path / "unique.txt"
    unique.write_text("the cat\nsat on / mat\n", encoding="utf-8")
    with open(unique, encoding="utf-8") as f:
        embedder.embed_file(f, tmp_path / "keys.hdf5", "top", use_sentence_keys=True)
        assert not f.closed
    with h5py.File(tmp_path / "keys.hdf5", "r") as out:
        assert out["the cat"].shape == (2, 2 * P) and out["sat on / mat"].shape == (4, 2 * P)
        assert "sentence_to_index" not in out  # AllenNLP 0.9 writes none with sentence keys


def test_embed_file_refuses_blank_lines_as_allennlp(embedder, tmp_path):
    """AllenNLP 0.9 refuses a file with empty lines, naming their indexes, before embedding."""
    source = tmp_path / "blank.txt"
    source.write_text("one two\n\n   \nthree\n", encoding="utf-8")
    calls = []
    embedder.embed_batch = lambda batch: calls.append(batch) or []
    with pytest.raises(ConfigurationError, match=r"empty lines at indexes \[1, 2\]"):
        embedder.embed_file(source, tmp_path / "out.hdf5")
    with open(source, encoding="utf-8") as f, pytest.raises(ConfigurationError, match="empty lines"):
        embedder.embed_file(f, tmp_path / "out.hdf5")
    assert calls == [] and not (tmp_path / "out.hdf5").exists()
    # a stream that cannot be read twice: refused at the first batch with a blank line
    del embedder.embed_batch
    stream = io.StringIO("one\ntwo\n\n")
    stream.seekable = lambda: False  # type: ignore[method-assign]
    with pytest.raises(ConfigurationError, match=r"indexes \[2\]"):
        embedder.embed_file(stream, tmp_path / "out.hdf5", batch_size=2)
    assert not (tmp_path / "out.hdf5").exists()


def test_embed_file_failure_leaves_no_output(embedder, text_file, tmp_path):
    target = tmp_path / "out.hdf5"
    with pytest.raises(
        ConfigurationError, match="line 3: the sentence 'the cat sat' is already in the output"
    ):
        embedder.embed_file(text_file, target, use_sentence_keys=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.txt"]

    target.write_bytes(b"previous")
    calls = []

    def fail_on_second(batch):
        calls.append(batch)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return ElmoEmbedder.embed_batch(embedder, batch)

    embedder.embed_batch = fail_on_second
    with pytest.raises(KeyboardInterrupt):
        embedder.embed_file(text_file, target, batch_size=2)
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.txt", "out.hdf5"]


def test_embed_file_bad_arguments(embedder, text_file, tmp_path):
    with pytest.raises(ValueError, match="output_format: expected one of 'all', 'top', 'average', found"):
        embedder.embed_file(text_file, tmp_path / "out.hdf5", "mean")
    with pytest.raises(ConfigurationError, match="empty lines"):
        source = tmp_path / "blank.txt"
        source.write_text("a\n\n", encoding="utf-8")
        embedder.embed_file(source, tmp_path / "out.hdf5", use_sentence_keys=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blank.txt", "input.txt"]


def test_embed_file_goes_through_the_one_writer(embedder, text_file, tmp_path):
    """The same writer as ``elmo embed`` (its mark on the output); no HDF5 code here."""
    from pathlib import Path

    import elmo.allennlp

    embedder.embed_file(text_file, tmp_path / "out.hdf5", "top")
    with h5py.File(tmp_path / "out.hdf5", "r") as out:
        assert OUTPUT_MARK in out.attrs
    assert "h5py" not in Path(elmo.allennlp.__file__).read_text(encoding="utf-8")


def test_embed_file_continues_the_carried_state(tiny_model_files, text_file, tmp_path):
    """AllenNLP's embed_file does not reset the state: it continues from earlier calls."""
    first = ElmoEmbedder(*tiny_model_files)
    first.embed_batch([["warm", "up"], ["two", "rows"]])
    first.embed_file(text_file, tmp_path / "out.hdf5", batch_size=2)
    second = ElmoEmbedder(*tiny_model_files)
    second.embed_batch([["warm", "up"], ["two", "rows"]])
    want = [e for start in (0, 2) for e in second.embed_batch([s.split() for s in LINES[start : start + 2]])]
    got = _read(tmp_path / "out.hdf5")
    for i, embedding in enumerate(want):
        assert np.array_equal(got[str(i)], embedding)


def test_embed_file_drops_a_byte_order_mark(embedder, tmp_path):
    source = tmp_path / "bom.txt"
    source.write_bytes(b"\xef\xbb\xbfthe cat\nsat\n")
    embedder.embed_file(source, tmp_path / "out.hdf5", "top", use_sentence_keys=True)
    assert sorted(_read(tmp_path / "out.hdf5")) == ["sat", "the cat"]


def test_embed_file_disk_full_leaves_nothing(embedder, text_file, tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(h5py.Group, "create_dataset", full)
    with pytest.raises(
        EmbedFileError, match=r"out.hdf5.partial/shard-000000.hdf5: No space left on device \(ENOSPC\)$"
    ):
        embedder.embed_file(text_file, tmp_path / "out.hdf5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.txt"]


def test_engines_agree_and_fast_runs_without_gradients(tiny_model_files):
    sentences = [["The", "cat", "sat"], ["Hello"], []]
    ids = batch_to_ids(sentences)
    torch.manual_seed(0)
    fast = Elmo(*tiny_model_files, 2, dropout=0.0, stateful=False)
    torch.manual_seed(0)
    plain = Elmo(*tiny_model_files, 2, dropout=0.0, stateful=False, engine="plain")
    got, want = fast(ids), plain(ids)
    assert fast._runner.fast is not None and fast._runner.fast.tokens_seen > 0
    assert plain._runner.fast is None
    for a, b in zip(got["elmo_representations"], want["elmo_representations"], strict=True):
        assert (a - b).abs().max() <= 1e-5
    # Gradients reach the mixes through the fast engine's (constant) layers.
    got["elmo_representations"][0].sum().backward()
    assert all(p.grad is not None for p in fast.scalar_mix_0.scalar_parameters)
    # Fine-tuning runs the plain model so that gradients reach the biLM.
    tuned = Elmo(*tiny_model_files, 1, dropout=0.0, requires_grad=True, stateful=False)
    seen = tuned._runner.fast.tokens_seen
    tuned(ids)["elmo_representations"][0].sum().backward()
    assert tuned._runner.fast.tokens_seen == seen
    assert any(p.grad is not None for p in tuned.bilm.parameters())
    with pytest.raises(ValueError, match="dtype: expected one of"):
        Elmo(*tiny_model_files, 1, dtype="float16")
    embedder = ElmoEmbedder(*tiny_model_files, stateful=False, engine="plain")
    assert embedder._runner.fast is None


@pytest.mark.parametrize("engine", ["auto", "plain"])
def test_all_sentences_empty(tiny_model_files, engine):
    """AllenNLP returns (B, 0, dim) representations and a (B, 0) mask for [[]]; so does every
    interface here."""
    ids = batch_to_ids([[], []])
    assert ids.shape == (2, 0, 50)
    module = Elmo(*tiny_model_files, 2, engine=engine)
    out = module(ids)
    assert [r.shape for r in out["elmo_representations"]] == [(2, 0, 32)] * 2
    assert out["mask"].shape == (2, 0) and out["mask"].dtype == torch.bool
    out = module(ids.unsqueeze(0))  # with an extra leading dimension too
    assert out["elmo_representations"][0].shape == (1, 2, 0, 32) and out["mask"].shape == (1, 2, 0)
    hub = elmo.load(*tiny_model_files, engine=engine)
    for got in (hub(tokens=[[]]), hub([""]), hub(["   "])):
        assert got["elmo"].shape == (1, 0, 32) and got["mask"].shape == (1, 0)
        assert got["default"].shape == (1, 32) and not got["default"].any()
    embedder = ElmoEmbedder(*tiny_model_files, engine=engine)
    assert [a.shape for a in embedder.embed_batch([[]])] == [(3, 0, 32)]


def test_configuration_errors_are_catchable_as_in_allennlp(allennlp_model_files):
    """The cases AllenNLP raises ConfigurationError for raise elmo.allennlp.ConfigurationError
    (also a ValueError); a missing file is a FileNotFoundError."""
    options, weights = allennlp_model_files
    with pytest.raises(ConfigurationError, match="pass either module= or options_file"):
        Elmo(options, weights, 1, module=elmo.load_bilm(options, weights))
    with pytest.raises(ConfigurationError, match="scalar_mix_parameters: expected 3 values"):
        Elmo(options, weights, 1, scalar_mix_parameters=[0.0, 1.0])
    assert issubclass(ConfigurationError, ValueError)
    with pytest.raises(FileNotFoundError, match="options file not found"):
        Elmo(weights.parent / "missing.json", weights, 1)
    with pytest.raises(FileNotFoundError, match="weight file not found"):
        ElmoEmbedder(options, weights.parent / "missing.hdf5")
