"""Early stopping, pausing and population-based training against no stopping on MNIST-1D (CNN): anytime curves.

Four searches of one experiment (the CNN of search_spaces/mnist1d_cnn.yaml: its task, training settings and space,
one evaluation per epoch), each TPE with the same seed and the same number of trials, one after the other on one
local Ray (2 CPUs, 2 trials at a time; `--backend optuna`: in-process, one at a time, for the first two only):

    none          no early stopping: every trial trains all its epochs
    asha          Ray's asynchronous ASHA (grace_period G, reduction_factor 3): a trial below the rung's top third
                  stops for good
    asha-promote  successive halving that pauses: a trial waits at a rung, and the best of a rung are resumed from
                  their checkpoints (asha with `promote: true`)
    pbt           population-based training (perturbation_interval P evaluations, quantile_fraction 0.25,
                  resample_probability 0.25, mutating learning_rate, weight_decay and dropout): the bottom quarter
                  takes a top-quarter trial's checkpoint and perturbed params; the population is the trials

The question (issue 5, second form): with 16 trials a search without stopping reached eval 0.95 in its third trial,
so the epochs to that target were set by the first trials (the same configurations in every search, which ASHA
always lets through) whatever the scheduler did. Here, with 48 trials a search:
- the anytime curve: the best eval accuracy a search has reached against the epochs it has trained, all trials
  together (one PNG per seed in `--out`, every search on it);
- epochs to reach `none`'s final best eval accuracy, less `--tolerance` (0.005), and the ratio to the epochs
  `none` itself took to reach it;
- the best eval accuracy at equal total epochs: at what `asha` trained in all (without `asha`: the smallest total);
- the selected model (the best trial's best checkpoint, exported) scored once on the test split, which no search
  sees, with its standard error sqrt(p (1 - p) / n) over the n test examples.

Method, from each search's history.parquet (one row per evaluation, as the driver recorded it):
- each evaluation is put on the search's clock (its trial's start + its `time_s`, both driver times, minus the moment
  `tunetrain.search` was called), and counts the epochs its trial trained for it: the epoch it reports less the
  trial's previous one (a stopped trial trains nothing past its last report; a paused and resumed trial continues
  its own epochs), except on a PBT trial's first evaluation after an exploit, which resumed from the donor's
  checkpoint: (its step - `parent_step`) / steps per epoch. The sum over a search is the epochs it trained;
- epochs to a target: the cumulative epochs, in time order, up to the first evaluation at or above it (epochs a
  concurrent trial had in flight, under one, are not counted yet).

Sizes (measured 2026-11-30 on this 2-core machine). One CNN epoch (3500 examples in batches of 64, then an
evaluation on 500 and a checkpoint), timed alone with tunetrain.Trainer on one thread: 0.10 s at 8-16 channels,
0.13 s at 32, 0.20 s at 64, 0.48 s at 128 channels and kernel 7. In a search, 2 trials at a time with the driver's
reports and the trials' starts, an epoch costs ~0.13-0.15 s of wall time (RESULTS.md: 480 epochs in 72.7 s). A seed
trains ~48 E epochs twice (none; pbt, whose population trains all its epochs between them) and ~0.3 x 48 E twice
(the two halvings: G + 2G/3 + 6G/9 = 2.3 G of 9 G a trial, plus the trials the asynchronous rungs let through):
~125 E epochs, 250 E for two seeds, ~35 E s. With ~10 s of start-up a search and PBT's pauses (48 E / P checkpoint
restores a seed), E = 45 makes the default bench ~30-35 minutes on an idle machine, ~40 on a busy one.
G = epochs // 9 = 5: rungs at 5 and 15 of 45, the first past the warm-up (10% of the epochs; ASHA's rung at 2 of 30
was inside it and stopped a configuration that reaches 0.954 trained in full). P = epochs // 15 = 3: 15
perturbation rounds in a trial's 45 epochs.

    python bench/asha_efficiency.py [--searches none asha asha-promote pbt] [--trials 48] [--epochs 45]
                                    [--grace-period E//9] [--perturbation-interval E//15] [--seeds 0 1]
                                    [--tolerance 0.005] [--backend ray|optuna] [--out DIR] [--keep DIR]

Targets: asha-promote reaches the target with <= 1/3 of the epochs none takes to it, and its selected model's
test accuracy is no lower than none's beyond one standard error (none's); pbt's best eval at equal total epochs is
>= asha's. Epochs do not depend on the machine; wall seconds do (this machine is shared). Two seeds, side by side.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from tunetrain import Experiment, Task

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # a local Ray on 127.0.0.1, before Ray is imported
os.environ.setdefault("OMP_NUM_THREADS", "1")

TASK = "tunetrain.tasks.mnist1d:cnn"
SEARCH_NAMES = ("none", "asha", "asha-promote", "pbt")
REFERENCE = "none"  # the search without stopping: its final best sets the target
BUDGET_FROM = "asha"  # the search whose total epochs is the equal budget
PROMOTE_RATIO_TARGET = 1 / 3


def scheduler_of(name: str, *, grace_period: int, perturbation_interval: int) -> Any:
    """The `search.scheduler` of a search, as an experiment file writes it."""
    halving = {"type": "asha", "grace_period": grace_period, "reduction_factor": 3}
    return {
        "none": "none",
        "asha": halving,
        "asha-promote": {**halving, "promote": True},
        "pbt": {"type": "pbt", "perturbation_interval": perturbation_interval, "quantile_fraction": 0.25,
                "resample_probability": 0.25, "hyperparam_mutations": ["learning_rate", "weight_decay", "dropout"]},
    }[name]  # fmt: skip


# ---------------------------------------------------------------------- analysis (pure: rows in, numbers out)


@dataclass(frozen=True)
class Evaluation:
    at_s: float  # seconds since the search was started
    epochs: float  # epochs its trial trained for this evaluation
    accuracy: float  # eval accuracy (NaN: not finite)


def steps_per_epoch(rows: list[dict[str, Any]]) -> float | None:
    """Optimizer steps an epoch, from the first row that has both (every trial of a search shares the training
    settings); None when no row has trained yet."""
    for row in rows:
        if row.get("epoch") and row.get("step"):
            return row["step"] / row["epoch"]
    return None


def timeline(
    rows: list[dict[str, Any]], started: dict[str, float], search_start: float, *, steps_per_epoch: float | None
) -> list[Evaluation]:
    """A search's evaluations in time order, each with the epochs its trial trained for it (see the module's
    Method). `started`: trial id -> the driver's time the trial started; rows of other trials are left out."""
    last_epoch: dict[str, float] = {}
    evaluations = []
    # each trial's rows in the order it reported them: after PBT's exploit of a donor that was behind, a trial's
    # evaluation count may go back, its time never does
    ours = (r for r in rows if r["trial_id"] in started)
    for row in sorted(ours, key=lambda r: (r["trial_id"], r["time_s"], r["evaluation"])):
        trial = row["trial_id"]
        epoch = row["epoch"] if row["epoch"] is not None else float(row["evaluation"])  # one evaluation per epoch
        evaluations.append(
            Evaluation(
                at_s=started[trial] + row["time_s"] - search_start,
                epochs=_epochs_trained(row, epoch, last_epoch.get(trial, 0.0), steps_per_epoch),
                accuracy=row["metric"] if row["metric"] is not None else math.nan,
            )
        )
        last_epoch[trial] = epoch
    return sorted(evaluations, key=lambda e: e.at_s)


