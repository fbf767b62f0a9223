"""The ``elmo`` commands: the registry, the shared model arguments, argparse kept out of the library."""

from __future__ import annotations

import argparse
import ast
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

import elmo
from conftest import ROOT, tiny_model
from elmo import cli
from elmo.commands import COMMANDS
from elmo.default_model import default_model_dir
from elmo.vocab_embeddings import read_vocab, vocab_embeddings

WORDS = ["<S>", "</S>", "<UNK>", "the", "cat", "sat", "naïve", "x" * 60]
SRC = ROOT / "src" / "elmo"


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_configures_a_parser(name):
    command = COMMANDS[name]
    assert isinstance(command.HELP, str) and command.HELP
    assert callable(command.configure) and callable(command.run)
    parser = argparse.ArgumentParser(prog=f"elmo {name}")
    command.configure(parser)
    assert parser.format_help()


def test_main_parser_lists_the_registered_commands_in_order():
    parser = cli._parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert list(sub.choices) == list(COMMANDS)
    listed = {action.dest: action.help for action in sub._choices_actions}
    assert listed == {name: command.HELP for name, command in COMMANDS.items()}


def _vocab(tmp_path: Path) -> Path:
    path = tmp_path / "vocab.txt"
    path.write_text("".join(w + "\n" for w in WORDS), encoding="utf-8")
    return path


def _vocab_embeddings(tmp_path: Path, *model_args: str) -> np.ndarray:
    out = tmp_path / "emb.hdf5"
    vocab = _vocab(tmp_path)
    assert cli.main(["vocab-embeddings", str(vocab), "-o", str(out), "-q", "--overwrite", *model_args]) == 0
    with h5py.File(out, "r") as f:
        return f["embedding"][()]


def test_vocab_embeddings_default_model(tmp_path):
    """No model, or ``--model default``: the bundled model, as for ``elmo embed``."""
    expected = vocab_embeddings(elmo.load(default_model_dir()), read_vocab(_vocab(tmp_path)))
    assert expected.shape == (len(WORDS), 128)
    np.testing.assert_array_equal(_vocab_embeddings(tmp_path, "--model", "default"), expected)
    np.testing.assert_array_equal(_vocab_embeddings(tmp_path), expected)


def test_vocab_embeddings_registered_model_name(tmp_path, monkeypatch):
    """A released model's name resolves through the cache (filled by hand: no download)."""
    cache = tmp_path / "cache"
    (cache / "small").mkdir(parents=True)
    shutil.copy(tiny_model() / "options.json", cache / "small" / "options.json")
    shutil.copy(tiny_model() / "weights.hdf5", cache / "small" / "weights.hdf5")
    monkeypatch.setenv("ELMO_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)  # no directory called "small" to shadow the name
    expected = vocab_embeddings(elmo.load(cache / "small"), read_vocab(_vocab(tmp_path)))
    np.testing.assert_array_equal(_vocab_embeddings(tmp_path, "-m", "small"), expected)


@pytest.mark.parametrize(
    "argv",
    [
        ["embed", "in.txt", "out.hdf5", "--model", "default"],
        ["info", "default"],
        ["vocab-embeddings", "vocab.txt", "-o", "out.hdf5", "--model", "default"],
    ],
)
def test_model_with_options_is_a_usage_error(tmp_path, monkeypatch, capsys, argv):
    monkeypatch.chdir(tmp_path)
    Path("in.txt").write_text("a b\n", encoding="utf-8")
    _vocab(tmp_path)
    options = [
        "--options",
        str(tiny_model() / "options.json"),
        "--weights",
        str(tiny_model() / "weights.hdf5"),
    ]
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*argv, *options])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err == f"elmo {argv[0]}: error: give either --model or --options with --weights, not both\n"
    assert not Path("out.hdf5").exists()


def _imports_argparse(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "argparse" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "argparse":
            return True
    return False


def test_only_the_command_line_imports_argparse():
    allowed = {SRC / "cli.py", *(SRC / "commands").glob("*.py")}
    found = sorted(str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if _imports_argparse(p))
    assert found, "the commands import argparse; the scan must see them"
    assert [f for f in found if SRC / f not in allowed] == []
