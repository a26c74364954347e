"""python -m moejax.train --config=configs/default.py --workdir=DIR [--config.x.y=v ...]

Also installed as the `moejax-train` command. Resumes from DIR's latest
checkpoint when there is one. The flags: moejax.train.entry.
"""
from __future__ import annotations

from moejax import cli
from moejax.train.entry import run_job


def main(argv):
    from moejax.train.trainer import train

    run_job(argv, train)


def run():
    cli.run(main)


if __name__ == "__main__":
    run()
