"""The ``elmo`` commands, one module each, in the order ``elmo --help`` lists them.

A command module has ``HELP`` (its line in ``elmo --help``, and its description unless
``configure`` sets another), ``configure(parser)`` (adds its arguments) and
``run(args) -> int`` (does the work; returns the exit status). It may raise
:class:`elmo.errors.UsageError` for arguments that cannot go together (exit status 2)
and any error of the library for bad input (exit status 1); :func:`elmo.cli.main`
turns them into one line. ``INTERRUPTED``, where present, is what ``main`` adds to
the message when the run is interrupted.
"""

from __future__ import annotations

import argparse
from typing import Protocol

from elmo.commands import (
    convert,
    download,
    embed,
    embed_corpus,
    export,
    info,
    models,
    perplexity,
    serve,
    train,
    vocab,
    vocab_embeddings,
)

__all__ = ["COMMANDS", "Command"]


class Command(Protocol):
    """What :func:`elmo.cli.main` needs of a command module."""

    HELP: str

    def configure(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


COMMANDS: dict[str, Command] = {
    "embed": embed,
    "serve": serve,
    "embed-corpus": embed_corpus,
    "info": info,
    "vocab": vocab,
    "train": train,
    "perplexity": perplexity,
    "export": export,
    "convert": convert,
    "vocab-embeddings": vocab_embeddings,
    "models": models,
    "download": download,
}
