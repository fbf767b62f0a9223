"""Models that have run can be copied, pickled and saved whole (the engine's derived state is
rebuilt afterwards), as training loops and ``torch.save`` of a whole model need."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch

import elmo
from elmo.allennlp import Elmo, ElmoEmbedder, _ElmoBiLm, _ElmoCharacterEncoder, batch_to_ids

SENTENCES = [["The", "cat", "sat", "."], ["Hello", "world"], []]
ENGINES = [("auto", "float32"), ("plain", "float32"), ("fast", "bfloat16"), ("fast", "int8")]


def _round_trips(model):
    yield copy.deepcopy(model)
    yield pickle.loads(pickle.dumps(model))
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    yield torch.load(buffer, weights_only=False)


@pytest.mark.filterwarnings("ignore:dtype='bfloat16'")
@pytest.mark.parametrize(("engine", "precision"), ENGINES)
def test_hub_module(tiny_model_files, engine, precision):
    if precision == "int8" and "x86" not in torch.backends.quantized.supported_engines:
        pytest.skip("no x86 quantized backend")
    m = elmo.load(*tiny_model_files, engine=engine, precision=precision)
    want = m(tokens=SENTENCES)["elmo"]  # the engine has run: its derived weights exist
    for other in _round_trips(m):
        assert other.fast is None or other.fast._weights is None  # nothing derived was copied
        assert torch.equal(other(tokens=SENTENCES)["elmo"], want)
        assert other.bilm is not m.bilm
        if other.fast is not None:
            assert other.fast.plain is other.bilm  # the copy's engine runs the copy's weights
    assert torch.equal(m(tokens=SENTENCES)["elmo"], want)  # the original still works


@pytest.mark.filterwarnings("ignore:dtype='bfloat16'")
@pytest.mark.parametrize(("engine", "precision"), ENGINES)
def test_allennlp_classes(tiny_model_files, engine, precision):
    if precision == "int8" and "x86" not in torch.backends.quantized.supported_engines:
        pytest.skip("no x86 quantized backend")
    ids = batch_to_ids(SENTENCES)
    module = Elmo(*tiny_model_files, 2, dropout=0.0, stateful=False, engine=engine, precision=precision)
    want = module(ids)["elmo_representations"][1]
    embedder = ElmoEmbedder(*tiny_model_files, stateful=False, engine=engine, precision=precision)
    wanted = embedder.embed_batch(SENTENCES)
    for other in _round_trips(module):
        assert torch.equal(other(ids)["elmo_representations"][1], want)
    for other in _round_trips(embedder):
        got = other.embed_batch(SENTENCES)
        assert all((a == b).all() for a, b in zip(got, wanted))


def test_allennlp_internals(tiny_model_files):
    """A copy of a stateful _ElmoBiLm carries on from the same state, on its own weights."""
    ids = batch_to_ids(SENTENCES)
    bilm = _ElmoBiLm(*tiny_model_files, vocab_to_cache=["@@PADDING@@", "The", "cat"])
    with torch.no_grad():
        bilm(ids)
        want = bilm(ids)["activations"]
        bilm._elmo_lstm.reset_states()
        bilm(ids)
        for other in _round_trips(bilm):
            assert other.bilm is not bilm.bilm and other._runner is not bilm._runner
            assert other._token_embedder.token_encoder is other.bilm.token_encoder
            assert other._elmo_lstm._runner is other._runner
            got = other(ids)["activations"]
            assert all(torch.equal(a, b) for a, b in zip(got, want))
        encoder = _ElmoCharacterEncoder(*tiny_model_files)
        tokens = encoder(ids)["token_embedding"]
        for other in _round_trips(encoder):
            assert torch.equal(other(ids)["token_embedding"], tokens)


def test_moves_and_reloads_invalidate_the_engine(tiny_model_files):
    m = elmo.load(*tiny_model_files)
    base = m(tokens=SENTENCES)["elmo"]
    wide = copy.deepcopy(m).double()
    assert wide(tokens=SENTENCES)["elmo"].dtype == torch.float32  # rebuilt for the new dtype
    state = {k: v * 1.5 if k.endswith("proj_w") else v for k, v in m.state_dict().items()}
    m.load_state_dict(state)
    changed = m(tokens=SENTENCES)["elmo"]
    plain = elmo.load(*tiny_model_files, engine="plain")
    plain.load_state_dict(state)
    assert not torch.equal(changed, base)
    assert (changed - plain(tokens=SENTENCES)["elmo"]).abs().max() <= 1e-5
    m.train()
    m.eval()
    assert torch.equal(m(tokens=SENTENCES)["elmo"], changed)


def test_best_model_copy_in_a_training_loop(tiny_model_files):
    """AllenNLP's trainer and flair keep a deepcopy of the best model while training."""
    torch.manual_seed(0)
    elmo_layer = Elmo(*tiny_model_files, 1, dropout=0.0, stateful=False)
    head = torch.nn.Linear(elmo_layer.get_output_dim(), 2)
    model = torch.nn.ModuleDict({"elmo": elmo_layer, "head": head})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ids = batch_to_ids([["good", "movie"], ["bad", "film"]])
    labels = torch.tensor([1, 0])
    best, best_loss = None, float("inf")
    for _ in range(3):
        reps = model["elmo"](ids)["elmo_representations"][0].mean(dim=1)
        loss = torch.nn.functional.cross_entropy(model["head"](reps), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss.item() < best_loss:
            best_loss, best = loss.item(), copy.deepcopy(model)
    assert best is not None
    with torch.no_grad():
        a = best["head"](best["elmo"](ids)["elmo_representations"][0].mean(dim=1))
        b = best["head"](best["elmo"](ids)["elmo_representations"][0].mean(dim=1))
    assert torch.equal(a, b)
