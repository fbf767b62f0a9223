import numpy as np
import pytest
import torch

from elmo.inputs import padded_width, split_sentences, tokens_to_lists


def test_default_signature_splitting():
    """As the hub module's tf.string_split: on " " only, runs of spaces give no empty tokens."""
    assert split_sentences(["the  cat\tsat ", "", "   ", "hello", "a\nb\u00a0c  d"]) == [
        ["the", "cat\tsat"],
        [],
        [],
        ["hello"],
        ["a\nb\u00a0c", "d"],
    ]
    assert split_sentences(np.array(["a b", "c"])) == [["a", "b"], ["c"]]
    assert split_sentences([b"caf\xc3\xa9 ok"]) == [["café", "ok"]]
    assert split_sentences(("x",)) == [["x"]]
    assert split_sentences([]) == []


def test_tokens_signature():
    assert tokens_to_lists([["the", "cat", "sat"], ["hello", ""]], [3, 1]) == [
        ["the", "cat", "sat"],
        ["hello"],
    ]
    assert tokens_to_lists([["the", "cat", "sat"], ["hello"]]) == [["the", "cat", "sat"], ["hello"]]
    # without lengths, trailing "" is padding; with lengths, "" inside the length is a word
    assert tokens_to_lists([["a", "", "b", "", ""]]) == [["a", "", "b"]]
    assert tokens_to_lists([["a", ""]], [2]) == [["a", ""]]
    assert tokens_to_lists(np.array([["a", "b"], ["c", ""]]), np.array([2, 1], dtype=np.int32)) == [
        ["a", "b"],
        ["c"],
    ]
    assert tokens_to_lists([["a", "b"]], torch.tensor([0])) == [[]]


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: split_sentences(None), TypeError, r"sentences: expected a list, found None"),
        (lambda: split_sentences("the cat"), TypeError, r"found a single str 'the cat'; wrap it in a list"),
        (lambda: split_sentences(["ok", 3]), TypeError, r"sentences\[1\]: expected a string, found int 3"),
        (
            lambda: split_sentences(["ok", None]),
            TypeError,
            r"sentences\[1\]: expected a string, found NoneType",
        ),
        (
            lambda: split_sentences([["the", "cat"]]),
            TypeError,
            r"sentences\[0\]: expected a string, found a list; pass token lists as tokens=",
        ),
        (lambda: split_sentences([b"\xff"]), ValueError, r"sentences\[0\]: bytes are not valid UTF-8"),
        (lambda: split_sentences(42), TypeError, r"sentences: expected a list, found int"),
        (
            lambda: tokens_to_lists(["the", "cat"]),
            TypeError,
            r"tokens\[0\]: expected a list of token strings, found a str; tokens must be nested",
        ),
        (lambda: tokens_to_lists([["a", 1]]), TypeError, r"tokens\[0\]\[1\]: expected a string, found int 1"),
        (
            lambda: tokens_to_lists([["a", ["b"]]]),
            TypeError,
            r"tokens\[0\]\[1\]: expected a string, found list",
        ),
        (
            lambda: tokens_to_lists([["a"], ["b"]], [1]),
            ValueError,
            r"sequence_len: expected 2 lengths \(one per row of tokens\), found 1",
        ),
        (
            lambda: tokens_to_lists([["a", ""]], [3]),
            ValueError,
            r"sequence_len\[0\]: 3 is longer than row 0 of tokens \(2 entries\)",
        ),
        (
            lambda: tokens_to_lists([["a"]], [-1]),
            ValueError,
            r"sequence_len\[0\]: expected a length >= 0, found -1",
        ),
        (
            lambda: tokens_to_lists([["a"]], [1.5]),
            TypeError,
            r"sequence_len\[0\]: expected an integer, found float",
        ),
        (lambda: tokens_to_lists([["a"]], 1), TypeError, r"sequence_len: expected a list, found int"),
        (lambda: tokens_to_lists(None), TypeError, r"tokens: expected a list, found None"),
    ],
)
def test_malformed_calls_say_what_was_expected(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_padded_width():
    assert padded_width([["a", "b", "", ""], ["c", "", "", ""]]) == 4
    assert padded_width(np.array([["a", ""], ["b", "c"]])) == 2
    assert padded_width([["a"], ["b", "c", "d"]]) == 3
    assert padded_width([]) == 0
