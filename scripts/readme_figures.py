"""Measure the figures the README and the config docstrings quote about the
first-hour path, and write them to results/readme/figures.json.

    python scripts/readme_figures.py [--out results/readme/figures.json]

Runs, exactly as the README tells a new user to (2 CPU cores: about 5
minutes): the embedded default (`configs/default.py`, 1000 steps), then the
offline fine-tuning demo from its checkpoint (`configs/finetune/default.py`,
300 steps). `sentences(figures)` renders the sentences that quote them;
tests/test_cli.py checks that each is in the file that quotes it, so a
figure can only change here, by measuring it again.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "results", "readme", "figures.json")


def _run(module: str, args: list[str]) -> float:
    """Runs a command line as a user would; returns its wall time in seconds."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def _metrics(workdir: str) -> tuple[dict[int, dict], dict[int, dict]]:
    sys.path.insert(0, ROOT)
    from moejax.train.metrics import read_metrics

    return read_metrics(workdir)


def measure() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        pretrain, tuned = os.path.join(tmp, "default"), os.path.join(tmp, "topics")
        seconds = _run("moejax.train", ["--config=configs/default.py", f"--workdir={pretrain}"])
        train, evals = _metrics(pretrain)
        steps = sorted(train)
        default = {
            "seconds": seconds, "steps": steps[-1],
            "tokens_per_s": statistics.median(train[s]["tokens_per_s"] for s in steps[1:]),
            "first_cross_entropy": train[steps[0]]["cross_entropy"],
            "last_cross_entropy": train[steps[-1]]["cross_entropy"],
            "eval_loss": {str(s): row["eval_loss"] for s, row in sorted(evals.items())}}
        seconds = _run("moejax.finetune", ["--config=configs/finetune/default.py",
                                           f"--init_checkpoint={pretrain}", f"--workdir={tuned}"])
        _, evals = _metrics(tuned)
        finetune = {"seconds": seconds,
                    "accuracy": {str(s): row["eval_embedded_topics/accuracy"]
                                 for s, row in sorted(evals.items())},
                    "macro_f1": {str(s): row["eval_embedded_topics/macro_f1"]
                                 for s, row in sorted(evals.items())}}
    return {"machine": f"{os.cpu_count()} CPU cores", "default": default, "finetune": finetune}


def sentences(figures: dict) -> dict[str, list[str]]:
    """{file: [sentence it must contain]} rendered from `figures`."""
    d, f = figures["default"], figures["finetune"]
    e = d["eval_loss"]
    minutes = f"{d['seconds'] / 60:.1f}"
    tokens = f"~{d['tokens_per_s'] / 1000:.0f}k tokens/s"
    evals = (f"eval loss {e['200']:.2f} at step 200, {e['600']:.2f} at step 600 and "
             f"{e['1000']:.2f} at step 1000")
    ce = (f"cross-entropy falls from {d['first_cross_entropy']:.1f} to "
          f"{d['last_cross_entropy']:.2f}")
    acc, f1 = f["accuracy"], f["macro_f1"]
    demo = (f"{acc['100']:.1f}% at step 100, {acc['200']:.1f}% at step 200 and "
            f"{acc['300']:.1f}% at step 300 (macro-F1 {f1['300']:.1f})")
    demo_time = f"the demo takes about {5 * round(f['seconds'] / 5):.0f} s"
    return {"README.md": [f"about {minutes} minutes (1000 steps, {tokens})", ce, evals],
            "docs/finetuning.md": [demo, demo_time],
            "configs/default.py": [f"about {minutes} minutes", tokens, ce, evals],
            "configs/finetune/default.py": [demo, demo_time]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args()
    figures = measure()
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(figures, f, indent=2)
    for file, texts in sentences(figures).items():
        print(f"{file}:")
        for text in texts:
            print(f"  {text}")


if __name__ == "__main__":
    main()
