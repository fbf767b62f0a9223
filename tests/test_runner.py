"""The one runner: which engine computes, carried state, engine options."""

from __future__ import annotations

import copy
import pickle
import warnings

import pytest
import torch

import elmo
from conftest import run_in_threads
from elmo.allennlp import Elmo, ElmoEmbedder
from elmo.chars import batch_to_char_ids, sentence_to_char_ids
from elmo.runner import BiLMRunner, CarriedState, EngineOptions


@pytest.fixture
def bilm(tiny_model_files):
    return elmo.load_bilm(*tiny_model_files)


@pytest.mark.parametrize(
    ("engine", "grad_enabled", "requires_grad", "fast"),
    [
        ("auto", False, False, True),
        ("auto", True, False, True),  # autograd on, but nothing of the biLM to train
        ("auto", False, True, True),  # trainable, but no_grad: nothing to train now
        ("auto", True, True, False),  # gradients must reach the biLM: only the plain model
        ("fast", True, False, True),
        ("fast", True, True, False),
        ("plain", False, False, False),
        ("plain", True, True, False),
    ],
)
def test_the_engine_rule(bilm, engine, grad_enabled, requires_grad, fast):
    for p in bilm.parameters():
        p.requires_grad_(requires_grad)
    runner = BiLMRunner(bilm, EngineOptions(engine=engine))
    ids = batch_to_char_ids([["the", "cat"]])
    with torch.set_grad_enabled(grad_enabled):
        assert runner.uses_fast_engine() is fast
        seen = runner.fast.tokens_seen if runner.fast is not None else 0
        out = runner(ids)
    if runner.fast is not None:
        assert (runner.fast.tokens_seen > seen) is fast  # the engine really ran, or not
    assert out.layers[2].requires_grad is (grad_enabled and requires_grad)


def test_every_interface_follows_the_rule(tiny_model_files):
    """The hub module, Elmo and ElmoEmbedder all run their biLM through a runner."""
    module = elmo.load(*tiny_model_files, finetune=True)
    allen = Elmo(*tiny_model_files, 1, requires_grad=True)
    embedder = ElmoEmbedder(*tiny_model_files)
    runners = (module._runner, allen._runner, embedder._runner)
    assert all(isinstance(r, BiLMRunner) for r in runners)
    # gradients on, biLM trainable in the first two: the plain model; ElmoEmbedder's is frozen
    assert [r.uses_fast_engine() for r in runners] == [False, False, True]
    with torch.no_grad():
        assert [r.uses_fast_engine() for r in runners] == [True, True, True]


def test_options_are_validated_once(bilm):
    with pytest.raises(ValueError, match="engine: expected one of auto, fast, plain, found 'quick'"):
        EngineOptions(engine="quick")
    with pytest.raises(
        ValueError, match="precision: expected one of float32, bfloat16, int8, found 'float16'"
    ):
        EngineOptions(precision="float16")
    with pytest.raises(ValueError, match="precision='int8' needs the fast engine"):
        EngineOptions(engine="plain", precision="int8")
    for bad in (-1, 1.5, True, "10"):
        with pytest.raises(ValueError, match="cache_size: expected an int >= 0"):
            EngineOptions(cache_size=bad)
    assert EngineOptions.from_keywords("fast", "int8", 0) == EngineOptions("fast", "int8", 0)
    assert BiLMRunner(bilm, EngineOptions(cache_size=7)).fast.cache.capacity == 7


def test_dtype_is_a_deprecated_alias(tiny_model_files):
    with pytest.warns(DeprecationWarning, match="dtype= is deprecated"):
        options = EngineOptions.from_keywords(dtype="int8")
    assert options.precision == "int8"
    with pytest.raises(ValueError, match="dtype: expected one of"), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        EngineOptions.from_keywords(dtype="float16")
    with pytest.raises(TypeError, match="pass precision= only"):
        EngineOptions.from_keywords(precision="int8", dtype="int8")
    with pytest.warns(DeprecationWarning):
        m = elmo.load(*tiny_model_files, dtype="int8")
    assert m.precision == "int8" and m.dtype == "int8" and m.engine_options.precision == "int8"


