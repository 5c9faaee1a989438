"""A run's life: session, record, checkpoints, preemption, loggers, callbacks, how it ends."""
