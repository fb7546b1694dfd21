"""Multi-objective early stopping against no stopping and random search on MNIST-1D (CNN): hypervolume at equal epochs.

Three searches of one experiment on two objectives, eval accuracy (max) against trainable parameters (min), each
with the same seed and the same number of trials, one after the other (default: the optuna backend, in-process,
one trial at a time; `--backend ray`: a local Ray, 2 CPUs, 2 trials at a time):

    mo-asha   TPE, and multi-objective ASHA (grace_period G, reduction_factor 3): at a rung a trial goes on only if
              its (accuracy, parameters) are in the top third of those that reached the rung, by Pareto front then
              crowding distance
    none      TPE, no early stopping: every trial trains all its epochs
    random    random search, no early stopping
    nsga2     (optional, `--searches ... nsga2`) NSGA-II, no early stopping

The experiment is the CNN of tunetrain.tasks.mnist1d (one evaluation per epoch, cosine schedule with 10% warm-up,
weight decay 0.05) on a space where the parameter count spans three orders of magnitude: channels 4..128 (log),
num_layers 1..4, kernel_size 3 | 5 | 7 (330 to ~350k parameters) and learning_rate 1e-4..1e-1 (log).

The question (issue 16): at equal total epochs, does multi-objective early stopping reach a higher hypervolume
than the same sampler without stopping, and than random search?
- the anytime curve: the hypervolume of every trial's latest running values (its values at its best evaluation by
  accuracy so far, `tunetrain.tuning.pareto.running_objectives`, which is how the loop and the rungs see a trial)
  against the epochs the search has trained, all trials together (one PNG per seed in `--out`);
- the hypervolume on that curve at equal total epochs: at what `mo-asha` trained in all (without it: the smallest
  total), and at 1/4 and 1/2 of it; and at the search's own end;
- the hypervolume of the search's final front: `SearchResult.pareto`, finished trials only (a trial pruned at a rung
  is not on it, though its running values count on the anytime curve).
With one seed, TPE's first 10 trials are the random sampler's first 10 draws: `none` and `random` are the same search
for their first 10 E epochs, and `mo-asha` starts on the same configurations.

Method, from each search's history.parquet (one row per evaluation, in the order the driver recorded it):
- each evaluation counts the epochs its trial trained for it: the epoch it reports less the trial's previous one
  (a stopped trial trains nothing past its last report), as bench/asha_efficiency.py counts them;
- one reference point per seed, common to its searches so that their numbers compare: `pareto.reference_point` over
  every (accuracy, parameters) any search of the seed reported (each objective's worst, 10% of its range further);
  hypervolumes by `pareto.hypervolume`;
- normalised for printing: each hypervolume is divided by the box between that reference point and the ideal point
  (the best accuracy and the fewest parameters any search of the seed reported), so 1.0 would be one trial with
  both; the figures compare within a seed only;
- two scales: parameters as counted, and log10(parameters). In parameters as counted every model under ~10% of the
  largest is nearly free, so that hypervolume is mostly "the best accuracy of a small model"; in log10 the whole
  trade-off counts. The reference point and the ideal are taken in each scale.

Sizes (measured 2026-11-30 on this 2-core machine, one thread, the optuna backend). A CNN epoch of this space (3500
examples in batches of 64, an evaluation on 500 and a checkpoint) takes 0.10-0.15 s below ~10k parameters, 0.2 s
at 10-30k, 0.3-0.45 s at 30-120k; a random search of 16 trials x 6 epochs averaged 0.20 s an epoch, trial overhead
included. A seed trains N E epochs twice (none, random) and ~0.35 N E once (mo-asha: G + 2G/3 + 6G/9 = 2.3 G of
9 G a trial, plus the trials that go on because they hold an end of the front or came early): ~2.4 N E epochs,
~4.8 N E for two seeds. N = 40 trials of E = 27 epochs: the default run took 15.6 minutes (mo-asha 384 / 426
epochs in 83 / 81 s, none and random 1080 epochs in 168-236 s each, 0.16-0.22 s an epoch); `--searches ... nsga2`
should add ~3 minutes a seed (not measured). G = epochs // 9 = 3: rungs at 3 and 9 of 27 epochs, the first just
past the 2.7-epoch warm-up.

    python bench/multiobjective.py [--searches mo-asha none random [nsga2]] [--trials 40] [--epochs 27]
                                   [--grace-period E//9] [--seeds 0 1] [--backend optuna|ray] [--out DIR] [--keep DIR]

Target: mo-asha's hypervolume at its own total epochs is higher than none's and random's at the same epochs, in
both scales and both seeds. Epochs do not depend on the machine; wall seconds do (this machine is shared).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from tunetrain import Experiment

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # a local Ray on 127.0.0.1, before Ray is imported
os.environ.setdefault("OMP_NUM_THREADS", "1")

# the table's cells and the warm-up are asha_efficiency's (bench/, the script's dir, is on sys.path)
from asha_efficiency import _cell, _line, _warm_up, _yes

TASK = "tunetrain.tasks.mnist1d:cnn"
METRICS = ("eval_accuracy", "eval_num_parameters")
MODES = ("max", "min")
SEARCH_NAMES = ("mo-asha", "none", "random", "nsga2")
DEFAULT_SEARCHES = ("mo-asha", "none", "random")
BUDGET_FROM = "mo-asha"  # the search whose total epochs is the equal budget
FRACTIONS = (0.25, 0.5, 1.0)  # of the equal budget


def search_settings(name: str, *, grace_period: int) -> dict[str, Any]:
    """The `search.sampler` and `search.scheduler` of a search, as an experiment file writes them."""
    halving = {"type": "asha", "grace_period": grace_period, "reduction_factor": 3}
    sampler, scheduler = {
        "mo-asha": ("tpe", halving),
        "none": ("tpe", "none"),
        "random": ("random", "none"),
        "nsga2": ("nsga2", "none"),
    }[name]
    return {"sampler": sampler, "scheduler": scheduler}


# ---------------------------------------------------------------------- analysis (pure: rows in, numbers out)


@dataclass(frozen=True)
class Scale:
    """How the parameter count enters the hypervolume: as counted, or as its log10 (monotone: the front and the
    modes are the same)."""

    name: str
    log: bool

    def __call__(self, vector: Sequence[float]) -> tuple[float, float]:
        accuracy, parameters = vector
        if not self.log:
            return (accuracy, parameters)
        usable = isinstance(parameters, (int, float)) and math.isfinite(parameters) and parameters > 0
        return (accuracy, math.log10(parameters) if usable else math.nan)


SCALES = (Scale("parameters", log=False), Scale("log10 parameters", log=True))


@dataclass(frozen=True)
class Evaluation:
    trial_id: str
    epochs: float  # epochs its trial trained for this evaluation
    reported: tuple[float, float]  # this evaluation's (accuracy, parameters)
    running: tuple[float, float]  # the trial's values after it: those of its best evaluation by accuracy so far


def evaluations_of(rows: list[dict[str, Any]]) -> list[Evaluation]:
    """A search's evaluations in the order the driver recorded them (see the module's Method)."""
    by_trial: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_trial.setdefault(row["trial_id"], []).append(row)
    running = _running_by_row(by_trial)
    last_epoch: dict[str, float] = {}
    evaluations = []
    for row in rows:
        trial = row["trial_id"]
        epoch = row["epoch"] if row["epoch"] is not None else float(row["evaluation"])  # one evaluation per epoch
        metrics = json.loads(row["metrics"] or "{}")
        evaluations.append(
            Evaluation(
                trial_id=trial,
                epochs=epoch - last_epoch.get(trial, 0.0),
                reported=(_number(metrics.get(METRICS[0])), _number(metrics.get(METRICS[1]))),
                running=running[id(row)],
            )
        )
        last_epoch[trial] = epoch
    return evaluations


def _running_by_row(by_trial: dict[str, list[dict[str, Any]]]) -> dict[int, tuple[float, float]]:
    """Each row's running values (keyed by the row's id), from `pareto.running_objectives` over its trial's rows."""
    from tunetrain.tuning.pareto import running_objectives

    out = {}
    for rows in by_trial.values():
        entries = [json.loads(row["metrics"] or "{}") for row in rows]
        for row, vector in zip(rows, running_objectives(entries, METRICS, MODES), strict=True):
            out[id(row)] = (vector[0], vector[1])
    return out


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


