"""What the trainer prints (process 0, above the progress bar): one line
per evaluation, and a closing summary saying where everything went."""
from __future__ import annotations

import os

# Task scores shown per evaluation when a mixture has more (the rest are in
# metrics.jsonl and <workdir>/eval/).
MAX_TASK_SCORES = 6


def eval_line(step: int, metrics: dict[str, float]) -> str:
    """'step 200: eval loss 2.1681 (dropless 2.1702), accuracy 0.5123' and,
    when fine-tuning, the task scores; metrics: the 'eval_' metrics."""
    loss, dropless = metrics["eval_loss"], metrics.get("eval_dropless_loss")
    line = f"step {step}: eval loss {loss:.4f}"
    if dropless is not None and abs(dropless - loss) > 5e-5:
        line += f" (dropless {dropless:.4f})"
    line += f", accuracy {metrics['eval_accuracy']:.4f}"
    routing = ("eval_encoder/", "eval_decoder/", "eval_moe/")
    tasks = {k[len("eval_"):]: v for k, v in metrics.items()
             if ("/" in k and not k.startswith(routing)) or k.endswith("_average")}
    if len(tasks) > MAX_TASK_SCORES:  # a mixture: its averages and each task's score
        tasks = {k: v for k, v in tasks.items() if k.endswith(("/score", "_average"))}
    if tasks:
        line += "; " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(tasks.items()))
    return line


def _duration(seconds: float) -> str:
    minutes, s = divmod(int(round(seconds)), 60)
    h, m = divmod(minutes, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def summary(workdir: str, first: int, done: int, total: int, seconds: float,
            tokens_per_s: float | None, last: dict[str, float], latest_checkpoint: int | None,
            stopped: bool) -> str:
    """The closing lines: steps and wall time, tokens/s in the train steps
    (None: no step was timed), the last train and eval figures, and the
    paths of metrics, checkpoints, TensorBoard and plots."""
    steps = done - first
    rate = f", {tokens_per_s:,.0f} tokens/s in the train steps" if tokens_per_s else ""
    how = f"stopped by SIGTERM at step {done} of {total}" if stopped else f"trained to step {done}"
    lines = [f"{how}: {steps} steps in {_duration(seconds)}{rate}"]
    figures = [f"{name} {last[key]:.4f}" for key, name in
               (("loss", "train loss"), ("eval_loss", "eval loss"),
                ("eval_dropless_loss", "dropless eval loss"), ("eval_accuracy", "eval accuracy"))
               if key in last]
    if figures:
        lines.append("last " + ", ".join(figures))
    where = os.fspath(workdir)
    kept = f" (latest: step {latest_checkpoint})" if latest_checkpoint is not None else ""
    lines += [f"metrics      {where}/metrics.jsonl",
              f"checkpoints  {where}/checkpoints{kept}",
              f"tensorboard  tensorboard --logdir {where}/tensorboard",
              f"plots        python scripts/plot_metrics.py {where}"]
    return "\n".join(lines)