def _epochs_trained(row: dict[str, Any], epoch: float, previous_epoch: float, steps: float | None) -> float:
    if row.get("parent_step") is None:
        return epoch - previous_epoch
    # PBT's exploit: the trial went on from the donor's checkpoint, not from its own previous evaluation
    if not steps:
        raise ValueError(f"row {row} resumed from a parent's checkpoint, but the steps per epoch are unknown")
    return (row["step"] - row["parent_step"]) / steps


def anytime_curve(evaluations: list[Evaluation]) -> tuple[list[float], list[float]]:
    """(cumulative epochs, best eval accuracy so far) after each evaluation; NaN until the first finite one."""
    spent, best, xs, ys = 0.0, math.nan, [], []
    for evaluation in evaluations:
        spent += evaluation.epochs
        if math.isfinite(evaluation.accuracy) and not evaluation.accuracy <= best:
            best = evaluation.accuracy
        xs.append(spent)
        ys.append(best)
    return xs, ys


def best_accuracy(evaluations: list[Evaluation]) -> float | None:
    """The best finite eval accuracy of a search (None: none finite)."""
    finite = [e.accuracy for e in evaluations if math.isfinite(e.accuracy)]
    return max(finite) if finite else None


def epochs_to_reach(evaluations: list[Evaluation], target: float) -> float | None:
    """Epochs spent up to the first evaluation at or above `target`; None if none reached it."""
    spent = 0.0
    for evaluation in evaluations:
        spent += evaluation.epochs
        if evaluation.accuracy >= target - 1e-9:  # accuracies are multiples of 1/500: keep a target of one exact
            return spent
    return None


