"""The user-level figure: one small search run by `tunetrain search` and written by hand, side by side in one run.

The search: the MNIST-1D CNN (`tunetrain.tasks.mnist1d`: same model class, same train / eval / test split), 4
params (learning_rate, weight_decay, channels, dropout), 16 trials of up to 30 epochs (AdamW, cosine schedule
with 10% warmup, batch 64, an evaluation each epoch), 2 trials at a time, TPE with seed 0, early stopping by
successive halving (min 2 epochs, reduction factor 3). Three ways, each a fresh process timed from its start to
its exit (imports, data generation and Ray's start-up included, as a user waits for them):

- `tunetrain search` on an experiment file (Ray backend, ASHA, TPE): the command a user runs.
- Optuna by hand, in-process: a plain PyTorch loop in an objective, `study.optimize(n_jobs=2)`, TPE +
  SuccessiveHalvingPruner, `trial.report` / `should_prune` each epoch.
- Ray Tune by hand: the same loop as a function trainable, `tune.report` each epoch, OptunaSearch (TPE) + ASHA,
  otherwise Ray's defaults (no checkpoints: the hand-written searches cannot resume a killed run; tunetrain's
  can, and pays for its checkpoints in this figure).

Which trials get pruned depends on the order trials report in, which two concurrent trials (threads or
processes) do not fix: the epochs a search trains, and so its wall time, vary from run to run (twofold, here)
even with the seeds fixed. Read the wall times with the epochs trained (s/epoch: wall time over epochs trained,
start-up included).

Then the best params of each search get the same final fit (30 epochs on the train split, seed 42, one thread)
and are scored on the test split, which no search saw.

    python bench/search_vs_handwritten.py [--trials 16] [--epochs 30] [--repeats 3] [--without-raytune]

Targets (issues 5 and 17): tunetrain's wall time <= 1.0x the hand-written Optuna one (the median of 3 runs of each),
and its best trial's final-fit test accuracy no lower than theirs (within one standard error).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SEED = 42
BATCH = 64
SPACE = {
    "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
    "weight_decay": {"type": "float", "low": 0.0, "high": 0.2},
    "channels": {"type": "int", "low": 8, "high": 128, "log": True},
    "dropout": {"type": "float", "low": 0.0, "high": 0.5},
}
GRACE, REDUCTION = 2, 3


# ---------------------------------------------------------------------- the hand-written pieces


def suggest(trial) -> dict:
    """The space in Optuna's define-by-run, as a user would write it."""
    return {
        "learning_rate": trial.suggest_float("learning_rate", 1e-4, 1e-1, log=True),
        "weight_decay": trial.suggest_float("weight_decay", 0.0, 0.2),
        "channels": trial.suggest_int("channels", 8, 128, log=True),
        "dropout": trial.suggest_float("dropout", 0.0, 0.5),
    }


def define_by_run(trial) -> None:
    """`suggest` as OptunaSearch takes it (returns nothing; module-level, as Ray pickles it)."""
    suggest(trial)


def hand_loop(params: dict, epochs: int, report, seed: int = SEED, evaluate_on: str = "eval") -> float:
    """A plain PyTorch training loop; calls `report(epoch, accuracy)` after each epoch, which may raise to stop.

    Returns the last accuracy on `evaluate_on`.
    """
    import torch
    from torch.utils.data import DataLoader, RandomSampler

    from tunetrain.tasks import mnist1d

    splits = mnist1d._splits()
    torch.manual_seed(seed)
    model = mnist1d.CNN(channels=params["channels"], dropout=params["dropout"])
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": params["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
        lr=params["learning_rate"],
    )
    train = torch.utils.data.TensorDataset(*splits["train"])
    generator = torch.Generator()
    loader = DataLoader(train, batch_size=BATCH, sampler=RandomSampler(train, generator=generator))
    total = epochs * len(loader)
    warmup = math.ceil(0.1 * total)

    def factor(step: int) -> float:
        if step < warmup:
            return step / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    x_eval, y_eval = splits[evaluate_on]
    accuracy = 0.0
    for epoch in range(epochs):
        generator.manual_seed(seed + epoch)
        model.train()
        for x, y in loader:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        model.eval()
        with torch.no_grad():
            accuracy = float((model(x_eval).argmax(-1) == y_eval).float().mean())
        report(epoch + 1, accuracy)
    return accuracy


