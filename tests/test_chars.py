import json

import numpy as np
import torch

from conftest import BILMTF, shared_path
from elmo.chars import batch_to_char_ids, sentence_to_char_ids, token_to_char_ids


def test_ordinary_token_layout():
    ids = token_to_char_ids("cat")
    assert len(ids) == 50
    # begin-of-word, the bytes, end-of-word, padding; all shifted by +1
    assert ids[:5] == (259, ord("c") + 1, ord("a") + 1, ord("t") + 1, 260)
    assert set(ids[5:]) == {261}


def test_sentence_markers_and_literal_marker_tokens():
    assert token_to_char_ids("<S>")[:4] == (259, 257, 260, 261)
    assert token_to_char_ids("</S>")[:4] == (259, 258, 260, 261)
    # a lowercase <s> is an ordinary token
    assert token_to_char_ids("<s>")[:5] == (259, ord("<") + 1, ord("s") + 1, ord(">") + 1, 260)


def test_utf8_bytes_and_truncation_inside_a_character():
    token = "x" + "日本語" * 6  # 55 bytes
    ids = token_to_char_ids(token)
    raw = token.encode("utf-8")[:48]
    assert raw[-2:] == bytes([0xE6, 0x97])  # cut in the middle of 日
    assert ids == (259, *(b + 1 for b in raw), 260)


def test_token_of_exactly_48_bytes_has_no_padding():
    ids = token_to_char_ids("a" * 48)
    assert ids[-1] == 260 and 261 not in ids
    assert token_to_char_ids("a" * 60) == ids


def test_max_characters_per_token_is_honoured():
    ids = token_to_char_ids("abcdefghijkl", 10)
    assert ids == (259, *(ord(c) + 1 for c in "abcdefgh"), 260)
    assert token_to_char_ids("<S>", 10) == (259, 257, 260, 261, 261, 261, 261, 261, 261, 261)


def test_empty_token_and_batch_padding():
    assert token_to_char_ids("")[:3] == (259, 260, 261)
    batch = batch_to_char_ids([["a", "b"], [], ["c"]])
    assert batch.shape == (3, 2, 50)
    assert batch.dtype == torch.long
    assert (batch[1] == 0).all() and (batch[2, 1] == 0).all() and (batch[2, 0] > 0).all()
    assert sentence_to_char_ids([]).shape == (0, 50)
    assert batch_to_char_ids([]).shape == (0, 0, 50)


def test_matches_bilm_tf_batcher_output():
    """bilm-tf's Batcher (max 10 characters) made the char ids stored with its outputs."""
    run = shared_path(BILMTF / "generated" / "run_small_sampled")
    stored = np.load(run / "inference_lm_embeddings.npz")["char_ids"]
    sentences = json.loads((run / "token_loglik_sentences.json").read_text(encoding="utf-8"))
    ours = batch_to_char_ids([["<S>", *s.split(), "</S>"] for s in sentences], 10)
    assert ours.shape[1] <= stored.shape[1]
    assert np.array_equal(ours.numpy(), stored[:, : ours.shape[1]])
    assert (stored[:, ours.shape[1] :] == 0).all()


def test_batches_equal_token_by_token_ids_for_any_text():
    """The batch conversion (all tokens at once) gives what token_to_char_ids gives each
    token: multi-byte and cut characters, markers, empty tokens and lone surrogates."""
    import random

    rng = random.Random(0)
    alphabet = ["a", "Z", "é", "ß", "中", "😀", "\u0301", "\ud800", " ", "<", ">", "/", "S", "\x00"]
    words = ["<S>", "</S>", "", "<S>x", "x" * 48, "é" * 30, "😀" * 13]
    for _ in range(200):
        words.append("".join(rng.choices(alphabet, k=rng.randint(1, 60))))
    for max_chars in (50, 10, 3):
        batch = [rng.choices(words, k=rng.randint(0, 12)) for _ in range(40)]
        got = batch_to_char_ids(batch, max_chars)
        assert got.dtype == torch.long and got.shape == (40, max(map(len, batch)), max_chars)
        for b, sentence in enumerate(batch):
            for t, token in enumerate(sentence):
                assert tuple(got[b, t].tolist()) == token_to_char_ids(token, max_chars), (token, max_chars)
            assert not got[b, len(sentence) :].any()
            assert sentence_to_char_ids(sentence, max_chars).tolist() == [
                list(token_to_char_ids(token, max_chars)) for token in sentence
            ]
    assert batch_to_char_ids([]).shape == (0, 0, 50)
    assert batch_to_char_ids([[], []]).shape == (2, 0, 50)
    assert sentence_to_char_ids([]).shape == (0, 50)