def best_at(evaluations: list[Evaluation], budget_epochs: float) -> float | None:
    """The best eval accuracy reached within `budget_epochs` epochs of the search (None: no evaluation yet)."""
    spent, best = 0.0, None
    for evaluation in evaluations:
        spent += evaluation.epochs
        if spent > budget_epochs + 1e-9:
            break
        if math.isfinite(evaluation.accuracy):
            best = evaluation.accuracy if best is None else max(best, evaluation.accuracy)
    return best


def standard_error(accuracy: float, n: int) -> float:
    """The standard error of an accuracy measured on `n` examples: sqrt(p (1 - p) / n)."""
    if n < 1:
        raise ValueError(f"`n` is {n}, but must be >= 1")
    return math.sqrt(accuracy * (1 - accuracy) / n)


@dataclass
class Outcome:
    """One search of one seed, as run."""

    name: str
    seed: int
    wall_s: float
    trials: int
    stopped: int  # pruned or stopped early
    evaluations: list[Evaluation]  # in time order
    test_accuracy: float
    test_size: int

    @property
    def total_epochs(self) -> float:
        return sum(e.epochs for e in self.evaluations)

    @property
    def test_error(self) -> float:
        return standard_error(self.test_accuracy, self.test_size)


@dataclass(frozen=True)
class Comparison:
    """The figures of one seed's searches against each other."""

    target: float | None  # the reference's final best less the tolerance; None without the reference
    budget: float  # the equal total epochs
    budget_from: str  # the search whose total it is
    to_target: dict[str, float | None]  # search -> epochs to the target
    ratio: dict[str, float | None]  # search -> its epochs to the target / the reference's
    at_budget: dict[str, float | None]  # search -> best eval accuracy within the budget


