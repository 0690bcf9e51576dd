"""The training engine: loop (trainer), LARS and schedules (optim), checkpoints, distributed helpers, logging."""