@dataclass(frozen=True)
class Frame:
    """One seed's common frame in one scale: the reference point and the box a hypervolume is normalised by."""

    scale: Scale
    reference: tuple[float, ...]
    box: float  # the volume between the reference point and the ideal point

    def normalised(self, vectors: Sequence[Sequence[float]]) -> float:
        from tunetrain.tuning.pareto import hypervolume

        return hypervolume([self.scale(v) for v in vectors], MODES, self.reference) / self.box


def frame_of(vectors: Sequence[Sequence[float]], scale: Scale) -> Frame:
    """The frame of every vector the seed's searches reported: `pareto.reference_point` of them, and the box to the
    ideal point (each objective's best among them)."""
    from tunetrain.tuning.pareto import reference_point, usable

    scaled = [v for v in map(scale, vectors) if usable(v)]
    reference = reference_point(scaled, MODES)
    box = 1.0
    for k, mode in enumerate(MODES):
        best = (max if mode == "max" else min)(v[k] for v in scaled)
        box *= abs(reference[k] - best) or 1.0
    return Frame(scale, reference, box)


def anytime_curve(evaluations: list[Evaluation], frame: Frame) -> tuple[list[float], list[float]]:
    """(cumulative epochs, normalised hypervolume of every trial's latest running values) after each evaluation."""
    spent, latest, xs, ys = 0.0, {}, [], []
    for evaluation in evaluations:
        spent += evaluation.epochs
        latest[evaluation.trial_id] = evaluation.running
        xs.append(spent)
        ys.append(frame.normalised(list(latest.values())))
    return xs, ys


