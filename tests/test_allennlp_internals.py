"""The AllenNLP internals that code written for AllenNLP reaches: ``_ElmoCharacterEncoder``,
``_ElmoBiLm`` (its carried state, ``create_cached_cnn_embeddings``), ``Elmo._elmo_lstm`` and its
scalar mixes, ``ElmoEmbedder.elmo_bilm``; checked against AllenNLP's stored outputs where they exist."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from conftest import ALLENNLP, fixture_batches, needs_shared
from elmo.allennlp import (
    Elmo,
    ElmoEmbedder,
    ScalarMix,
    _ElmoBiLm,
    _ElmoCharacterEncoder,
    batch_to_ids,
)
from elmo.loading import load_bilm
from elmo.mix import ScalarMix as PackageScalarMix

P = 16  # projection size of the tiny fixture model
CELLS = 64  # LSTM cells of the tiny fixture model
TOLERANCE = 1e-5  # max abs difference from AllenNLP's stored outputs
MIX = [0.2, 0.5, -0.3]
BATCH = [["The", "sentence", "."], ["ELMo", "helps", "disambiguate", "ELMo", "from", "Elmo", "."], []]

# AllenNLP's tiny model and its stored outputs: every test here compares with them or uses them.
pytestmark = needs_shared(ALLENNLP)


@pytest.fixture(autouse=True)
def _one_thread():
    """One thread: the tiny model's products are too small to gain from more, and on a busy
    machine threads spin against other processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def bilm(allennlp_model_files) -> _ElmoBiLm:
    return _ElmoBiLm(*allennlp_model_files)


def _vocab() -> list[str]:
    return (ALLENNLP / "vocab_test.txt").read_text(encoding="utf-8").split("\n")


def _token_embeddings() -> np.ndarray:
    with h5py.File(ALLENNLP / "elmo_token_embeddings.hdf5", "r") as f:
        return f["embedding"][()]


def _without_boundaries(x: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """Each row's positions 1..n: its tokens, without <S> and </S>."""
    return [x[i, 1 : int(mask[i].sum()) - 1] for i in range(x.shape[0])]


def _max_diff(a, b) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max())


# --- _ElmoCharacterEncoder -------------------------------------------------------------


def test_character_encoder_reproduces_allennlp_token_embeddings(allennlp_model_files):
    """The 458 test words, 50 to a sentence (the last one shorter), against AllenNLP's output."""
    words = _vocab()
    encoder = _ElmoCharacterEncoder(*allennlp_model_files)
    assert encoder.get_output_dim() == P
    ids = batch_to_ids([words[start : start + 50] for start in range(0, len(words), 50)])
    with torch.no_grad():
        out = encoder(ids)
    embedding, mask = out["token_embedding"], out["mask"]
    assert embedding.shape == (10, 52, P) and mask.shape == (10, 52) and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == [52] * 9 + [len(words) - 450 + 2]
    assert not embedding[~mask].any()  # zero outside the mask (AllenNLP leaves values there)
    got = torch.cat(_without_boundaries(embedding, mask)).numpy()
    worst = _max_diff(got, _token_embeddings())
    assert worst <= TOLERANCE, worst  # measured 7.2e-7


def test_character_encoder_adds_the_sentence_markers(allennlp_model_files):
    encoder = _ElmoCharacterEncoder(*allennlp_model_files)
    with torch.no_grad():
        for position, token in ((0, "<S>"), (2, "</S>")):
            embedding = encoder(batch_to_ids([[token]]))["token_embedding"]
            assert embedding.shape == (1, 3, P)
            assert torch.equal(embedding[0, position], embedding[0, 1])
    with pytest.raises(
        ValueError, match=r"expected shape \(batch_size, timesteps, 50\), found \(1, 1, 1, 50\)"
    ):
        encoder(batch_to_ids([["a"]]).unsqueeze(0))


# --- _ElmoBiLm -------------------------------------------------------------------------