def run_optuna_by_hand(trials: int, epochs: int) -> dict:
    import optuna
    import torch

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def objective(trial) -> float:
        params = suggest(trial)
        best = 0.0

        def report(epoch: int, accuracy: float) -> None:
            nonlocal best
            best = max(best, accuracy)
            trial.report(best, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

        hand_loop(params, epochs, report)
        return best

    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=0),
        pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=GRACE, reduction_factor=REDUCTION),
    )
    study.optimize(objective, n_trials=trials, n_jobs=2)
    epochs_trained = sum(len(t.intermediate_values) for t in study.trials)
    return {"best_params": study.best_params, "best_value": study.best_value, "epochs_trained": epochs_trained}


def run_ray_tune_by_hand(trials: int, epochs: int) -> dict:
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    def trainable(config: dict) -> None:
        import torch

        torch.set_num_threads(1)
        best = 0.0

        def report(epoch: int, accuracy: float) -> None:
            nonlocal best
            best = max(best, accuracy)
            tune.report({"accuracy": best})

        hand_loop(config, epochs, report)

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    with tempfile.TemporaryDirectory() as storage:
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": 1}),
            tune_config=tune.TuneConfig(
                search_alg=OptunaSearch(
                    space=define_by_run,
                    metric="accuracy",
                    mode="max",
                    sampler=optuna.samplers.TPESampler(seed=0),
                ),
                scheduler=ASHAScheduler(max_t=epochs, grace_period=GRACE, reduction_factor=REDUCTION),
                metric="accuracy",
                mode="max",
                num_samples=trials,
                max_concurrent_trials=2,
            ),
            run_config=tune.RunConfig(storage_path=storage, verbose=0),
        )
        results = tuner.fit()
        best = results.get_best_result()
        epochs_trained = sum(int(r.metrics.get("training_iteration", 0)) for r in results)
        return {"best_params": best.config, "best_value": best.metrics["accuracy"], "epochs_trained": epochs_trained}


def tunetrain_experiment(trials: int, epochs: int, storage: str) -> dict:
    return {
        "name": "cnn-vs-handwritten",
        "task": "tunetrain.tasks.mnist1d:cnn",
        "train": {
            "num_train_epochs": epochs,
            "per_device_train_batch_size": BATCH,
            "per_device_eval_batch_size": 500,
            "lr_scheduler_type": "cosine",
            "warmup_ratio": 0.1,
            "logging_strategy": "no",
            "eval_strategy": "epoch",
            "metric_for_best_model": "accuracy",
            "report_to": "none",
            "seed": SEED,
        },
        "space": SPACE,
        "search": {
            "backend": "ray",
            "num_trials": trials,
            "max_concurrent_trials": 2,
            "sampler": "tpe",
            "scheduler": {"type": "asha", "grace_period": GRACE, "reduction_factor": REDUCTION},
            "seed": 0,
            "storage": storage,
        },
    }


def run_tunetrain(trials: int, epochs: int, workdir: Path) -> dict:
    """`tunetrain search FILE`, the command a user runs; then read what it wrote."""
    import yaml

    experiment = tunetrain_experiment(trials, epochs, str(workdir / "runs"))
    path = workdir / "experiment.yaml"
    path.write_text(yaml.safe_dump(experiment, sort_keys=False))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tunetrain.cli", "search", str(path)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    wall = time.perf_counter() - start
    from tunetrain.results import read_history, read_results

    result = read_results(workdir / "runs" / experiment["name"])
    history = read_history(workdir / "runs" / experiment["name"])
    best = result.best
    return {"wall_s": wall, "best_params": best.params, "best_value": best.best_metric, "epochs_trained": len(history)}


# ---------------------------------------------------------------------- the comparison