def value_at(curve: tuple[list[float], list[float]], budget_epochs: float) -> float:
    """The curve's value within `budget_epochs` epochs: after the last evaluation that fits (0.0 before the first)."""
    value = 0.0
    for spent, hypervolume in zip(*curve, strict=True):
        if spent > budget_epochs + 1e-9:
            break
        value = hypervolume
    return value


@dataclass
class Outcome:
    """One search of one seed, as run."""

    name: str
    seed: int
    wall_s: float
    trials: int
    stopped: int  # pruned or stopped early
    evaluations: list[Evaluation]  # in the order recorded
    front: list[tuple[float, float]]  # the objectives of SearchResult.pareto's trials
    disagreements: list[str]  # finished trials whose recorded objectives are not their last running values

    @property
    def total_epochs(self) -> float:
        return sum(e.epochs for e in self.evaluations)


@dataclass(frozen=True)
class Comparison:
    """One seed's searches against each other in one scale (hypervolumes normalised by the frame's box)."""

    frame: Frame
    budget: float  # the equal total epochs
    budget_from: str  # the search whose total it is
    at: dict[str, list[float]]  # search -> hypervolume at each of FRACTIONS x budget
    end: dict[str, float]  # search -> hypervolume at its own end (every trial's running values)
    front: dict[str, float]  # search -> hypervolume of its final front (finished trials)


def compare(outcomes: list[Outcome], scale: Scale) -> Comparison:
    """The hypervolumes of one seed's searches in one common frame."""
    frame = frame_of([e.reported for o in outcomes for e in o.evaluations], scale)
    by_name = {o.name: o for o in outcomes}
    budget_from = BUDGET_FROM if BUDGET_FROM in by_name else min(outcomes, key=lambda o: o.total_epochs).name
    budget = by_name[budget_from].total_epochs
    at, end = {}, {}
    for outcome in outcomes:
        curve = anytime_curve(outcome.evaluations, frame)
        at[outcome.name] = [value_at(curve, fraction * budget) for fraction in FRACTIONS]
        end[outcome.name] = curve[1][-1] if curve[1] else 0.0
    front = {o.name: frame.normalised(o.front) for o in outcomes}
    return Comparison(frame, budget, budget_from, at, end, front)


