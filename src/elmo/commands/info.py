"""``elmo info``: a model's configuration, size and outputs, as text or JSON."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from elmo.commands._model import add_model_args, load_model

if TYPE_CHECKING:
    from elmo.module import ElmoModule

__all__ = ["HELP", "configure", "model_facts", "run"]

HELP = "show a model's configuration, size and outputs"


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``elmo info``."""
    add_model_args(parser, positional=True, device=False)
    parser.add_argument("--json", action="store_true", help="print JSON")


def model_facts(module: ElmoModule) -> dict[str, Any]:
    """What ``elmo info --json`` prints (and ``elmo serve`` answers at ``/v1/model``): the
    options, the number of parameters and the outputs' shapes."""
    cfg = module.config
    n_params = sum(p.numel() for p in module.bilm.parameters())
    proj = cfg.lstm.projection_dim
    outputs: dict[str, list[str | int]] = {"word_emb": ["B", "T", proj]}
    for k in range(1, cfg.lstm.n_layers + 1):
        outputs[f"lstm_outputs{k}"] = ["B", "T", 2 * proj]
    outputs.update({"elmo": ["B", "T", 2 * proj], "default": ["B", 2 * proj], "mask": ["B", "T"]})
    return {"options": cfg.to_dict(), "parameters": n_params, "outputs": outputs}


def run(args: argparse.Namespace) -> int:
    """Print the model's summary on standard output."""
    module = load_model(args)
    cfg = module.config
    info = model_facts(module)
    n_params, outputs = info["parameters"], info["outputs"]
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    c, lstm = cfg.char_cnn, cfg.lstm
    print(f"parameters:   {n_params:,} ({n_params * 4 / 2**20:.1f} MB as float32)")
    print(
        f"char CNN:     {len(c.filters)} filters, {c.n_filters} wide, {c.activation}, "
        f"char embedding {c.embedding_dim}, {c.max_characters_per_token} characters per token"
    )
    print(f"highway:      {c.n_highway} layer(s)")
    print(
        f"biLSTM:       {lstm.n_layers} layers x 2 directions, {lstm.dim} cells, "
        f"projection {lstm.projection_dim}, "
        f"cell clip {lstm.cell_clip}, projection clip {lstm.proj_clip}, "
        f"skip connections {'yes' if lstm.use_skip_connections else 'no'}"
    )
    print("outputs:")
    for name, shape in outputs.items():
        print(f"  {name:14s} [{', '.join(map(str, shape))}]")
    return 0