def test_bilm_reproduces_allennlp_stateful_activations(bilm):
    """Ten batches through one stateful _ElmoBiLm; the fixtures hold the top layer."""
    files = [h5py.File(ALLENNLP / f"lm_embeddings_{k}.hdf5", "r") for k in range(3)]
    batches = [[s.split() for s in batch] for batch in fixture_batches(ALLENNLP / "sentences.json")]
    worst = 0.0
    with torch.no_grad():
        for i, batch in enumerate(batches):
            out = bilm(batch_to_ids(batch))
            activations, mask = out["activations"], out["mask"]
            if i == 0:
                first_top = activations[2]
            steps = max(map(len, batch)) + 2
            assert len(activations) == bilm.num_layers == 3
            assert all(a.shape == (3, steps, 2 * P) for a in activations)
            assert mask.dtype == torch.bool and mask.sum(1).tolist() == [len(s) + 2 for s in batch]
            assert torch.equal(activations[0][..., :P], activations[0][..., P:])  # token layer twice
            assert not any(a[~mask].any() for a in activations)
            for k, top in enumerate(_without_boundaries(activations[2], mask)):
                want = np.concatenate(list(files[k][str(i)][()]), axis=-1)
                worst = max(worst, _max_diff(top, want))
        bilm._elmo_lstm.reset_states()
        again = bilm(batch_to_ids(batches[0]))["activations"][2]
    for f in files:
        f.close()
    assert worst <= TOLERANCE, worst  # measured 9.5e-7
    assert torch.equal(again, first_top)  # reset: the first batch again


def test_bilm_interface(bilm, allennlp_model_files):
    assert bilm.num_layers == 3 and bilm.get_output_dim() == 2 * P
    assert isinstance(bilm._token_embedder, _ElmoCharacterEncoder)
    # The character encoder is a view of the biLM's own weights, listed once.
    assert bilm._token_embedder.token_encoder is bilm.bilm.token_encoder
    assert not any(name.startswith("_token_embedder") for name in bilm.state_dict())
    assert {n for n, _ in bilm.named_parameters()} == {f"bilm.{n}" for n, _ in bilm.bilm.named_parameters()}
    assert not any(p.requires_grad for p in bilm.parameters())
    ids = batch_to_ids(BATCH)
    with torch.no_grad():
        tokens = bilm._token_embedder(ids)
        out = bilm(ids)
    assert torch.equal(tokens["mask"], out["mask"])
    assert (out["activations"][0][..., :P] - tokens["token_embedding"]).abs().max() <= TOLERANCE
    # The runner decides: the fast engine unless gradients must reach the biLM.
    assert bilm._runner.uses_fast_engine()
    tuned = _ElmoBiLm(*allennlp_model_files, requires_grad=True)
    assert all(p.requires_grad for p in tuned.parameters()) and not tuned._runner.uses_fast_engine()
    with torch.no_grad():
        assert tuned._runner.uses_fast_engine()
    with pytest.raises(ValueError, match=r"expected shape \(batch_size, timesteps, 50\)"):
        bilm(ids.unsqueeze(0))


def test_carried_state_in_allennlps_layout(bilm, allennlp_model_files):
    lstm = bilm._elmo_lstm
    assert lstm._states is None and lstm.stateful
    first_ids, next_ids = batch_to_ids(BATCH), batch_to_ids([["a", "b"], ["c"], ["d", "e", "f"]])
    with torch.no_grad():
        bilm(first_ids)
        h, c = lstm._states
        assert h.shape == (2, 3, 2 * P) and c.shape == (2, 3, 2 * CELLS)
        saved = (h.clone(), c.clone())
        following = bilm(next_ids)["activations"][2]
        # Setting the state back (flair moves it between devices this way) continues from it.
        lstm._states = tuple(s.to("cpu") for s in saved)
        assert torch.equal(bilm(next_ids)["activations"][2], following)
        # Resetting some rows: those start from zero, the others carry on.
        lstm._states = saved
        lstm.reset_states(torch.tensor([True, False, False]))
        assert not lstm._states[0][:, 0].any() and torch.equal(lstm._states[0][:, 1:], saved[0][:, 1:])
        partly = bilm(next_ids)["activations"][2]
        fresh = _ElmoBiLm(*allennlp_model_files)(next_ids)["activations"][2]
        assert torch.equal(partly[0], fresh[0]) and torch.equal(partly[1:], following[1:])
        lstm._states = None
        assert torch.equal(bilm(next_ids)["activations"][2], fresh)
        lstm.stateful = False
        assert torch.equal(bilm(next_ids)["activations"][2], fresh)
    with pytest.raises(ValueError, match=r"expected a mask of shape \(3,\)"):
        lstm.reset_states(torch.tensor([True]))
    with pytest.raises(ValueError, match=r"_states: expected h of shape \(layers=2, batch, 32\)"):
        lstm._states = (torch.zeros(1, 3, 2 * P), torch.zeros(1, 3, 2 * CELLS))


