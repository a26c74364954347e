"""Training: config, mesh and logical partitioning, optimizer, steps,
checkpoints, metrics, init checkpoints, and the loop (`trainer.train`) that
pretrains, fine-tunes and evaluates."""
