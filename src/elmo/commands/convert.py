"""``elmo convert``: a TF Hub module or bilm-tf checkpoint as options.json + weights.hdf5."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from elmo.convert import FORMATS, MIX_FILE, convert
from elmo.errors import ConvertError

__all__ = ["HELP", "configure", "run"]

HELP = "convert a TF Hub module or bilm-tf checkpoint to options.json + weights.hdf5"


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``elmo convert``."""
    parser.add_argument(
        "src", metavar="SRC", help="bilm-tf checkpoint directory or prefix, or TF Hub module directory"
    )
    parser.add_argument("-o", "--output", required=True, metavar="DIR", help="directory to write (created)")
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="auto",
        help="source kind (default: auto: hub for a module directory or a checkpoint without options.json)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace DIR if it exists and is not empty")
    parser.add_argument(
        "--options",
        metavar="JSON",
        help="options merged over the found or inferred ones: a JSON object or a JSON file, "
        'e.g. \'{"char_cnn": {"activation": "tanh"}}\'',
    )


def _options(text: str | None) -> dict[str, Any] | Path | None:
    """``--options``: an inline JSON object, else the JSON file that :func:`convert` reads."""
    if text is None:
        return None
    if text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ConvertError(f"--options: not valid JSON: {e}") from None
    return Path(text)


def run(args: argparse.Namespace) -> int:
    """Convert; one line on standard error says what was written."""
    result = convert(
        args.src, args.output, format=args.format, options=_options(args.options), overwrite=args.overwrite
    )
    lstm, cnn = result.config.lstm, result.config.char_cnn
    notes = [f"{len(result.ignored)} variable(s) not converted"] if result.ignored else []
    if result.filled:
        notes.append(f"identity for {', '.join(result.filled)}")
    if result.mix is not None:
        notes.append(f"layer mix in {MIX_FILE}")
    print(
        f"elmo convert: wrote {result.out_dir} from {result.format} checkpoint {result.checkpoint} "
        f"(lstm {lstm.n_layers}x{lstm.dim}/{lstm.projection_dim}, {cnn.n_filters} filters, "
        f"{cnn.n_highway} highway{'; ' + '; '.join(notes) if notes else ''})",
        file=sys.stderr,
    )
    return 0
