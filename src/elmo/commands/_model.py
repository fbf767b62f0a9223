"""The model arguments of the commands that embed text, and the one place they become a model.

``--model/-m`` (a directory or a released model's name; none or ``default``: the bundled
model), or ``--options`` with ``--weights``; ``--device``; and, for the commands that run
the biLM over text, the engine group ``--engine/--precision/--cache-size``.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from elmo.errors import UsageError

if TYPE_CHECKING:
    from elmo.module import ElmoModule

__all__ = ["add_device_arg", "add_engine_args", "add_model_args", "check_device", "load_model"]

_MODEL_HELP = (
    "model directory holding options.json and weights.hdf5, or a released model's name "
    "(downloaded once; see `elmo models`); default: the small model bundled with the package"
)


def add_device_arg(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--device``: where an inference model runs."""
    parser.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda:0 (default: cpu)")


def check_device(device: str | None) -> None:
    """Raise :class:`UsageError` for a ``--device`` torch cannot name or this machine lacks,
    before any model is loaded."""
    if device is None:
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise UsageError(
            f"--device: expected a torch device such as cpu or cuda:0, found {device!r}"
        ) from None
    if dev.type == "cpu":
        return
    # torch.cuda, torch.xpu, ... (MPS reports through torch.backends.mps).
    backend = torch.backends.mps if dev.type == "mps" else getattr(torch, dev.type, None)
    available = getattr(backend, "is_available", None)
    if available is None or not available():
        raise UsageError(f"--device {device}: no {dev.type} device is available (torch {torch.__version__})")
    count = getattr(backend, "device_count", None)
    if dev.index is not None and count is not None and dev.index >= count():
        raise UsageError(f"--device {device}: there are {count()} {dev.type} device(s), numbered from 0")


def add_model_args(parser: argparse.ArgumentParser, *, positional: bool = False, device: bool = True) -> None:
    """Add the ``model`` argument group: ``--model/-m``, ``--options``, ``--weights``, ``--device``.

    ``positional``: the model is the optional positional ``MODEL`` instead of ``--model/-m``.
    ``device``: add ``--device``.
    """
    g = parser.add_argument_group("model")
    if positional:
        g.add_argument("model", nargs="?", metavar="MODEL", help=_MODEL_HELP)
    else:
        g.add_argument("--model", "-m", help=_MODEL_HELP)
    g.add_argument("--options", help="options.json of the model (with --weights)")
    g.add_argument("--weights", help="weights.hdf5 of the model (with --options)")
    if device:
        add_device_arg(g)


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    """Add the ``engine`` argument group: ``--engine``, ``--precision``, ``--cache-size``."""
    g = parser.add_argument_group("engine")
    g.add_argument(
        "--engine",
        choices=("auto", "fast", "plain"),
        default="auto",
        help="fast: the fast inference engine (what auto picks); plain: the reference model",
    )
    g.add_argument(
        "--precision",
        choices=("float32", "bfloat16", "int8"),
        default="float32",
        help="the fast engine's arithmetic; bfloat16 and int8 trade a little accuracy for speed "
        "on CPUs with bfloat16 or VNNI units (default: float32)",
    )
    g.add_argument(
        "--cache-size",
        type=int,
        default=None,
        help="distinct tokens whose context-free representations the fast engine keeps "
        "(0: none; default: 32768)",
    )


def load_model(args: argparse.Namespace, *, stateful: bool = False) -> ElmoModule:
    """The model the arguments of :func:`add_model_args` (and :func:`add_engine_args`, if the
    command has them: else the library's defaults) name, loaded for inference.

    Raises :class:`UsageError` for arguments that contradict each other and
    :class:`FileNotFoundError` for a model that is neither a directory nor a known name.
    A released model is downloaded first if needed (silently with ``--quiet``).
    """
    import elmo

    model = args.model
    if model and (args.options or args.weights):
        raise UsageError("give either --model or --options with --weights, not both")
    if bool(args.options) != bool(args.weights):
        raise UsageError("--options and --weights go together")
    engine: dict[str, Any] = {"device": getattr(args, "device", None)}
    for name in ("engine", "precision", "cache_size"):
        if getattr(args, name, None) is not None:
            engine[name] = getattr(args, name)
    if engine.get("cache_size", 0) < 0:
        raise UsageError(f"--cache-size: expected an integer >= 0, found {engine['cache_size']}")
    if engine.get("engine") == "plain" and engine.get("precision", "float32") != "float32":
        raise UsageError(f"--precision {engine['precision']} needs the fast engine, not --engine plain")
    check_device(engine["device"])
    source = (args.options, args.weights) if args.options else (model, None)
    progress = False if getattr(args, "quiet", False) else None
    return elmo.load(*source, stateful=stateful, progress=progress, **engine)
