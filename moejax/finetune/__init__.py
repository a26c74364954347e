"""Fine-tuning on GLUE / SuperGLUE / the embedded task: `python -m moejax.finetune`.

The trainer's loop, checkpoints, metrics and resume, with a task source
(`data.source='task'`), params from `--init_checkpoint`, and evaluation by
decoding with the official metrics (moejax.tasks.evaluate).
"""
