"""The ``elmo`` command line; the commands themselves are in :mod:`elmo.commands`.

Errors are reported as one line on standard error (``elmo embed: error: ...``) with a
non-zero exit status: 1 for bad input, output or model, 2 for bad arguments, 130 when
interrupted. Tracebacks are only shown with ``ELMO_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from elmo.commands import COMMANDS
from elmo.errors import ElmoError, UsageError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    from elmo import __version__

    p = argparse.ArgumentParser(prog="elmo", description="ELMo contextual word embeddings.")
    p.add_argument("--version", action="version", version=f"elmo-embeddings {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        command.configure(sub.add_parser(name, help=command.HELP, description=command.HELP))
    return p


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``elmo`` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    name = f"elmo {args.command}"
    # SIGTERM unwinds like Ctrl-C, so temporary files are closed; the partial run stays.
    signal.signal(signal.SIGTERM, _interrupt)
    command = COMMANDS[args.command]
    try:
        return command.run(args)
    except UsageError as e:
        parser.exit(2, f"{name}: error: {e}\n")
    except KeyboardInterrupt:
        hint = getattr(command, "INTERRUPTED", None)
        print(f"{name}: interrupted{'; ' + hint if hint else ''}", file=sys.stderr)
        return 130
    except Exception as e:  # one line for the user; the traceback only when debugging
        if os.environ.get("ELMO_DEBUG"):
            raise
        print(f"{name}: error: {_one_line(e)}", file=sys.stderr)
        return 1
    return 0


def _one_line(e: BaseException) -> str:
    """The message of ``e`` as one line. The library's errors (and ``OSError``, ``ValueError``,
    ``TypeError``) carry messages written for the user; anything else is a failure with no
    such message, said plainly with a pointer to the traceback."""
    text = " ".join(str(e).split())
    if isinstance(e, MemoryError):
        return "out of memory" + (f" ({text})" if text else "") + "; " + _DEBUG_HINT
    if isinstance(e, RecursionError):
        return "input nested too deeply to process; " + _DEBUG_HINT
    if isinstance(e, (ElmoError, OSError, ValueError, TypeError)) and text:
        return text
    what = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return f"unexpected internal error ({what}); {_DEBUG_HINT}"


_DEBUG_HINT = "run again with ELMO_DEBUG=1 for the traceback"


if __name__ == "__main__":
    sys.exit(main())
