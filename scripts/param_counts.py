"""Parameter counts of the model configs, from jax.eval_shape (nothing is allocated).

    python scripts/param_counts.py [configs/models/tiny.py configs/models/switch_base.py:128 ...]

Prints total parameters, expert parameters and the parameters one token
activates (each MoE layer's experts counted k/E: top-k uses k, expert choice
one on average at capacity factor 1).
"""
from __future__ import annotations

import argparse
import glob
import os

from flax import traverse_util

from moejax import cli
from moejax.models import T5Config, abstract_params
from moejax.structured import from_mapping, load_config_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT = sorted(glob.glob(os.path.join(ROOT, "configs/models/*.py"))) + [
    os.path.join(ROOT, f"configs/models/switch_base.py:{e}") for e in (16, 32, 128)]


def load_model_config(spec: str) -> T5Config:
    """`path/to/file.py[:arg]` -> T5Config."""
    return from_mapping(T5Config, load_config_file(spec))


def count(cfg: T5Config) -> dict[str, int]:
    shapes = abstract_params(cfg)
    total = experts = active = 0
    for path, leaf in traverse_util.flatten_dict(shapes, sep="/").items():
        n = leaf.size
        total += n
        stack = cfg.encoder_moe if path.startswith("encoder") else cfg.decoder_moe
        if path.split("/")[-1] in ("wi", "wi_0", "wi_1", "wo") and leaf.ndim == 3:
            experts += n
            active += n * stack.router.k // stack.router.num_experts
        else:
            active += n
    return {"total": total, "experts": experts, "active": active}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="*", default=DEFAULT)
    args = parser.parse_args()
    print("| config | params | expert params | active params / token |\n|---|---:|---:|---:|")
    for spec in args.configs:
        if spec.endswith("switch_base.py"):
            spec += ":8"
        c = count(load_model_config(spec))
        name = os.path.relpath(spec, ROOT)
        print(f"| {name} | {c['total'] / 1e6:,.1f}M | {c['experts'] / 1e6:,.1f}M | "
              f"{c['active'] / 1e6:,.1f}M |")


if __name__ == "__main__":
    with cli.input_errors(ValueError, OSError):
        main()