def test_create_cached_cnn_embeddings_reproduces_allennlp(bilm):
    words = _vocab()
    assert bilm._word_embedding is None
    bilm.create_cached_cnn_embeddings(words)
    table = bilm._word_embedding.weight
    assert table.shape == (len(words), P) and not table.requires_grad
    expected = _token_embeddings()
    worst = _max_diff(table.numpy(), expected)
    assert worst <= TOLERANCE, worst  # measured 7.2e-7
    assert _max_diff(bilm._bos_embedding.numpy(), expected[words.index("<S>")]) <= TOLERANCE
    assert _max_diff(bilm._eos_embedding.numpy(), expected[words.index("</S>")]) <= TOLERANCE


def test_word_inputs_index_the_cached_vocabulary(allennlp_model_files):
    vocab = ["@@PADDING@@", "@@UNKNOWN@@", "This", "is", "a", "sentence", "Here", "'s", "one"]
    batch = [["This", "is", "a", "sentence"], ["Here", "'s", "one"], ["a"]]
    ids, words = batch_to_ids(batch), torch.tensor([[2, 3, 4, 5], [6, 7, 8, 0], [4, 0, 0, 0]])
    with torch.no_grad():
        by_chars = _ElmoBiLm(*allennlp_model_files)(ids)
        # Without a cached vocabulary, word_inputs are ignored (AllenNLP's test passes char ids).
        ignored = _ElmoBiLm(*allennlp_model_files)(ids, ids)
        cached = _ElmoBiLm(*allennlp_model_files, vocab_to_cache=vocab)
        by_words = cached(ids, words)
        with pytest.warns(UserWarning, match="index 9 is outside vocab_to_cache"):
            cached._elmo_lstm.reset_states()
            fallback = cached(ids, torch.tensor([[2, 3, 4, 9], [6, 7, 8, 0], [4, 0, 0, 0]]))
    for other in (ignored, by_words, fallback):
        assert torch.equal(other["mask"], by_chars["mask"])
        assert all(torch.equal(a, b) for a, b in zip(other["activations"], by_chars["activations"]))
    assert cached._word_embedding.weight.shape == (len(vocab), P)


# --- Elmo ------------------------------------------------------------------------------


def test_elmo_reaches_its_bilm_and_mixes_as_in_allennlp(allennlp_model_files):
    module = Elmo(*allennlp_model_files, 2, dropout=0.0)
    assert isinstance(module._elmo_lstm, _ElmoBiLm) and module.bilm is module._elmo_lstm.bilm
    assert module._scalar_mixes == [module.scalar_mix_0, module.scalar_mix_1] == module.scalar_mixes
    for mix in module._scalar_mixes:
        assert isinstance(mix, ScalarMix) and isinstance(mix.scalar_parameters, torch.nn.ParameterList)
        assert [tuple(p.shape) for p in mix.scalar_parameters] == [(1,)] * 3 and mix.gamma.shape == (1,)
    keys = set(module.state_dict())
    assert {"scalar_mix_0.scalar_parameters.2", "scalar_mix_1.gamma"} <= keys
    assert "_elmo_lstm.bilm.token_encoder.proj_w" in keys
    ids = batch_to_ids(BATCH)
    with torch.no_grad():
        first = module(ids)["elmo_representations"][0]
        assert not torch.equal(module(ids)["elmo_representations"][0], first)  # stateful
        module._elmo_lstm._elmo_lstm.reset_states()  # as AllenNLP's tests reset it
        assert torch.equal(module(ids)["elmo_representations"][0], first)