def test_carried_state_rows(bilm):
    """Fewer rows keep the others stored; more rows start the new ones from zero."""
    state = CarriedState()
    runner = BiLMRunner(bilm, EngineOptions(engine="plain"), stateful=True)
    runner.state = state
    three = batch_to_char_ids([["a", "b"], ["c"], ["d", "e", "f"]])
    with torch.no_grad():
        runner(three)
        stored = [s.forward_h.clone() for s in state.layers]
        runner(batch_to_char_ids([["x"]]))
        assert all(torch.equal(s.forward_h[1:], old[1:]) for s, old in zip(state.layers, stored))
        assert not torch.equal(state.layers[0].forward_h[0], stored[0][0])
        taken = state.take(bilm, 5)
        assert taken[0].forward_h.shape[0] == 5 and not taken[0].forward_h[3:].any()
    runner.reset_state()
    assert state.layers is None


def test_character_ids_move_to_the_model(bilm):
    runner = BiLMRunner(bilm, EngineOptions(engine="plain"))
    ids = batch_to_char_ids([["a"]]).to(torch.int32)
    with torch.no_grad():
        assert runner(ids).layers[0].device == bilm.token_encoder.proj_b.device


@pytest.mark.parametrize("engine", ["fast", "plain"])
def test_concurrent_stateful_calls_run_one_at_a_time(bilm, engine, one_intra_op_thread):
    """Stateful calls from 8 threads run one after another: each continues from the state
    the one before it left, so together they give the outputs of the same calls made in
    sequence (in the order they took the lock); no call reads a state another is replacing."""
    bilm.requires_grad_(False)
    ids = batch_to_char_ids([["the", "cat", "sat"], ["a", "dog"]])
    calls = 16
    sequential = BiLMRunner(bilm, EngineOptions(engine=engine), stateful=True)
    want = [sequential(ids) for _ in range(calls)]
    shared = BiLMRunner(bilm, EngineOptions(engine=engine, cache_size=4), stateful=True)
    got = run_in_threads([lambda: shared(ids)] * calls)
    unmatched = list(range(calls))
    for out in got:
        step = next(k for k in unmatched if all(map(torch.equal, out.layers, want[k].layers)))
        unmatched.remove(step)  # StopIteration above: an output no sequential step gives
    assert not unmatched
    for s, t in zip(shared.state.layers, sequential.state.layers):
        assert all(torch.equal(x, y) for x, y in zip(vars(s).values(), vars(t).values()))


def test_carried_state_copies(bilm):
    """Copies of a runner carry the state (with a lock of their own) and run on their own."""
    bilm.requires_grad_(False)
    runner = BiLMRunner(bilm, stateful=True)
    ids = batch_to_char_ids([["the", "cat"]])
    runner(ids)
    twin = copy.deepcopy(runner)
    assert twin.state.lock is not runner.state.lock and twin.fast.cache.capacity == runner.fast.cache.capacity
    a, b = runner(ids), twin(ids)
    assert all(map(torch.equal, a.layers, b.layers))
    restored = pickle.loads(pickle.dumps(runner.state))
    for s, t in zip(restored.layers, runner.state.layers):
        assert all(torch.equal(x, y) for x, y in zip(vars(s).values(), vars(t).values()))


@pytest.mark.parametrize("engine", ["fast", "plain"])
def test_ragged_calls_carry_state_like_padded_ones(bilm, engine):
    """Stateful: ``ragged`` takes and stores the carried state as ``__call__`` does, and
    gives the padded call's values at the real positions."""
    first, second = [["a", "b", "c"], ["d"]], [["e", "f"], ["g", "h", "i"], ["j"]]
    padded = BiLMRunner(bilm, EngineOptions(engine=engine), stateful=True)
    ragged = BiLMRunner(bilm, EngineOptions(engine=engine), stateful=True)
    with torch.no_grad():
        for batch in (first, second):
            want = padded(batch_to_char_ids(batch))
            got = ragged.ragged(sentence_to_char_ids([t for s in batch for t in s]), [len(s) for s in batch])
            for a, b in zip(got.layers, want.layers):
                assert torch.equal(a, b[want.mask])
    for s, t in zip(ragged.state.layers or [], padded.state.layers or []):
        assert all(torch.equal(x, y) for x, y in zip(vars(s).values(), vars(t).values()))
    assert ragged.state.layers is not None