def timed_subprocess(which: str, trials: int, epochs: int, out: Path) -> dict:
    start = time.perf_counter()
    cmd = [
        sys.executable,
        __file__,
        "--only",
        which,
        "--trials",
        str(trials),
        "--epochs",
        str(epochs),
        "--json",
        str(out),
    ]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    result = json.loads(out.read_text())
    result["wall_s"] = time.perf_counter() - start
    return result


def final_fit_test_accuracy(params: dict, epochs: int) -> float:
    """The same final fit for every search's best params: the hand loop on the train split, scored on test."""
    import torch

    torch.set_num_threads(1)
    fixed = {name: params[name] for name in SPACE}
    return hand_loop(fixed, epochs, lambda epoch, accuracy: None, evaluate_on="test")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=1, help="runs of each search; the table shows each run, then "
                        "the medians")  # fmt: skip
    parser.add_argument("--without-raytune", action="store_true", help="leave out Ray Tune by hand (the slowest)")
    parser.add_argument("--only", choices=["optuna", "raytune"], help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    cli = parser.parse_args()
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # local Ray on 127.0.0.1
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if cli.only:
        run = run_optuna_by_hand if cli.only == "optuna" else run_ray_tune_by_hand
        cli.json.write_text(json.dumps(run(cli.trials, cli.epochs), default=float))
        return

    names = ["optuna by hand", "tunetrain search"] + ([] if cli.without_raytune else ["ray tune by hand"])
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for repeat in range(cli.repeats):
        # the order turns from run to run, so that a machine getting busier or quieter does not favour one
        order = names[repeat % len(names) :] + names[: repeat % len(names)]
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            for name in order:
                if name == "tunetrain search":
                    row = run_tunetrain(cli.trials, cli.epochs, tmp)
                else:
                    which = "optuna" if name.startswith("optuna") else "raytune"
                    row = timed_subprocess(which, cli.trials, cli.epochs, tmp / f"{which}.json")
                runs[name].append(row)
    for rows in runs.values():
        for row in rows:
            row["test_accuracy"] = final_fit_test_accuracy(row["best_params"], cli.epochs)

    print(f"{cli.trials} trials x up to {cli.epochs} epochs, MNIST-1D CNN, 2 at a time, TPE + successive halving")
    print(f"{'':18} {'run':>3} {'wall s':>7} {'epochs':>7} {'s/epoch':>7} {'best eval':>9} {'test (final fit)':>16}")
    for name, rows in runs.items():
        for i, row in enumerate(rows):
            per_epoch = row["wall_s"] / max(1, row["epochs_trained"])
            print(f"{name:18} {i + 1:3d} {row['wall_s']:7.1f} {row['epochs_trained']:7d} {per_epoch:7.3f}"
                  f" {row['best_value']:9.3f} {row['test_accuracy']:16.3f}")  # fmt: skip
    keys = ("wall_s", "epochs_trained", "test_accuracy")
    med = {name: {key: statistics.median(row[key] for row in rows) for key in keys} for name, rows in runs.items()}
    for name, m in med.items():
        print(f"{name:18} med {m['wall_s']:7.1f} {m['epochs_trained']:7.0f} {'':7} {'':9} {m['test_accuracy']:16.3f}")
    ours, optuna_row = med["tunetrain search"], med["optuna by hand"]
    print(f"wall ratio tunetrain / optuna by hand, medians: {ours['wall_s'] / optuna_row['wall_s']:.2f}  "
          "(target <= 1.0)")  # fmt: skip
    if "ray tune by hand" in med:
        by_ray = ours["wall_s"] / med["ray tune by hand"]["wall_s"]
        print(f"wall ratio tunetrain / ray tune by hand, medians: {by_ray:.2f}")
    n_test = 1000  # tunetrain.tasks.mnist1d's test split
    p = optuna_row["test_accuracy"]
    standard_error = math.sqrt(p * (1 - p) / n_test)
    difference = ours["test_accuracy"] - optuna_row["test_accuracy"]
    print(f"test accuracy tunetrain - optuna by hand, medians: {difference:+.3f} (one standard error "
          f"{standard_error:.3f}; target >= -{standard_error:.3f})")  # fmt: skip


if __name__ == "__main__":
    main()
