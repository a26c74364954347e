"""Convert between Hugging Face T5 / Switch checkpoints and moejax params.

    # HF (hub name or local dir) -> moejax: params as an orbax checkpoint + config JSON
    python scripts/convert_hf.py import google/switch-base-8 /tmp/switch8
    # moejax -> HF checkpoint directory
    python scripts/convert_hf.py export /tmp/switch8 /tmp/switch8_hf

The moejax side is a directory with `config.json` (T5Config fields) and
`params/` (an orbax PyTree checkpoint).
"""
from __future__ import annotations

import argparse
import json
import os

import orbax.checkpoint as ocp

from moejax import cli, convert
from moejax.models import T5Config
from moejax.structured import from_mapping, to_mapping


def save(cfg: T5Config, params, out_dir: str):
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise FileExistsError(f"output directory {out_dir!r} exists and is not empty")
    os.makedirs(out_dir, exist_ok=True)
    with ocp.StandardCheckpointer() as checkpointer:  # waits for the async write
        checkpointer.save(os.path.abspath(os.path.join(out_dir, "params")), params)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(to_mapping(cfg), f, indent=2)


def load(in_dir: str):
    if not os.path.exists(os.path.join(in_dir, "config.json")):
        raise FileNotFoundError(f"export source {in_dir!r} is not a directory written by "
                                "`convert_hf.py import` (it has no config.json and params/)")
    with open(os.path.join(in_dir, "config.json")) as f:
        cfg = from_mapping(T5Config, json.load(f))
    params = ocp.StandardCheckpointer().restore(os.path.abspath(os.path.join(in_dir, "params")))
    return cfg, params


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("direction", choices=("import", "export"))
    parser.add_argument("source", help="import: HF hub name or directory; export: moejax directory")
    parser.add_argument("target", help="import: moejax directory; export: HF directory")
    for name, when in (("capacity_factor", "training"), ("eval_capacity_factor", "evaluation")):
        parser.add_argument(f"--{name}", type=float, default=None,
                            help=f"import of Switch: the routers' {when} capacity factor "
                            "(default: no capacity limit, nothing dropped)")
    args = parser.parse_args()
    if args.direction == "import":
        overrides = {name: getattr(args, name) for name in ("capacity_factor",
                                                            "eval_capacity_factor")
                     if getattr(args, name) is not None}
        cfg, params = convert.from_hf(args.source, **overrides)
        save(cfg, params, args.target)
    else:
        cfg, params = load(args.source)
        convert.to_hf(cfg, params, args.target)
    print(f"wrote {args.target}")


if __name__ == "__main__":
    with cli.input_errors(ValueError, OSError):
        main()