def test_allennlp_scalar_mix_computes_the_package_mix():
    torch.manual_seed(0)
    layers = [torch.randn(2, 5, 8) for _ in range(3)]
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    for norm in (False, True):
        ours = PackageScalarMix(3, MIX, layer_norm=norm)
        theirs = ScalarMix(3, do_layer_norm=norm, initial_scalar_parameters=MIX)
        assert torch.equal(theirs(layers, mask), ours(layers, mask))
    with pytest.raises(ValueError, match="initial_scalar_parameters: expected 3 values"):
        ScalarMix(3, initial_scalar_parameters=[1.0])


def test_state_dicts_of_the_earlier_layout_still_load(allennlp_model_files):
    """Before AllenNLP's names: one ``weights`` vector per mix, a 0-d gamma, no ``bilm.``."""
    source = Elmo(*allennlp_model_files, 1, dropout=0.0, stateful=False)
    with torch.no_grad():
        for p, w in zip(source.scalar_mix_0.scalar_parameters, MIX):
            p.fill_(w)
        source.scalar_mix_0.gamma.fill_(1.5)
        source.bilm.token_encoder.proj_b.add_(0.25)
    old = {}
    for key, value in source.state_dict().items():
        if key.startswith("scalar_mix_0.scalar_parameters."):
            continue
        old[key.replace("_elmo_lstm.bilm.", "_elmo_lstm.")] = value
    old["scalar_mix_0.weights"] = torch.tensor(MIX)
    old["scalar_mix_0.gamma"] = torch.tensor(1.5)
    target = Elmo(*allennlp_model_files, 1, dropout=0.0, stateful=False)
    target.load_state_dict(old)
    assert torch.equal(torch.cat(list(target.scalar_mix_0.scalar_parameters)), torch.tensor(MIX))
    assert target.scalar_mix_0.gamma.tolist() == [1.5]
    ids = batch_to_ids(BATCH)
    with torch.no_grad():
        assert torch.equal(target(ids)["elmo_representations"][0], source(ids)["elmo_representations"][0])


def _padded_ids(groups: list[list[list[str]]], steps: int) -> list[torch.Tensor]:
    out = []
    for group in groups:
        ids = batch_to_ids(group)
        out.append(torch.nn.functional.pad(ids, (0, 0, 0, steps - ids.shape[1])))
    return out


def test_four_dimensional_input_of_a_stateful_elmo(allennlp_model_files):
    """(2, 3, T, 50) in one call equals each (2, T, 50) group from a reset state."""
    groups = [
        [BATCH[0], BATCH[1]],
        [["1", "2"], ["1", "2", "3", "4", "5", "6", "7"]],
        [["1", "2", "3", "4", "50", "60", "70"], ["The"]],
    ]
    per_group = _padded_ids(groups, 7)
    module = Elmo(*allennlp_model_files, 1, dropout=0.0)
    with torch.no_grad():
        nested = module(torch.stack(per_group, dim=1))
        assert nested["mask"].shape == (2, 3, 7) and nested["elmo_representations"][0].shape == (
            2,
            3,
            7,
            2 * P,
        )
        for k, ids in enumerate(per_group):
            module._elmo_lstm._elmo_lstm.reset_states()
            alone = module(ids)
            assert torch.equal(nested["mask"][:, k], alone["mask"])
            diff = (nested["elmo_representations"][0][:, k] - alone["elmo_representations"][0]).abs().max()
            assert diff <= TOLERANCE


def test_four_dimensional_word_inputs(allennlp_model_files):
    vocab = ["@@PADDING@@", "@@UNKNOWN@@", "This", "is", "a", "sentence", "Here", "'s", "one", "Another"]
    ids = batch_to_ids([["This", "is", "a", "sentence"], ["Here", "'s", "one"], ["Another", "one"]])
    words = torch.tensor([[2, 3, 4, 5], [6, 7, 8, 0], [9, 8, 0, 0]])
    with torch.no_grad():
        alone = Elmo(*allennlp_model_files, 1, dropout=0.0, vocab_to_cache=vocab)(ids, words)
        module = Elmo(*allennlp_model_files, 1, dropout=0.0, vocab_to_cache=vocab)
        expanded = module(torch.stack([ids] * 4, dim=1), torch.stack([words] * 4, dim=1))
    reps = expanded["elmo_representations"][0]
    assert reps.shape == (3, 4, 4, 2 * P) and expanded["mask"].shape == (3, 4, 4)
    for k in range(4):
        assert (reps[:, k] - alone["elmo_representations"][0]).abs().max() <= TOLERANCE


