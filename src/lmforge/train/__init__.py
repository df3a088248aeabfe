"""The training loop (explicit, on accelerate), checkpoints, schedules, measurements."""
