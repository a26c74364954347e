"""python -m moejax.finetune --config=configs/finetune/<config>.py[:task]
    --init_checkpoint=PATH|hf:google/switch-base-8 --workdir=DIR [--eval_only]

Also installed as `moejax-finetune`. Takes every flag of `moejax.train`
(config overrides, multi-host). Resumes from DIR's latest checkpoint when
there is one; --init_checkpoint only seeds a fresh run. --eval_only decodes
data.eval_split ('validation': scores; 'test': leaderboard files) with the
latest checkpoint of DIR, else the init checkpoint, and writes
DIR/eval/<split>_step_<N>/{scores.json,scores.md,<benchmark>/...}.
"""
from __future__ import annotations

from absl import flags

from moejax import cli
from moejax.train.entry import run_job

_INIT = flags.DEFINE_string("init_checkpoint", None,
                            "Params to start from (overrides config.init_checkpoint): a moejax "
                            "workdir or <workdir>/checkpoints/<step>, or hf:<model>.")
_EVAL_ONLY = flags.DEFINE_bool("eval_only", False, "Only decode and score data.eval_split.")


def main(argv):
    from moejax.train.trainer import evaluate_only, train

    run_job(argv, evaluate_only if _EVAL_ONLY.value else train, init_checkpoint=_INIT.value)


def run():
    cli.run(main)


if __name__ == "__main__":
    run()
