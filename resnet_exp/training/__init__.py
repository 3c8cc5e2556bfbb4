"""One training run end to end (train.py): the frozen stages' cached outputs (features.py),
Lightning callbacks (callbacks.py) and checkpoint files that are complete or absent
(checkpoints.py)."""
