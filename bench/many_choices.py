"""A categorical of many choices on the Optuna backend: seconds per trial, early and late, against 10 choices.

Issue 12 saw a 10,000-choice categorical slow a search from ~0.1 s to ~2 s a trial after ~70 trials. This runs the
same search (the tests' tiny task, one epoch a trial, TPE, in-process Optuna backend) with N choices and with 10,
side by side, and prints the time per trial over the first and the last 10 trials of each, and their ratios.

    python bench/many_choices.py [--choices 10000] [--trials 80]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def per_trial(choices: int, trials: int, storage: str) -> tuple[float, float, float]:
    """(s per trial over the first 10, over the last 10, whole search wall s)."""
    import numpy as np

    from tunetrain import search
    from tunetrain.experiment import experiment_from_dict
    from tunetrain.results import read_results

    experiment = experiment_from_dict({
        "name": f"choices-{choices}",
        "task": f"{ROOT / 'tests' / 'tiny_task.py'}:task",
        "train": {"num_train_epochs": 1, "per_device_train_batch_size": 64, "eval_strategy": "epoch",
                  "logging_strategy": "no", "save_strategy": "epoch", "metric_for_best_model": "accuracy",
                  "report_to": "none"},
        "space": {"tag": {"type": "categorical", "choices": [f"t{i}" for i in range(choices)]},
                  "dropout": {"type": "float", "low": 0.0, "high": 0.5}},
        "search": {"backend": "optuna", "num_trials": trials, "sampler": "tpe", "scheduler": "none",
                   "storage": storage, "seed": 0},
    })  # fmt: skip
    started = time.perf_counter()
    search(experiment)
    wall = time.perf_counter() - started
    ended = np.diff(sorted(t.ended_at for t in read_results(f"{storage}/{experiment.name}").trials))
    return float(ended[:10].mean()), float(ended[-10:].mean()), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--choices", type=int, default=10_000)
    parser.add_argument("--trials", type=int, default=80)
    args = parser.parse_args()
    import logging

    logging.getLogger("tunetrain").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as storage:
        per_trial(10, 12, f"{storage}/warm-up")  # imports and first-run costs, paid before either is timed
        few = per_trial(10, args.trials, storage)
        many = per_trial(args.choices, args.trials, storage)
        journal = Path(storage, f"choices-{args.choices}", "optuna.journal").stat().st_size
    print(f"{args.trials} trials; s per trial over the first 10 / the last 10 trials; whole search")
    for name, (first, last, wall) in (("10 choices", few), (f"{args.choices} choices", many)):
        print(f"  {name:>14}: {first:.3f} / {last:.3f} (last / first {last / first:.2f}); {wall:.1f} s")
    print(f"  {args.choices} / 10 choices, per trial over the last 10: {many[1] / few[1]:.2f}")
    print(f"  journal: {journal / args.trials / 1024:.0f} KiB per trial")


if __name__ == "__main__":
    main()
