"""Checkpoint dirs with every file a checkpoint holds (placeholder contents), for tests that move them around."""

from __future__ import annotations

import json
from pathlib import Path

from tunetrain.storage.layout import TRAINER_STATE_NAME, WEIGHTS_NAME
from tunetrain.tuning.lineage import CHECKPOINT_FILES


def write_checkpoint(trial: Path, step: int, *, best: int | None = None, weights: str = "w") -> None:
    """`trial/checkpoint-{step}`: its weights file says `{weights}-{step}`; its state names `best` as the best."""
    path = trial / f"checkpoint-{step}"
    path.mkdir(parents=True)
    for name in CHECKPOINT_FILES:
        (path / name).write_text("{}")
    (path / WEIGHTS_NAME).write_text(f"{weights}-{step}")
    best_path = str(trial / f"checkpoint-{best}") if best is not None else None
    (path / TRAINER_STATE_NAME).write_text(json.dumps({"global_step": step, "best_model_checkpoint": best_path}))
