"""``elmo convert``: a TF Hub module or bilm-tf checkpoint as options.json + weights.hdf5."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from elmo.config import OPTION_LIMITS
from elmo.convert import FORMATS, convert
from elmo.errors import ConvertError, UsageError
from elmo.files import OPTIONS_CAP, parse_json, read_json_capped
from elmo.resolve import MIX_FILE

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
    g = parser.add_argument_group(
        "what a checkpoint cannot show",
        "options the variables' shapes do not tell; a TF Hub module is given the released models' "
        "values unless these say otherwise (the command names the values it assumed)",
    )
    g.add_argument(
        "--activation", choices=("relu", "tanh"), help="the char CNN's activation (released: relu)"
    )
    g.add_argument("--cell-clip", type=float, metavar="X", help="the LSTM cell clip (released: 3)")
    g.add_argument("--proj-clip", type=float, metavar="X", help="the LSTM projection clip (released: 3)")
    g.add_argument(
        "--max-characters-per-token", type=int, metavar="N", help="characters per token (released: 50)"
    )
    g.add_argument(
        "--no-skip-connections",
        action="store_true",
        help="the LSTM has no skip connections (released: it has)",
    )


def _read_options_file(path: Path) -> dict[str, Any]:
    data = read_json_capped(path, OPTIONS_CAP, "--options file", ConvertError)
    if not isinstance(data, dict):
        raise ConvertError(f"--options {path}: expected a JSON object")
    return data


def _options(text: str | None) -> dict[str, Any] | Path | None:
    """``--options``: an inline JSON object, else the JSON file that :func:`convert` reads."""
    if text is None:
        return None
    if text.lstrip().startswith("{"):
        return parse_json(text, "--options", ConvertError)
    return Path(text)


def _flag_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options given by the flags of the "what a checkpoint cannot show" group; values no
    options file may hold are refused here, before the checkpoint is read."""
    most = OPTION_LIMITS["char_cnn.max_characters_per_token"]
    chars = args.max_characters_per_token
    if chars is not None and not 3 <= chars <= most:
        raise UsageError(f"--max-characters-per-token: expected an integer from 3 to {most}, found {chars}")
    for name in ("cell_clip", "proj_clip"):
        value = getattr(args, name)
        if value is not None and not 0 < value < math.inf:
            flag = "--" + name.replace("_", "-")
            raise UsageError(f"{flag}: expected a finite positive number, found {value}")
    lstm: dict[str, Any] = {}
    cnn: dict[str, Any] = {}
    if args.activation is not None:
        cnn["activation"] = args.activation
    if args.max_characters_per_token is not None:
        cnn["max_characters_per_token"] = args.max_characters_per_token
    for name in ("cell_clip", "proj_clip"):
        if getattr(args, name) is not None:
            lstm[name] = getattr(args, name)
    if args.no_skip_connections:
        lstm["use_skip_connections"] = False
    return {k: v for k, v in (("lstm", lstm), ("char_cnn", cnn)) if v}


def run(args: argparse.Namespace) -> int:
    """Convert; one line on standard error says what was written."""
    flags = _flag_options(args)
    options = _options(args.options)
    if isinstance(options, dict) or flags:
        base = _read_options_file(options) if isinstance(options, Path) else options or {}
        if not isinstance(base, dict):
            raise ConvertError(f"--options: expected a JSON object, found {type(base).__name__}")
        for section, values in flags.items():
            if not isinstance(base.get(section, {}), dict):
                raise ConvertError(f"--options: {section}: expected a JSON object")
            base[section] = {**base.get(section, {}), **values}
        options = base
    result = convert(args.src, args.output, format=args.format, options=options, overwrite=args.overwrite)
    lstm, cnn = result.config.lstm, result.config.char_cnn
    notes = [f"{len(result.ignored)} variable(s) not converted"] if result.ignored else []
    if result.filled:
        notes.append(f"identity for {', '.join(result.filled)}")
    if result.mix is not None and "candidates" in result.mix:
        notes.append(
            f"{len(result.mix['candidates'])} layer mixes found, none applied (listed in {MIX_FILE})"
        )
    elif result.mix is not None:
        notes.append(f"layer mix in {MIX_FILE}, applied by elmo.load")
    if result.assumed:
        notes.append(f"assumed {', '.join(result.assumed)}")
    print(
        f"elmo convert: wrote {result.out_dir} from {result.format} checkpoint {result.checkpoint} "
        f"(lstm {lstm.n_layers}x{lstm.dim}/{lstm.projection_dim}, {cnn.n_filters} filters, "
        f"{cnn.n_highway} highway{'; ' + '; '.join(notes) if notes else ''})",
        file=sys.stderr,
    )
    return 0
