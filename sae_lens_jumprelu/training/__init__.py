"""Training loops around SAELens's ``SAETrainer``: lockstep, distributed, checkpoints."""