def compare(outcomes: list[Outcome], tolerance: float) -> Comparison:
    """Epochs to the reference's final best (less `tolerance`), and the best at equal epochs, of one seed."""
    by_name = {o.name: o for o in outcomes}
    reference = by_name.get(REFERENCE)
    reference_best = best_accuracy(reference.evaluations) if reference is not None else None
    target = reference_best - tolerance if reference_best is not None else None
    budget_from = BUDGET_FROM if BUDGET_FROM in by_name else min(outcomes, key=lambda o: o.total_epochs).name
    budget = by_name[budget_from].total_epochs
    to_target = {o.name: None if target is None else epochs_to_reach(o.evaluations, target) for o in outcomes}
    reference_epochs = to_target.get(REFERENCE)
    ratio = {name: _ratio(epochs, reference_epochs) for name, epochs in to_target.items()}
    at_budget = {o.name: best_at(o.evaluations, budget) for o in outcomes}
    return Comparison(target, budget, budget_from, to_target, ratio, at_budget)


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def verdicts(outcomes: list[Outcome], comparison: Comparison) -> list[str]:
    """The issue's targets met or not, one line each, for the searches this seed ran."""
    by_name = {o.name: o for o in outcomes}
    lines = []
    if "asha-promote" in by_name and REFERENCE in by_name:
        ratio = comparison.ratio["asha-promote"]
        met = ratio is not None and ratio <= PROMOTE_RATIO_TARGET + 1e-9
        lines.append(f"epochs to {_fmt(comparison.target, '.3f')}, asha-promote / {REFERENCE}: {_fmt(ratio, '.2f')} "
                     f"(target <= 0.33): {_yes(met)}")  # fmt: skip
        promote, reference = by_name["asha-promote"], by_name[REFERENCE]
        difference = promote.test_accuracy - reference.test_accuracy
        met = difference >= -reference.test_error - 1e-9
        lines.append(f"test accuracy, asha-promote - {REFERENCE}: {difference:+.3f} (target >= "
                     f"-{reference.test_error:.3f}, one standard error of {REFERENCE}'s): {_yes(met)}")  # fmt: skip
    if "pbt" in by_name and BUDGET_FROM in by_name:
        pbt, asha = comparison.at_budget["pbt"], comparison.at_budget[BUDGET_FROM]
        met = pbt is not None and (asha is None or pbt >= asha)
        lines.append(f"best eval at {comparison.budget:g} epochs, pbt / {BUDGET_FROM}: {_fmt(pbt, '.3f')} / "
                     f"{_fmt(asha, '.3f')} (target pbt >= {BUDGET_FROM}): {_yes(met)}")  # fmt: skip
    return lines


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _yes(met: bool) -> str:
    return "yes" if met else "no"


# ---------------------------------------------------------------------- running the searches


def experiment_for(name: str, seed: int, cli: argparse.Namespace, storage: Path) -> Experiment:
    from tunetrain.experiment import experiment_from_dict

    scheduler = scheduler_of(name, grace_period=cli.grace_period, perturbation_interval=cli.perturbation_interval)
    return experiment_from_dict(
        {
            "name": f"{name}-seed{seed}",
            "task": TASK,
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
                       "sampler": "tpe", "scheduler": scheduler, "seed": seed, "storage": str(storage)},
        }
    )  # fmt: skip


def unbuildable(cli: argparse.Namespace) -> list[str]:
    """Why each search this tunetrain cannot build would fail (a scheduler type it lacks), found before the first
    search starts rather than half an hour into the bench."""
    from tunetrain.errors import TunetrainError

    problems = []
    for name in cli.searches:
        try:
            experiment_for(name, cli.seeds[0], cli, Path(tempfile.gettempdir()))
        except TunetrainError as exc:
            problems.append(f"{name}: {exc}")
    return problems


def run_search(name: str, seed: int, cli: argparse.Namespace, root: Path, task: Task) -> Outcome:
    """One search, its evaluations on its own clock, and its selected model scored on test."""
    import tunetrain
    from tunetrain.results import read_history

    experiment = experiment_for(name, seed, cli, root / "runs")
    start = time.time()
    result = tunetrain.search(experiment, restart=True)  # a kept storage may hold an earlier run of it
    wall = time.time() - start
    if result.best is None:
        raise RuntimeError(f"search {experiment.name} has no trial with a finite accuracy")
    rows = read_history(result.experiment_dir)
    started = {t.trial_id: t.started_at for t in result.trials}
    counts = result.counts()
    selected = result.best.export(root / "selected" / experiment.name, force=True)
    return Outcome(
        name=name,
        seed=seed,
        wall_s=wall,
        trials=len(result.trials),
        stopped=counts["pruned"] + counts["stopped_early"],
        evaluations=timeline(rows, started, start, steps_per_epoch=steps_per_epoch(rows)),
        test_accuracy=_test_accuracy(selected, experiment, task),
        test_size=len(task.test_dataset),
    )


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


