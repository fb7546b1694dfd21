"""Where the loop's events go: console progress, TensorBoard, Optuna.

The loop calls every `Reporter` at the same points (train begin, each log line, each evaluation, train end);
a reporter may ask the loop to stop through `TrainerControl`. This is how a search driver reaches a run: the
loop itself knows nothing of Optuna or Ray Tune.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunetrain.formatting import format_value

if TYPE_CHECKING:
    import optuna

    from tunetrain.args import TrainingArguments
    from tunetrain.checkpoint import TrainerState


@dataclass
class TrainerControl:
    """Set by reporters to stop the run after the current step; `exception` is raised once it has wound down."""

    should_stop: bool = False
    reason: str | None = None
    exception: BaseException | None = None

    def stop(self, reason: str, exception: BaseException | None = None) -> None:
        self.should_stop = True
        self.reason = reason
        self.exception = exception


class Reporter:
    """Base class of the loop's callbacks (`TrainerCallback`, as a Transformers user writes them): every hook does
    nothing. Only the main process's reporters are called.

    The hooks, in order: `on_train_begin(args, state, params)`, `on_step(state)` after every optimizer step,
    `on_log(logs, state)` at each log line, `on_evaluate(metrics, state, control, checkpoint)` after each evaluation
    (and the checkpoint saved at that step, if one was), `on_train_end(metrics, state)`; `close()` instead when the
    run fails. `state` is the run's `TrainerState` (global_step, epoch, best_metric, log_history, ...). Any hook
    may stop the run with `self.control.stop("why")`: it stops after the current optimizer step, and the final
    metrics say `stopped: why`.
    """

    control: TrainerControl  # the run's, set before on_train_begin

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, params: dict[str, Any]) -> None:
        pass

    def on_step(self, state: TrainerState) -> None:
        """Called after every optimizer step: keep it cheap (no device syncs)."""

    def on_log(self, logs: dict[str, float], state: TrainerState) -> None:
        pass

    def on_evaluate(
        self, metrics: dict[str, float], state: TrainerState, control: TrainerControl, checkpoint: Path | None
    ) -> None:
        """After an evaluation and, when one was saved at the same step, its checkpoint."""

    def on_train_end(self, metrics: dict[str, float], state: TrainerState) -> None:
        pass

    def close(self) -> None:
        """Release files and terminals; called instead of on_train_end when the run fails."""


TrainerCallback = Reporter  # Transformers' name for the same thing


class ConsoleReporter(Reporter):
    """A progress bar on a terminal; plain log lines otherwise (or when `disable_tqdm` is true)."""

    def __init__(self, *, use_bar: bool | None = None, stream: Any = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.use_bar = use_bar if use_bar is not None else self.stream.isatty()
        self._bar = None

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, params: dict[str, Any]) -> None:
        if self.use_bar:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=state.max_steps, initial=state.global_step, file=self.stream, unit="step")

    def on_step(self, state: TrainerState) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def on_log(self, logs: dict[str, float], state: TrainerState) -> None:
        self._write(logs, state)

    def on_evaluate(
        self, metrics: dict[str, float], state: TrainerState, control: TrainerControl, checkpoint: Path | None
    ) -> None:
        self._write(metrics, state)

    def on_train_end(self, metrics: dict[str, float], state: TrainerState) -> None:
        self.close()
        self._write(metrics, state)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _write(self, values: dict[str, float], state: TrainerState) -> None:
        line = f"step {state.global_step}/{state.max_steps} " + " ".join(
            f"{k}={format_value(v)}" for k, v in values.items() if k != "step"
        )
        if self._bar is not None:
            self._bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)


class TensorBoardReporter(Reporter):
    """TensorBoard events through tensorboardX: train/*, eval/*, and the params with final metrics as hparams."""

    def __init__(self, logdir: str | Path) -> None:
        self.logdir = Path(logdir)
        self._writer = None
        self._params: dict[str, Any] = {}

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, params: dict[str, Any]) -> None:
        from tensorboardX import SummaryWriter

        # purge_step: on resume, events a killed run wrote after its checkpoint are hidden, not shown twice
        purge = state.global_step + 1 if state.global_step else None
        self._writer = SummaryWriter(str(self.logdir), purge_step=purge)
        self._params = dict(params)

    def on_log(self, logs: dict[str, float], state: TrainerState) -> None:
        for key in ("loss", "learning_rate", "grad_norm"):
            if key in logs:
                self._writer.add_scalar(f"train/{key}", logs[key], state.global_step)
        for key, value in logs.items():  # an evaluation logged, not judged (eval_on_start)
            if key.startswith("eval_") and isinstance(value, (int, float)):
                self._writer.add_scalar(f"eval/{key[len('eval_') :]}", value, state.global_step)

    def on_evaluate(
        self, metrics: dict[str, float], state: TrainerState, control: TrainerControl, checkpoint: Path | None
    ) -> None:
        for key, value in metrics.items():
            if key.startswith("eval_") and isinstance(value, (int, float)):
                self._writer.add_scalar(f"eval/{key[len('eval_') :]}", value, state.global_step)

    def on_train_end(self, metrics: dict[str, float], state: TrainerState) -> None:
        hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in self._params.items()}
        finals = {f"hparam/{k}": v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        if hparams and finals:
            self._writer.add_hparams(hparams, finals, name="hparams")
        self.close()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class OptunaReporter(Reporter):
    """Reports the objective to an `optuna.Trial` at every evaluation and stops the run when Optuna prunes it."""

    def __init__(self, trial: optuna.Trial, metric: str) -> None:
        self.trial = trial
        self.metric = metric

    def on_evaluate(
        self, metrics: dict[str, float], state: TrainerState, control: TrainerControl, checkpoint: Path | None
    ) -> None:
        import optuna

        study = getattr(self.trial, "study", None)
        if study is not None and len(study.directions) > 1:
            # Optuna takes no intermediate values on several objectives: a search reports each rung's values to its
            # Pareto pruner itself (tunetrain.tuning.pareto_pruner)
            return
        value = metrics[self.metric]
        self.trial.report(value, step=state.num_evaluations)
        if self.trial.should_prune():
            message = f"pruned at evaluation {state.num_evaluations} (step {state.global_step}, {self.metric}={value})"
            control.stop("pruned", optuna.TrialPruned(message))
