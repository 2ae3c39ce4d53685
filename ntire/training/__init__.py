"""Training: fit() and what it needs - inputs, distributed setup, validation, checkpoints, tracking, export."""
