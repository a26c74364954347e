"""The flags and the job runner of both entry points, `python -m
moejax.train` and `python -m moejax.finetune`: config file and overrides,
workdir, multi-host start, upcycling, --print_config.

Importing moejax.tasks here registers data.source='task', so the config
files these entry points load may name a fine-tuning task."""
from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Callable

from absl import flags
from absl import logging as absl_logging
from ml_collections import config_flags

import moejax.tasks  # noqa: F401  (registers data.source='task' for the config files)
from moejax import cli
from moejax.structured import from_mapping, to_mapping
from moejax.train.config import TrainConfig

CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (get_config()).",
                                          lock_config=True)
WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, tokenizer.")
MULTIHOST = flags.DEFINE_bool(
    "multihost", False, "Call jax.distributed.initialize() first (one process per host). On Cloud "
    "TPU and SLURM the coordinator is detected; elsewhere pass the three flags below.")
COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
UPCYCLE = flags.DEFINE_bool(
    "upcycle", None, "Start this MoE model from the dense init_checkpoint (sparse upcycling: "
    "experts copy the dense FFNs, routers start fresh); overrides config.upcycle.")
PRINT_CONFIG = flags.DEFINE_bool(
    "print_config", False, "Print every config field with its value (after the overrides), one "
    "per line as --config.FIELD=VALUE, and exit; needs no --workdir.")
flags.mark_flags_as_required(["config"])


def run_job(argv, job: Callable[[TrainConfig, str], dict], **overrides) -> None:
    """Parses the config (plus --upcycle and `overrides` of top-level
    TrainConfig fields, where not None), starts multi-host JAX when asked,
    and runs job(cfg, workdir); input errors exit with one line (moejax.cli)."""
    overrides = {"upcycle": UPCYCLE.value, **overrides}
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {argv[1:]}; every option is a --flag")
    if not flags.FLAGS["verbosity"].present:  # orbax logs every save at INFO
        absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("moejax").setLevel(logging.INFO)
    # ml_collections reports a config file that failed to load (OSError) on
    # first use of the value, not while parsing.
    explain = lambda e: cli.config_load_error(sys.argv) if isinstance(e, OSError) \
        else f"config: {e}"
    with cli.input_errors(ValueError, TypeError, OSError, explain=explain):
        cfg = from_mapping(TrainConfig, CONFIG.value)
        cfg = dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    if PRINT_CONFIG.value:
        for field, value in flat_fields(to_mapping(cfg)):
            print(f"--config.{field}={value}")
        return
    if not WORKDIR.value:
        cli.fail("--workdir is required: the directory for checkpoints, metrics and the "
                 "tokenizer (a new one, or a run's to resume it)")
    import jax  # after flag parsing, so --help stays fast

    if MULTIHOST.value:
        # CPU processes need gloo for cross-process collectives; GPU/TPU ignore it.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(COORDINATOR.value, NUM_PROCESSES.value, PROCESS_ID.value)
    from moejax.train.checkpoint import CheckpointError
    from moejax.train.lock import WorkdirLocked
    from moejax.train.trainer import NonFiniteLoss

    with cli.input_errors(ValueError, FileNotFoundError, FileExistsError, NotADirectoryError,
                          IsADirectoryError, PermissionError, CheckpointError, NonFiniteLoss,
                          WorkdirLocked):
        job(cfg, WORKDIR.value)


def flat_fields(mapping, prefix: str = ""):
    """('model.encoder_moe.router.k', 2), ... for a nested config mapping."""
    for key, value in mapping.items():
        if isinstance(value, dict):
            yield from flat_fields(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value
