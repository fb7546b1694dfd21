"""What a trial is, on either backend: its TrainingArguments, its budget in evaluations, and what a search records
of one of its evaluations."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from tunetrain.errors import ConfigError
from tunetrain.task import load_task
from tunetrain.tuning.components import SCHEDULERS

if TYPE_CHECKING:
    from tunetrain.args import TrainingArguments
    from tunetrain.checkpoint import TrainerState
    from tunetrain.experiment import Experiment
    from tunetrain.tuning.config import SearchConfig


def trial_arguments(
    experiment: Experiment,
    config: SearchConfig,
    output_dir: str,
    *,
    logging_dir: str | None = None,
    save_total_limit: int = 1,
) -> TrainingArguments:
    """A trial's TrainingArguments: every evaluation is reported, with the checkpoint saved at that evaluation,
    and the loop tracks its best evaluation (the trial's value) by the search's metric and mode."""
    args = experiment.training_arguments(output_dir=output_dir)  # SearchConfig checked it evaluates
    args = args.replace(
        save_strategy=args.eval_strategy,
        save_steps=args.eval_steps,
        save_total_limit=save_total_limit,  # the best counts against it and survives, so does the latest
        load_best_model_at_end=False,
        disable_tqdm=True,
        logging_dir=logging_dir,
    )
    # several objectives: the first chooses the best checkpoint, whose evaluation gives the trial's values
    metric, greater_is_better = config.metrics[0], config.modes[0] == "max"
    if args.objective_metric != metric or args.greater_is_better != greater_is_better:
        args = args.replace(metric_for_best_model=metric, greater_is_better=greater_is_better)
    return args


def check_objectives(metrics: dict[str, Any], names: tuple[str, ...]) -> None:
    """A ConfigError naming each objective of several the evaluation did not return (the first one the loop checks
    itself, as `metric_for_best_model`)."""
    missing = [name for name in names[1:] if name not in metrics]
    if missing:
        available = ", ".join(sorted(key for key in metrics if key.startswith("eval_")))
        raise ConfigError(f"`search.metric` names {', '.join(missing)}, but the evaluation returned only {available}")


def evaluation_report(metrics: dict[str, Any], state: TrainerState) -> dict[str, Any]:
    """What a search records of one evaluation: its numeric metrics, and where in the run it happened."""
    report = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    report.update(
        evaluation=state.num_evaluations,
        step=state.global_step,
        epoch=state.epoch,
        num_processes=state.num_processes,
    )
    return report


def evaluation_budget(args: TrainingArguments, steps_per_epoch: int | None) -> int:
    """How many evaluations one full run makes (ASHA's max_t by default)."""
    if args.eval_strategy == "epoch" and args.max_steps <= 0:
        return max(1, math.ceil(args.num_train_epochs))
    if steps_per_epoch is None:
        raise ValueError("steps_per_epoch is needed to count the evaluations of this run")
    max_steps = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * steps_per_epoch)
    if args.eval_strategy == "epoch":
        return max(1, math.ceil(max_steps / steps_per_epoch))
    return max(1, max_steps // args.eval_steps)


def steps_per_epoch(experiment: Experiment, num_processes: int = 1) -> int:
    """Optimizer steps in one epoch of the experiment's task on `num_processes` data-parallel processes (a global
    batch: per-device batch x processes; loads the task in this process)."""
    args = experiment.train
    global_batch = args.per_device_train_batch_size * num_processes
    batches = math.ceil(len(load_task(experiment.task).train_dataset) / global_batch)
    return math.ceil(batches / args.gradient_accumulation_steps)


def budget_for(experiment: Experiment, num_processes: int = 1) -> int:
    args = experiment.train
    needs_data = not (args.eval_strategy == "epoch" and args.max_steps <= 0)
    return evaluation_budget(args, steps_per_epoch(experiment, num_processes) if needs_data else None)


def max_t_for(experiment: Experiment, config: SearchConfig) -> int | None:
    """The scheduler's last rung (ASHA's max_t): the configured one, else the run's budget in evaluations; None for
    a scheduler without rungs. Raises ConfigError when the budget cannot hold the first rung."""
    scheduler = config.scheduler
    if not SCHEDULERS[scheduler.type].uses_max_t:
        return None
    workers = config.resources_per_trial.workers if config.backend == "ray" else 1
    return scheduler.resolved_max_t(budget_for(experiment, workers) if scheduler.max_t is None else 0)