def verdicts(comparison: Comparison) -> list[str]:
    """The issue's question, one line per rival of the budget's search: higher at its total epochs or not."""
    ours = comparison.budget_from
    mine = comparison.at[ours][FRACTIONS.index(1.0)]
    lines = []
    for name, values in comparison.at.items():
        if name == ours:
            continue
        theirs = values[FRACTIONS.index(1.0)]
        lines.append(f"{comparison.frame.scale.name}: hypervolume at {comparison.budget:g} epochs, {ours} / {name}: "
                     f"{mine:.4f} / {theirs:.4f} ({ours} higher: {_yes(mine > theirs)})")  # fmt: skip
    return lines


def disagreement(
    trial_id: str, status: str, objectives: Sequence[float] | None, running: Sequence[float]
) -> str | None:
    """Why a finished trial's recorded objectives are not the running values of its last evaluation (None: they
    agree). They should: both are its values at its best evaluation by accuracy."""
    if objectives is None or len(objectives) != len(running):
        return f"{trial_id} ({status}): objectives {objectives}, running values {list(running)}"
    if all(_same(a, b) for a, b in zip(objectives, running, strict=True)):
        return None
    return f"{trial_id} ({status}): objectives {list(objectives)}, running values {list(running)}"


def _same(a: float | None, b: float) -> bool:
    a = _number(a)
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


# ---------------------------------------------------------------------- running the searches


def experiment_for(name: str, seed: int, cli: argparse.Namespace, storage: Path) -> Experiment:
    from tunetrain.experiment import experiment_from_dict

    return experiment_from_dict(
        {
            "name": f"{name}-seed{seed}",
            "task": TASK,
            "train": {"num_train_epochs": cli.epochs, "per_device_train_batch_size": 64,
                      "per_device_eval_batch_size": 500, "lr_scheduler_type": "cosine", "warmup_ratio": 0.1,
                      "weight_decay": 0.05, "logging_strategy": "epoch", "eval_strategy": "epoch",
                      "save_strategy": "epoch", "metric_for_best_model": "accuracy"},
            "space": {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
                      "channels": {"type": "int", "low": 4, "high": 128, "log": True},
                      "num_layers": {"type": "int", "low": 1, "high": 4},
                      "kernel_size": {"type": "categorical", "choices": [3, 5, 7]}},
            "search": {"backend": cli.backend, "num_trials": cli.trials,
                       "max_concurrent_trials": 2 if cli.backend == "ray" else 1,
                       "metric": [m.removeprefix("eval_") for m in METRICS], "mode": list(MODES),
                       **search_settings(name, grace_period=cli.grace_period), "seed": seed,
                       "storage": str(storage)},
        }
    )  # fmt: skip


def unbuildable(cli: argparse.Namespace) -> list[str]:
    """Why each search this tunetrain cannot build would fail, found before the first search starts."""
    from tunetrain.errors import TunetrainError

    problems = []
    for name in cli.searches:
        try:
            experiment_for(name, cli.seeds[0], cli, Path(tempfile.gettempdir()))
        except TunetrainError as exc:
            problems.append(f"{name}: {exc}")
    return problems