# ---------------------------------------------------------------------- figures and the table


def anytime_figure(outcomes: list[Outcome], comparison: Comparison) -> Figure:
    """Best eval accuracy so far against cumulative epochs, every search of one seed on one plot."""
    from matplotlib.figure import Figure  # never pyplot: no backend switched, no figure left in a registry

    fig = Figure(figsize=(10, 5.6), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    for outcome in outcomes:
        xs, ys = anytime_curve(outcome.evaluations)
        (line,) = ax.step([0.0, *xs], [math.nan, *ys], where="post", linewidth=1.6, label=outcome.name)
        ax.plot(xs[-1:], ys[-1:], marker="o", color=line.get_color())  # where the search ended: its total, its best
    if comparison.target is not None:
        ax.axhline(comparison.target, color="#7f7f7f", linestyle="--", linewidth=1,
                   label=f"target {comparison.target:.3f} ({REFERENCE}'s final best - tolerance)")  # fmt: skip
        ax.set_ylim(bottom=max(0.0, comparison.target - 0.1))
    ax.axvline(comparison.budget, color="#7f7f7f", linestyle=":", linewidth=1,
               label=f"equal budget: {comparison.budget_from}'s {comparison.budget:g} epochs")  # fmt: skip
    ax.set_xlabel("epochs trained, all trials of the search together")
    ax.set_ylabel("best eval accuracy so far")
    ax.set_title(f"anytime curves, seed {outcomes[0].seed}, {outcomes[0].trials} trials a search")
    ax.legend(loc="lower right", fontsize=9)
    ax.grid(alpha=0.3)
    return fig


def report(by_seed: dict[int, list[Outcome]], comparisons: dict[int, Comparison]) -> None:
    """The table, seeds side by side ('seed 0 / seed 1' in each cell), then each seed's verdicts."""
    seeds = list(by_seed)
    for seed in seeds:
        c = comparisons[seed]
        target = "-" if c.target is None else f"{c.target:.3f} ({REFERENCE}'s final best - tolerance)"
        print(f"seed {seed}: target {target}; equal budget {c.budget:g} epochs ({c.budget_from}'s total)")
    columns = [("search", 12), ("trials", 9), ("stopped", 9), ("epochs", 11), ("to target", 11),
               (f"/ {REFERENCE}", 11), ("best @budget", 13), ("best eval", 13), ("test ± se", 25),
               ("wall s", 13)]  # fmt: skip
    print(f"(cells: seed {' / seed '.join(str(s) for s in seeds)})")
    print(_line([title for title, _ in columns], columns))
    names = [o.name for o in by_seed[seeds[0]]]
    for name in names:
        outcomes = [next(o for o in by_seed[s] if o.name == name) for s in seeds]
        cells = [
            name,
            _cell(o.trials for o in outcomes),
            _cell(o.stopped for o in outcomes),
            _cell(format(o.total_epochs, ".0f") for o in outcomes),
            _cell(_fmt(comparisons[s].to_target[name], ".0f") for s in seeds),
            _cell(_fmt(comparisons[s].ratio[name], ".2f") for s in seeds),
            _cell(_fmt(comparisons[s].at_budget[name], ".3f") for s in seeds),
            _cell(_fmt(best_accuracy(o.evaluations), ".3f") for o in outcomes),
            _cell(f"{o.test_accuracy:.3f}±{o.test_error:.3f}" for o in outcomes),
            _cell(format(o.wall_s, ".0f") for o in outcomes),
        ]
        print(_line(cells, columns))
    for seed in seeds:
        for line in verdicts(by_seed[seed], comparisons[seed]):
            print(f"seed {seed}: {line}")


def _line(cells: list[str], columns: list[tuple[str, int]]) -> str:
    """The first cell left-aligned, the others right-aligned, each in its column's width."""
    first, *rest = cells
    widths = [width for _, width in columns[1:]]
    return "  ".join([f"{first:<{columns[0][1]}}", *(f"{cell:>{w}}" for cell, w in zip(rest, widths, strict=True))])


def _cell(values: Any) -> str:
    return " / ".join(str(v) for v in values)


# ---------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--searches",
        nargs="+",
        choices=SEARCH_NAMES,
        default=list(SEARCH_NAMES),
        help="the searches to run, in this order (default: all four)",
    )
    parser.add_argument("--trials", type=int, default=48, help="trials per search; pbt's population (default 48)")
    parser.add_argument("--epochs", type=int, default=45, help="epochs of a full trial, ASHA's max_t (default 45)")
    parser.add_argument(
        "--grace-period", type=int, default=None, help="ASHA's first rung, in epochs (default: epochs // 9, >= 1)"
    )
    parser.add_argument(
        "--perturbation-interval", type=int, default=None, help="PBT's, in epochs (default: epochs // 15, >= 1)"
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="one run per seed (default 0 1)")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.005,
        help=f"the target is {REFERENCE}'s final best eval accuracy less this (default 0.005)",
    )
    parser.add_argument("--backend", choices=["ray", "optuna"], default="ray")
    parser.add_argument("--out", type=Path, default=None, help="where the figures go (default: a new temp dir)")
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="keep the searches in this directory (for `tunetrain report`); default: a temp dir",
    )
    cli = parser.parse_args()
    cli.searches = list(dict.fromkeys(cli.searches))  # each once, in the order given
    if cli.grace_period is None:
        cli.grace_period = max(1, cli.epochs // 9)  # rungs at G and 3 G, max_t 9 G: two halvings before the end
    if cli.perturbation_interval is None:
        cli.perturbation_interval = max(1, cli.epochs // 15)
    if cli.grace_period > cli.epochs:  # the library finds it only when the asha search starts
        parser.error(f"--grace-period is {cli.grace_period}, but a trial trains only {cli.epochs} epochs")
    import logging

    logging.getLogger("tunetrain").setLevel(logging.WARNING)
    problems = unbuildable(cli)
    if problems:
        print(f"error: this tunetrain cannot run {len(problems)} of the searches (leave them out with --searches): "
              + "; ".join(problems), file=sys.stderr)  # fmt: skip
        sys.exit(2)
    out = cli.out if cli.out is not None else Path(tempfile.mkdtemp(prefix="asha_efficiency-"))
    out.mkdir(parents=True, exist_ok=True)
    from tunetrain import load_task

    task = load_task(TASK)  # the test split, for scoring the selected models
    _warm_up(task)
    ray_startup = None
    if cli.backend == "ray":
        import ray

        start = time.perf_counter()
        ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
                 log_to_driver=False, logging_level=logging.ERROR)  # fmt: skip
        ray_startup = round(time.perf_counter() - start, 2)
    by_seed: dict[int, list[Outcome]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = cli.keep if cli.keep is not None else Path(tmp)
        for seed in cli.seeds:
            by_seed[seed] = [run_search(name, seed, cli, root, task) for name in cli.searches]
    if cli.backend == "ray":
        ray.shutdown()
    comparisons = {seed: compare(outcomes, cli.tolerance) for seed, outcomes in by_seed.items()}
    figures = []
    for seed, outcomes in by_seed.items():
        path = out / f"anytime-seed{seed}.png"
        anytime_figure(outcomes, comparisons[seed]).savefig(path, format="png", facecolor="white")
        figures.append(str(path))
    settings = {"backend": cli.backend, "ray_startup_s": ray_startup, "trials": cli.trials, "epochs": cli.epochs,
                "grace_period": cli.grace_period, "perturbation_interval": cli.perturbation_interval,
                "seeds": cli.seeds, "tolerance": cli.tolerance}  # fmt: skip
    print(json.dumps(settings))
    report(by_seed, comparisons)
    print(f"figures: {', '.join(figures)}")


if __name__ == "__main__":
    main()
