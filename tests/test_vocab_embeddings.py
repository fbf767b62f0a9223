"""Context-free vocabulary embeddings against AllenNLP's ``elmo_token_embeddings.hdf5``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from conftest import ALLENNLP, needs_shared, shared_path
from elmo.commands.vocab_embeddings import configure, run
from elmo.errors import UsageError, VocabEmbeddingsError
from elmo.vocab_embeddings import (
    read_vocab,
    vocab_embeddings,
    write_vocab_embeddings,
)

VOCAB = ALLENNLP / "vocab_test.txt"
needs_vocab = needs_shared(VOCAB)
# AllenNLP's cached token embeddings agree with ours to 7e-7 (float32, other kernels).
ATOL = 1e-5


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    with h5py.File(shared_path(ALLENNLP / "elmo_token_embeddings.hdf5"), "r") as f:
        return f["embedding"][()]


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="elmo vocab-embeddings")
    configure(p)
    return p.parse_args(list(argv))


def _model_args(files: tuple[Path, Path]) -> list[str]:
    return ["--options", str(files[0]), "--weights", str(files[1])]


@needs_vocab
@pytest.mark.parametrize("batch_size", [1, 100, 1024])
def test_matches_allennlp_token_embeddings(allennlp_module, reference, batch_size):
    words = read_vocab(VOCAB)
    assert len(words) == 458 and words[20] == "<S>" and words[224] == "</S>"
    got = vocab_embeddings(allennlp_module, words, batch_size=batch_size)
    assert got.shape == reference.shape == (458, 16) and got.dtype == np.float32
    np.testing.assert_allclose(got, reference, rtol=0, atol=ATOL)
    # The plain biLM gives the same, and a word's row is its word_emb inside a sentence.
    np.testing.assert_array_equal(vocab_embeddings(allennlp_module.bilm, words[:50]), got[:50])
    in_sentence = allennlp_module(tokens=[words[100:110]], sequence_len=[10])["word_emb"][0]
    np.testing.assert_allclose(in_sentence.detach().numpy(), got[100:110], rtol=0, atol=1e-6)


def test_boundary_tokens_get_boundary_embeddings(tiny_module):
    """`<S>`/`</S>` are embedded with the sentence-marker character ids."""
    got = vocab_embeddings(tiny_module, ["<S>", "</S>", "S"])
    markers = tiny_module.bilm.token_encoder(tiny_module.bilm._marker_ids).detach().numpy()
    np.testing.assert_allclose(got[:2], markers, rtol=0, atol=1e-6)
    assert not np.allclose(got[2], got[0])


@needs_vocab
def test_write_and_read_hdf5(allennlp_module, reference, tmp_path):
    out = tmp_path / "vocab.hdf5"
    summary = write_vocab_embeddings(allennlp_module, VOCAB, out, batch_size=64, quiet=True)
    assert summary["words"] == 458 and summary["dim"] == 16 and summary["duplicates"] == []
    with h5py.File(out, "r") as f:
        assert f["embedding"].dtype == np.float32 and f["embedding"].shape == (458, 16)
        np.testing.assert_allclose(f["embedding"][()], reference, rtol=0, atol=ATOL)
        vocab = [s.decode("utf-8") for s in f["vocab"][()]]
        options = json.loads(f.attrs["options"])
    assert vocab == VOCAB.read_text(encoding="utf-8").split("\n")
    assert options["lstm"]["projection_dim"] == 16
    assert [p.name for p in tmp_path.iterdir()] == ["vocab.hdf5"]  # no temporary left behind


@needs_vocab
def test_refuses_to_overwrite(tiny_module, tmp_path):
    out = tmp_path / "vocab.hdf5"
    out.write_bytes(b"keep me")
    with pytest.raises(VocabEmbeddingsError, match="already exists"):
        write_vocab_embeddings(tiny_module, VOCAB, out, quiet=True)
    assert out.read_bytes() == b"keep me"
    write_vocab_embeddings(tiny_module, VOCAB, out, overwrite=True, quiet=True)
    with h5py.File(out, "r") as f:
        assert f["embedding"].shape == (458, 16)


@needs_vocab
def test_failed_write_leaves_nothing(tiny_module, tmp_path):
    out = tmp_path / "vocab.hdf5"
    with pytest.raises(TypeError):
        write_vocab_embeddings(object(), VOCAB, out, quiet=True)
    assert list(tmp_path.iterdir()) == []


def _vocab_file(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "vocab.txt"
    path.write_bytes(data)
    return path


def test_read_vocab_format(tmp_path):
    # Trailing newline, CRLF, surrounding spaces and a BOM are tolerated; !!!MAXTERMID is skipped.
    path = _vocab_file(tmp_path, "\ufeff<S>\r\n</S>\n  <UNK>  \n!!!MAXTERMID\nthe\ncafé\n".encode())
    assert read_vocab(path) == ["<S>", "</S>", "<UNK>", "the", "café"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"a\n\nb\n", "line 2: empty line"),
        (b"a\nb\n\n", "line 3: empty line"),
        (b"a\nthe 1234\n", "line 2: 'the 1234' has whitespace inside"),
        (b"a\n\xff\n", "line 2: not UTF-8"),
        (b"", "holds no tokens"),
    ],
)
def test_read_vocab_errors_name_the_line(tmp_path, data, message):
    with pytest.raises(VocabEmbeddingsError, match=message):
        read_vocab(_vocab_file(tmp_path, data))


def test_duplicates_keep_their_rows(tiny_model_files, tiny_module, tmp_path, capsys):
    vocab = _vocab_file(tmp_path, b"the\ncat\nthe\n")
    out = tmp_path / "out.hdf5"
    assert run(_args(str(vocab), "-o", str(out), *_model_args(tiny_model_files), "--quiet")) == 0
    assert "repeated token" in capsys.readouterr().err
    with h5py.File(out, "r") as f:
        emb = f["embedding"][()]
        assert [s.decode() for s in f["vocab"][()]] == ["the", "cat", "the"]
    np.testing.assert_array_equal(emb[0], emb[2])
    summary = write_vocab_embeddings(tiny_module, vocab, out, overwrite=True, quiet=True)
    assert summary["duplicates"] == [("the", 0, 2)]


@needs_vocab
def test_command_line(allennlp_model_files, reference, tmp_path, capsys):
    out = tmp_path / "emb.hdf5"
    model = _model_args(allennlp_model_files)
    assert run(_args(str(VOCAB), "-o", str(out), *model, "--batch-size", "37")) == 0
    err = capsys.readouterr().err
    assert "wrote 458 embeddings of size 16" in err
    with h5py.File(out, "r") as f:
        np.testing.assert_allclose(f["embedding"][()], reference, rtol=0, atol=ATOL)
    with pytest.raises(VocabEmbeddingsError, match="already exists"):
        run(_args(str(VOCAB), "-o", str(out), *model))
    assert run(_args(str(VOCAB), "-o", str(out), *model, "--overwrite", "-q")) == 0
    assert capsys.readouterr().err == ""


@needs_vocab
def test_command_line_model_directory(tiny_model_files, tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "options.json").write_bytes(tiny_model_files[0].read_bytes())
    (model_dir / "weights.hdf5").write_bytes(tiny_model_files[1].read_bytes())
    out = tmp_path / "emb.hdf5"
    assert run(_args(str(VOCAB), "-o", str(out), "-m", str(model_dir), "-q")) == 0
    assert out.is_file()


@needs_vocab
@pytest.mark.parametrize(
    ("argv", "error", "message"),
    [
        (["--batch-size", "0"], UsageError, "--batch-size"),
        (["--options", str(ALLENNLP / "options.json")], UsageError, "go together"),
        (["-m", "somewhere", "--options", "a", "--weights", "b"], UsageError, "not both"),
        (["-m", "no/such/dir"], FileNotFoundError, "no such model directory"),
    ],
)
def test_command_line_usage_errors(tmp_path, argv, error, message):
    out = tmp_path / "emb.hdf5"
    with pytest.raises(error, match=message):
        run(_args(str(VOCAB), "-o", str(out), *argv))
    assert not out.exists()


@needs_vocab
def test_command_line_missing_inputs(tiny_model_files, tmp_path):
    model = _model_args(tiny_model_files)
    with pytest.raises(VocabEmbeddingsError, match=r"nope\.txt: vocabulary not found"):
        run(_args(str(tmp_path / "nope.txt"), "-o", str(tmp_path / "x.hdf5"), *model))
    with pytest.raises(VocabEmbeddingsError, match=r"the folder .* does not exist"):
        run(_args(str(VOCAB), "-o", str(tmp_path / "no" / "x.hdf5"), *model))
    with pytest.raises(VocabEmbeddingsError, match="is a directory"):
        run(_args(str(VOCAB), "-o", str(tmp_path), *model))


@needs_vocab
def test_output_is_independent_of_batching(tiny_module):
    words = read_vocab(VOCAB)
    whole = vocab_embeddings(tiny_module, words, batch_size=1024)
    for size in (3, 17):
        np.testing.assert_array_equal(vocab_embeddings(tiny_module, words, batch_size=size), whole)
    assert torch.is_grad_enabled()  # no leaked no_grad state


def test_vocabulary_size_cap_and_special_files(tmp_path):
    from elmo.vocab_embeddings import read_vocab

    big = tmp_path / "big.txt"
    with open(big, "wb") as f:
        f.truncate(10 * 2**30)  # sparse: refused from its size, without reading it
    with pytest.raises(VocabEmbeddingsError, match=r"big\.txt: vocabulary of 10240 MiB, larger than"):
        read_vocab(big)
    with pytest.raises(VocabEmbeddingsError, match=r"^/dev/zero: is a character device"):
        read_vocab("/dev/zero")
