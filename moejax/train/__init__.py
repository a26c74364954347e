"""Training: device mesh and partitioning (the trainer itself lands with issue 6)."""
