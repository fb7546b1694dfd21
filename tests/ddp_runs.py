"""What the data-parallel tests run in each process (spawned processes import it by name)."""

from __future__ import annotations

import os
from typing import Any

from tunetrain import TrainingArguments
from tunetrain.loop import Trainer
from tunetrain.reporting import Reporter

TASK = "tests/tiny_task.py:task"


class StopAt(Reporter):
    """Stops the run (the main process's reporter) once optimizer step `step` is done."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step(self, state) -> None:
        if state.global_step == self.step:
            self.control.stop("asked")


class KillAt(Reporter):
    """Kills its process (SIGKILL) once optimizer step `step` is done (before anything that step saves): the main
    process dies mid-run, and the launcher stops the others."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step(self, state) -> None:
        if state.global_step == self.step:
            os.kill(os.getpid(), 9)


def fit(
    args: dict[str, Any],
    params: dict[str, Any],
    resume: bool = False,
    kill_at: int | None = None,
    stop_at: int | None = None,
) -> dict:
    """One run in this process (of a launch); returns its log history, metrics and final weights."""
    reporters = [KillAt(kill_at)] if kill_at is not None else []
    reporters += [StopAt(stop_at)] if stop_at is not None else []
    # on the CPU (gloo) even where there is a GPU: these runs are the CPU acceptance checks
    trainer = Trainer(TASK, TrainingArguments(**args, use_cpu=True), reporters=reporters, console=False)
    output = trainer.train(trial=params, resume_from_checkpoint=resume or None)
    model = trainer.accelerator.unwrap_model(trainer.model)
    predictions = trainer.predict(trainer.task.eval_dataset).predictions
    return {
        "global_step": output.global_step,
        "predictions": predictions,
        "log_history": trainer.state.log_history,
        "metrics": output.metrics,
        "weights": {k: v.detach().clone() for k, v in model.state_dict().items()},
    }