def test_module_can_be_an_elmo_bilm(allennlp_model_files):
    shared = _ElmoBiLm(*allennlp_model_files)
    module = Elmo(None, None, 2, dropout=0.0, module=shared)
    assert module._elmo_lstm is shared and module.get_output_dim() == 2 * P
    ids = batch_to_ids(BATCH[:2])
    with torch.no_grad():
        out = module(ids)
        assert [r.shape for r in out["elmo_representations"]] == [(2, 7, 2 * P)] * 2
        assert shared._elmo_lstm._states is not None  # the module's own carried state
        module.reset_states()
        assert shared._elmo_lstm._states is None
    Elmo(None, None, 1, module=shared, stateful=False)
    assert not shared._elmo_lstm.stateful


@pytest.mark.parametrize("requires_grad", [True, False])
def test_gradients_reach_every_bilm_parameter_only_when_asked(allennlp_model_files, requires_grad):
    """As AllenNLP's test: random character ids, the sum of the output, the biLM's gradients."""
    torch.manual_seed(0)
    module = Elmo(*allennlp_model_files, 1, requires_grad=requires_grad)
    ids = torch.randint(0, 262, (3, 4, 50))
    module(ids)["elmo_representations"][0].sum().backward()
    grads = [p.grad for name, p in module.named_parameters() if "_elmo_lstm" in name]
    assert len(grads) > 30
    assert all((g is not None) is requires_grad for g in grads)


# --- ElmoEmbedder ----------------------------------------------------------------------


def test_embedder_bilm_shares_the_embedders_state(allennlp_model_files):
    """AllenNLP 0.9 code calls ``embedder.elmo_bilm(ids)`` and resets ``elmo_bilm._elmo_lstm``."""
    batch = BATCH[:2]
    reference = ElmoEmbedder(*allennlp_model_files)
    first, second = reference.embed_batch(batch), reference.embed_batch(batch)
    embedder = ElmoEmbedder(*allennlp_model_files)
    assert isinstance(embedder.elmo_bilm, _ElmoBiLm) and embedder.config is embedder.elmo_bilm.config
    embedder.embed_batch(batch)
    embedder.elmo_bilm._elmo_lstm.reset_states()
    with torch.no_grad():
        out = embedder.elmo_bilm(batch_to_ids(batch))
    for i, want in enumerate(first):
        n = len(batch[i])
        got = torch.stack([a[i, 1 : n + 1] for a in out["activations"]]).numpy()
        assert _max_diff(got, want) <= TOLERANCE
    # The state the biLM call left is the embedder's: its next batch is the reference's second.
    assert all(_max_diff(a, b) <= TOLERANCE for a, b in zip(embedder.embed_batch(batch), second))
    # flair's restore after unpickling: move the biLM and its state, then go on.
    embedder.elmo_bilm.to("cpu")
    states = embedder.elmo_bilm._elmo_lstm._states
    embedder.elmo_bilm._elmo_lstm._states = tuple(s.to("cpu") for s in states)
    assert embedder.embed_batch(batch)[0].shape == (3, 3, 2 * P)


def test_embedder_empty_sentences(allennlp_model_files):
    embedder = ElmoEmbedder(*allennlp_model_files)
    assert embedder.embed_sentence([]).shape == (3, 0, 2 * P)  # AllenNLP 0.9: (3, 0, 1024) whatever the model
    got = list(embedder.embed_sentences([["This", "is", "a", "test"], []]))
    assert [e.shape for e in got] == [(3, 4, 2 * P), (3, 0, 2 * P)]


def test_bilm_of_a_loaded_model_is_shared(allennlp_model_files):
    plain = load_bilm(*allennlp_model_files)
    module = Elmo(None, None, 1, dropout=0.0, module=plain)
    assert module.bilm is plain and isinstance(module._elmo_lstm, _ElmoBiLm)
    assert module._elmo_lstm._token_embedder.token_encoder is plain.token_encoder