def run_search(name: str, seed: int, cli: argparse.Namespace, root: Path) -> Outcome:
    """One search, its evaluations in the order recorded, and its final front."""
    import tunetrain
    from tunetrain.results import FINISHED_STATUSES, read_history

    experiment = experiment_for(name, seed, cli, root / "runs")
    start = time.time()
    result = tunetrain.search(experiment, restart=True)  # a kept storage may hold an earlier run of it
    wall = time.time() - start
    if tuple(result.metrics) != METRICS or tuple(result.modes) != MODES:
        raise RuntimeError(f"search {experiment.name} has objectives {result.metrics} {result.modes}, not {METRICS}")
    evaluations = evaluations_of(read_history(result.experiment_dir))
    last_running = {e.trial_id: e.running for e in evaluations}
    disagreements = [
        line
        for t in result.trials
        if t.status in FINISHED_STATUSES and t.trial_id in last_running
        for line in [disagreement(t.trial_id, t.status, t.objectives, last_running[t.trial_id])]
        if line is not None
    ]
    counts = result.counts()
    return Outcome(
        name=name,
        seed=seed,
        wall_s=wall,
        trials=len(result.trials),
        stopped=counts["pruned"] + counts["stopped_early"],
        evaluations=evaluations,
        front=[(t.objectives[0], t.objectives[1]) for t in result.pareto],
        disagreements=disagreements,
    )


# ---------------------------------------------------------------------- figures and the tables


def anytime_figure(outcomes: list[Outcome], comparisons: list[Comparison]) -> Figure:
    """One seed: the anytime hypervolume in each scale, and the searches' final fronts."""
    from matplotlib.figure import Figure  # never pyplot: no backend switched, no figure left in a registry

    fig = Figure(figsize=(16, 5.2), dpi=100, layout="constrained")
    axes = fig.subplots(1, len(comparisons) + 1)
    colors = {o.name: f"C{i}" for i, o in enumerate(outcomes)}
    # searches that share their first trials (TPE's random start-up) draw the same curve: dashes keep both visible
    styles = {o.name: ("-", "--", "-.", ":")[i % 4] for i, o in enumerate(outcomes)}
    for ax, comparison in zip(axes, comparisons, strict=False):
        for outcome in outcomes:
            xs, ys = anytime_curve(outcome.evaluations, comparison.frame)
            ax.step([0.0, *xs], [0.0, *ys], where="post", linewidth=1.6, color=colors[outcome.name],
                    linestyle=styles[outcome.name], label=outcome.name)  # fmt: skip
            ax.plot(xs[-1:], ys[-1:], marker="o", color=colors[outcome.name])  # where the search ended
        ax.axvline(comparison.budget, color="#7f7f7f", linestyle=":", linewidth=1,
                   label=f"equal budget: {comparison.budget_from}'s {comparison.budget:g} epochs")  # fmt: skip
        ax.set_xlabel("epochs trained, all trials of the search together")
        ax.set_ylabel("hypervolume / reference box")
        ax.set_title(f"accuracy vs {comparison.frame.scale.name}")
        ax.legend(loc="lower right", fontsize=8)
        ax.grid(alpha=0.3)
    ax = axes[-1]
    for outcome in outcomes:
        front = sorted(outcome.front, key=lambda v: v[1])
        ax.step([v[1] for v in front], [v[0] for v in front], where="post", marker="o", markersize=4,
                color=colors[outcome.name], linestyle=styles[outcome.name],
                label=f"{outcome.name} ({len(front)})")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel("eval accuracy")
    ax.set_title("final fronts (finished trials)")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.suptitle(f"multi-objective searches, seed {outcomes[0].seed}, {outcomes[0].trials} trials a search")
    return fig


