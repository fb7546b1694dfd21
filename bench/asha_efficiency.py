"""ASHA against no early stopping on MNIST-1D (CNN): epochs and wall time to a target accuracy, side by side.

Three searches of one experiment (the CNN of search_spaces/mnist1d_cnn.yaml: its task, training settings and
space; 30 epochs, one evaluation per epoch), with the same number of trials and the same seed, one after the other
on one local Ray (2 CPUs, 2 trials at a time; `--backend optuna`: in-process, one at a time):

    tpe+asha      TPE, ASHA (grace_period 2, reduction_factor 3: rungs at 2, 6 and 18 of 30 evaluations)
    tpe           TPE, no early stopping: every trial trains all its epochs
    random+asha   random sampler, the same ASHA

tpe+asha against tpe changes only the scheduler (the issue's question); tpe+asha against random+asha changes only
the sampler, so the third search is random search *with* ASHA, which tells whether TPE adds anything on top of the
early stopping. (Same seed: TPE's first 10 trials are its random start-up, drawn from the same stream as the random
sampler's, so all three searches start from the same configurations.)

Method, from each search's history.parquet (one row per evaluation, as the driver recorded it):
- each evaluation is put on the search's clock (its trial's start + its `time_s`, both driver times, minus the moment
  `tunetrain.search` was called) and counts the epochs its trial trained since that trial's previous evaluation;
  an ASHA-stopped trial trains nothing past its last report, so the sum over a search is its total epochs trained;
- epochs / seconds to target: the cumulative epochs and the seconds up to the first evaluation, in time order,
  whose eval accuracy is >= `--target` (epochs a concurrent trial had in flight, under one, are not counted);
- best at budget: the best eval accuracy a search had reached when it had spent `--budget-epochs` epochs
  (default: what tpe+asha spent in all);
- test: the search's selected model (its best trial's best checkpoint, exported) is scored once on the test split,
  which no search sees; nothing is retrained. A search selects on eval accuracy (500 held-out training examples),
  so the target is stated on eval, and "no loss in final best accuracy" is judged on test (1000 examples).

Epochs do not depend on the machine; wall seconds do (this machine is shared): the ratios are the figures. Reading
them: the default target, 0.95, is what this CNN reaches at its default settings; at 0.90 and below one of the first
trials (the same configurations in every search) reaches it within its first epochs, and the ratio is ~1 whatever
the scheduler does. Ray's ASHA is asynchronous: the first trials to reach a rung always go on, so with 2 trials at a
time the ASHA search's first two trials train all their epochs. One seed, one run: rerun with `--seed` to see the
spread.

    python bench/asha_efficiency.py [--trials 16] [--epochs 30] [--target 0.95] [--budget-epochs N]
                                    [--backend ray|optuna] [--seed 0] [--keep DIR]

Target (issue 5): ASHA reaches the target with <= 1/3 of the epochs of the search without early stopping, and its
selected model is no less accurate on test.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tunetrain import Experiment, SearchResult, Task

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # a local Ray on 127.0.0.1, before Ray is imported
os.environ.setdefault("OMP_NUM_THREADS", "1")

# name -> (sampler, scheduler); the first is ASHA, the second the same search without early stopping
SEARCHES = {
    "tpe+asha": ("tpe", {"type": "asha", "grace_period": 2, "reduction_factor": 3}),
    "tpe": ("tpe", "none"),
    "random+asha": ("random", {"type": "asha", "grace_period": 2, "reduction_factor": 3}),
}


@dataclass(frozen=True)
class Evaluation:
    at_s: float  # seconds since the search was started
    epochs: float  # epochs its trial trained since its previous evaluation
    accuracy: float  # eval accuracy


@dataclass
class Outcome:
    name: str
    wall_s: float
    trials: int
    pruned: int
    timeline: list[Evaluation]  # in time order
    best_eval: float
    test_accuracy: float

    @property
    def total_epochs(self) -> float:
        return sum(e.epochs for e in self.timeline)


def experiment_for(name: str, sampler: str, scheduler: Any, cli: argparse.Namespace, storage: Path) -> Experiment:
    from tunetrain.experiment import experiment_from_dict

    return experiment_from_dict(
        {
            "name": name.replace("+", "-"),
            "task": "tunetrain.tasks.mnist1d:cnn",
            "train": {"num_train_epochs": cli.epochs, "per_device_train_batch_size": 64,
                      "per_device_eval_batch_size": 500, "lr_scheduler_type": "cosine", "warmup_ratio": 0.1,
                      "logging_strategy": "epoch", "eval_strategy": "epoch", "save_strategy": "epoch",
                      "metric_for_best_model": "accuracy"},
            "space": {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
                      "weight_decay": {"type": "float", "low": 0.0, "high": 0.2},
                      "channels": {"type": "int", "low": 8, "high": 128, "log": True},
                      "kernel_size": {"type": "categorical", "choices": [3, 5, 7]},
                      "dropout": {"type": "float", "low": 0.0, "high": 0.5}},
            "search": {"backend": cli.backend, "num_trials": cli.trials, "max_concurrent_trials": 2,
                       "sampler": sampler, "scheduler": scheduler, "seed": cli.seed, "storage": str(storage)},
        }
    )  # fmt: skip


def run_search(name: str, cli: argparse.Namespace, root: Path, task: Task) -> Outcome:
    """One search, its evaluations on its own clock, and its selected model scored on test."""
    import tunetrain
    from tunetrain.results import read_history

    sampler, scheduler = SEARCHES[name]
    experiment = experiment_for(name, sampler, scheduler, cli, root / "runs")
    start = time.time()
    result = tunetrain.search(experiment, restart=True)  # a kept storage may hold an earlier run of it
    wall = time.time() - start
    if result.best is None:
        raise RuntimeError(f"search {name} has no trial with a finite accuracy")
    timeline = _timeline(result, read_history(result.experiment_dir), start)
    counts = result.counts()
    selected = result.best.export(root / "selected" / experiment.name, force=True)
    return Outcome(
        name=name,
        wall_s=wall,
        trials=len(result.trials),
        pruned=counts["pruned"] + counts["stopped_early"],
        timeline=timeline,
        best_eval=result.best.best_metric,
        test_accuracy=_test_accuracy(selected, experiment, task),
    )


def _timeline(result: SearchResult, history: list[dict], start: float) -> list[Evaluation]:
    started = {t.trial_id: t.started_at for t in result.trials}
    last_epoch: dict[str, float] = {}
    evaluations = []
    for row in sorted(history, key=lambda h: (h["trial_id"], h["evaluation"])):
        trial = row["trial_id"]
        epoch = row["epoch"] if row["epoch"] is not None else float(row["evaluation"])  # one evaluation per epoch
        accuracy = row["metric"] if row["metric"] is not None else math.nan  # a non-finite evaluation
        evaluations.append(Evaluation(started[trial] + row["time_s"] - start, epoch - last_epoch.get(trial, 0.0),
                                      accuracy))  # fmt: skip
        last_epoch[trial] = epoch
    return sorted(evaluations, key=lambda e: e.at_s)


def _test_accuracy(model_dir: Path, experiment: Experiment, task: Task) -> float:
    """The exported model scored on the task's test split, with the experiment's eval batch size."""
    import tunetrain

    args = experiment.training_arguments(output_dir=str(model_dir / "scratch"), report_to="none")
    trainer = tunetrain.Trainer(task, args, model=tunetrain.load_model(model_dir), console=False)
    return trainer.evaluate(task.test_dataset, metric_key_prefix="test")["test_accuracy"]


def _warm_up(task: Task) -> None:
    """Pay the driver's one-time costs (imports, accelerate's set-up) before any search's clock starts: the optuna
    backend trains in this process, and the first search would pay them alone."""
    import optuna  # noqa: F401

    import tunetrain

    with tempfile.TemporaryDirectory() as tmp:
        args = tunetrain.TrainingArguments(output_dir=tmp, report_to="none", per_device_eval_batch_size=500)
        tunetrain.Trainer(task, args, model=task.model_init({}), console=False).evaluate()


def to_target(timeline: list[Evaluation], target: float) -> tuple[float, float] | None:
    """(epochs, seconds) spent up to the first evaluation at or above `target`; None if none reached it."""
    spent = 0.0
    for evaluation in timeline:
        spent += evaluation.epochs
        if evaluation.accuracy >= target:
            return spent, evaluation.at_s
    return None


def best_at(timeline: list[Evaluation], budget_epochs: float) -> float | None:
    """The best eval accuracy reached within `budget_epochs` epochs of the search (None: no evaluation yet)."""
    spent, best = 0.0, None
    for evaluation in timeline:
        spent += evaluation.epochs
        if spent > budget_epochs + 1e-9:
            break
        if math.isfinite(evaluation.accuracy):
            best = evaluation.accuracy if best is None else max(best, evaluation.accuracy)
    return best


def _ratio(numerator: float | None, denominator: float | None) -> str:
    if numerator is None or denominator is None or denominator == 0:
        return "n/a"
    return f"{numerator / denominator:.2f}"


def report(outcomes: list[Outcome], cli: argparse.Namespace, test_size: int) -> None:
    asha, full, _ = outcomes
    budget = cli.budget_epochs if cli.budget_epochs is not None else asha.total_epochs
    header = (f"{'search':<12} {'trials':>6} {'stopped':>7} {'epochs':>7} {'wall s':>7} "
              f"{'ep to ' + format(cli.target, '.2f'):>10} {'s to target':>11} {f'best @{budget:g} ep':>13} "
              f"{'best eval':>9} {'test (sel.)':>11}")  # fmt: skip
    print(header)
    reached = {}
    for o in outcomes:
        reached[o.name] = to_target(o.timeline, cli.target)
        epochs, seconds = reached[o.name] or (None, None)
        at_budget = best_at(o.timeline, budget)
        print(f"{o.name:<12} {o.trials:>6} {o.pruned:>7} {o.total_epochs:>7g} {o.wall_s:>7.1f} "
              f"{'-' if epochs is None else format(epochs, 'g'):>10} "
              f"{'-' if seconds is None else format(seconds, '.1f'):>11} "
              f"{'-' if at_budget is None else format(at_budget, '.3f'):>13} "
              f"{o.best_eval:>9.3f} {o.test_accuracy:>11.3f}")  # fmt: skip
    asha_reached, full_reached = reached[asha.name] or (None, None), reached[full.name] or (None, None)
    p = full.test_accuracy
    standard_error = math.sqrt(max(p * (1 - p), 1e-12) / test_size)
    print(f"epochs to eval accuracy >= {cli.target:.2f}, {asha.name} / {full.name}: "
          f"{_ratio(asha_reached[0], full_reached[0])}  (target <= 0.33)")  # fmt: skip
    print(f"seconds to eval accuracy >= {cli.target:.2f}, {asha.name} / {full.name}: "
          f"{_ratio(asha_reached[1], full_reached[1])}")  # fmt: skip
    print(f"total epochs, {asha.name} / {full.name}: {_ratio(asha.total_epochs, full.total_epochs)}; "
          f"wall, {asha.name} / {full.name}: {_ratio(asha.wall_s, full.wall_s)}")  # fmt: skip
    print(f"test accuracy of the selected model, {asha.name} - {full.name}: "
          f"{asha.test_accuracy - full.test_accuracy:+.3f}  (target >= 0; one standard error on {test_size} test "
          f"examples is {standard_error:.3f})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16, help="trials per search (default 16)")
    parser.add_argument("--epochs", type=int, default=30, help="epochs of a full trial, ASHA's max_t (default 30)")
    parser.add_argument("--target", type=float, default=0.95, help="eval accuracy to reach (default 0.95)")
    parser.add_argument(
        "--budget-epochs",
        type=float,
        default=None,
        help="the fixed compute budget (default: the epochs tpe+asha spent)",
    )
    parser.add_argument("--backend", choices=["ray", "optuna"], default="ray")
    parser.add_argument("--seed", type=int, default=0, help="the samplers' seed, the same for every search")
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="keep the searches in this directory (for `tunetrain report`); default: a temp dir",
    )
    cli = parser.parse_args()
    import logging

    logging.getLogger("tunetrain").setLevel(logging.WARNING)
    from tunetrain import load_task

    task = load_task("tunetrain.tasks.mnist1d:cnn")  # the test split, for scoring the selected models
    _warm_up(task)
    ray_startup = None
    if cli.backend == "ray":
        import ray

        start = time.perf_counter()
        ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
                 log_to_driver=False, logging_level=logging.ERROR)  # fmt: skip
        ray_startup = round(time.perf_counter() - start, 2)
    with tempfile.TemporaryDirectory() as tmp:
        root = cli.keep if cli.keep is not None else Path(tmp)
        outcomes = [run_search(name, cli, root, task) for name in SEARCHES]
    if cli.backend == "ray":
        ray.shutdown()
    settings = {"backend": cli.backend, "ray_startup_s": ray_startup, "trials": cli.trials, "epochs": cli.epochs,
                "target": cli.target, "seed": cli.seed}  # fmt: skip
    print(json.dumps(settings))
    report(outcomes, cli, len(task.test_dataset))


if __name__ == "__main__":
    main()