def report(by_seed: dict[int, list[Outcome]], comparisons: dict[int, list[Comparison]]) -> None:
    """The tables, seeds side by side ('seed 0 / seed 1' in each cell), then each seed's verdicts."""
    seeds = list(by_seed)
    names = [o.name for o in by_seed[seeds[0]]]
    outcomes = {name: [next(o for o in by_seed[s] if o.name == name) for s in seeds] for name in names}
    print(f"(cells: seed {' / seed '.join(str(s) for s in seeds)})")
    for seed in seeds:
        c = comparisons[seed][0]
        print(f"seed {seed}: equal budget {c.budget:g} epochs ({c.budget_from}'s total); reference point " + "; ".join(
            f"{k.frame.scale.name} ({', '.join(format(v, '.4g') for v in k.frame.reference)})"
            for k in comparisons[seed]))  # fmt: skip
    columns = [("search", 10), ("trials", 9), ("stopped", 9), ("epochs", 11), ("front", 9), ("wall s", 11)]
    print(_line([title for title, _ in columns], columns))
    for name in names:
        cells = [
            name,
            _cell(o.trials for o in outcomes[name]),
            _cell(o.stopped for o in outcomes[name]),
            _cell(format(o.total_epochs, ".0f") for o in outcomes[name]),
            _cell(len(o.front) for o in outcomes[name]),
            _cell(format(o.wall_s, ".0f") for o in outcomes[name]),
        ]
        print(_line(cells, columns))
    for k, scale in enumerate(SCALES):
        print(f"\nhypervolume / reference box, accuracy vs {scale.name}:")
        fractions = [f"@{'budget' if f == 1.0 else f'{f:g} budget'}" for f in FRACTIONS]
        columns = [("search", 10), *((title, 15) for title in fractions), ("at end", 15), ("final front", 15)]
        print(_line([title for title, _ in columns], columns))
        for name in names:
            cells = [
                name,
                *(_cell(format(comparisons[s][k].at[name][i], ".4f") for s in seeds) for i in range(len(FRACTIONS))),
                _cell(format(comparisons[s][k].end[name], ".4f") for s in seeds),
                _cell(format(comparisons[s][k].front[name], ".4f") for s in seeds),
            ]
            print(_line(cells, columns))
    print()
    for seed in seeds:
        for comparison in comparisons[seed]:
            for line in verdicts(comparison):
                print(f"seed {seed}: {line}")
    for seed in seeds:
        for outcome in by_seed[seed]:
            for line in outcome.disagreements:
                print(f"warning: seed {seed}, {outcome.name}: recorded objectives differ from the history: {line}")


# ---------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--searches",
        nargs="+",
        choices=SEARCH_NAMES,
        default=list(DEFAULT_SEARCHES),
        help="the searches to run, in this order (default: mo-asha none random)",
    )
    parser.add_argument("--trials", type=int, default=40, help="trials per search (default 40)")
    parser.add_argument("--epochs", type=int, default=27, help="epochs of a full trial, ASHA's max_t (default 27)")
    parser.add_argument(
        "--grace-period", type=int, default=None, help="MO-ASHA's first rung, in epochs (default: epochs // 9, >= 1)"
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="one run per seed (default 0 1)")
    parser.add_argument("--backend", choices=["optuna", "ray"], default="optuna")
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
    if cli.grace_period > cli.epochs:  # the library finds it only when the search starts
        parser.error(f"--grace-period is {cli.grace_period}, but a trial trains only {cli.epochs} epochs")
    import logging

    logging.getLogger("tunetrain").setLevel(logging.WARNING)
    problems = unbuildable(cli)
    if problems:
        print(f"error: this tunetrain cannot run {len(problems)} of the searches (leave them out with --searches): "
              + "; ".join(problems), file=sys.stderr)  # fmt: skip
        sys.exit(2)
    out = cli.out if cli.out is not None else Path(tempfile.mkdtemp(prefix="multiobjective-"))
    out.mkdir(parents=True, exist_ok=True)
    from tunetrain import load_task

    _warm_up(load_task(TASK))
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
            by_seed[seed] = [run_search(name, seed, cli, root) for name in cli.searches]
    if cli.backend == "ray":
        ray.shutdown()
    comparisons = {seed: [compare(outcomes, scale) for scale in SCALES] for seed, outcomes in by_seed.items()}
    figures = []
    for seed, outcomes in by_seed.items():
        path = out / f"hypervolume-seed{seed}.png"
        anytime_figure(outcomes, comparisons[seed]).savefig(path, format="png", facecolor="white")
        figures.append(str(path))
    settings = {"backend": cli.backend, "ray_startup_s": ray_startup, "trials": cli.trials, "epochs": cli.epochs,
                "grace_period": cli.grace_period, "seeds": cli.seeds, "searches": cli.searches}  # fmt: skip
    print(json.dumps(settings))
    report(by_seed, comparisons)
    print(f"figures: {', '.join(figures)}")


if __name__ == "__main__":
    main()
