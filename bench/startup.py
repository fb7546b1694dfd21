"""Where a small search's fixed cost goes: `tunetrain search` from the process's start to its exit, step by step,
side by side with the same search written by hand with Optuna in-process, and (with --before REV) with tunetrain as
of an earlier commit, in one run.

The search: bench/search_vs_handwritten.py's MNIST-1D CNN experiment cut to 2 trials of 1 epoch, 2 at a time, so
that what is timed is the start-up and the shutdown, not the training. Each run is a fresh process (as a user runs
the command); the steps are read from timestamps the process takes itself, through wrappers put around functions
that every version has (`ray.init`, `Tuner.fit`, the driver's bookkeeper callbacks), so nothing in tunetrain is
changed to be timed. Runs alternate (before, now, Optuna, before, ...); the table shows the median of each.

    python bench/startup.py [--repeats 3] [--before REV]

With --before, REV is checked out into a temporary git worktree and run from there (same venv).
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------------- inside a timed process


def child_tunetrain(experiment: str, out: str) -> None:
    """Run `tunetrain search experiment` in this process, with timestamps at each step written to `out`."""
    t0 = time.perf_counter()
    stamps: dict[str, float] = {}

    def stamp(name: str) -> None:
        stamps.setdefault(name, time.perf_counter() - t0)

    import ray

    stamp("ray imported")
    real_init = ray.init

    def init(*args, **kwargs):
        stamp("ray.init called")
        try:
            return real_init(*args, **kwargs)
        finally:
            stamp("ray.init returned")

    ray.init = init

    def patch_tuner(module) -> None:
        real_fit = module.Tuner.fit

        def fit(self):
            stamp("Tuner.fit called")
            try:
                return real_fit(self)
            finally:
                stamp("Tuner.fit returned")

        module.Tuner.fit = fit

    def patch_bookkeeper(module) -> None:
        for name in ("on_trial_start", "on_trial_result", "on_trial_complete"):
            real = getattr(module.Bookkeeper, name)

            def wrapped(self, *args, _real=real, _name=name, **kwargs):
                stamp(f"first {_name}")
                result = _real(self, *args, **kwargs)
                stamps[f"last {_name}"] = time.perf_counter() - t0
                return result

            setattr(module.Bookkeeper, name, wrapped)

    # patched as they are imported, when tunetrain imports them: importing them here would take their import time
    # (Ray Tune's, about a second) out of the steps timed
    _after_import({"ray.tune.tuner": patch_tuner, "tunetrain.tuning.ray.driver": patch_bookkeeper})
    real_shutdown = ray.shutdown

    def shutdown(*args, **kwargs):
        stamp("ray.shutdown called")
        try:
            return real_shutdown(*args, **kwargs)
        finally:
            stamp("ray.shutdown returned")

    ray.shutdown = shutdown
    stamp("wrappers set")
    from tunetrain import cli

    sys.argv = ["tunetrain", "search", experiment]
    if cli.main() != 0:
        raise SystemExit(f"tunetrain search {experiment} failed")
    stamp("main returned")
    import tunetrain

    assert Path(tunetrain.__file__).resolve().parent.parent == Path.cwd().resolve(), tunetrain.__file__
    Path(out).write_text(json.dumps(stamps))


def child_optuna(out: str) -> None:
    """The same 2 trials x 1 epoch by hand with Optuna in-process (bench/search_vs_handwritten.py's objective)."""
    t0 = time.perf_counter()
    stamps: dict[str, float] = {}
    sys.path.insert(0, str(Path(__file__).parent))
    import search_vs_handwritten as hand

    def report(epoch, accuracy):
        stamps.setdefault("first epoch reported", time.perf_counter() - t0)

    import optuna
    import torch

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    stamps["imports done"] = time.perf_counter() - t0
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    study.optimize(lambda trial: hand.hand_loop(hand.suggest(trial), 1, report), n_trials=2, n_jobs=2)
    stamps["main returned"] = time.perf_counter() - t0
    Path(out).write_text(json.dumps(stamps))


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, loader, patch) -> None:
        self.loader, self.patch = loader, patch

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.loader.exec_module(module)
        self.patch(module)


class _PatchingFinder(importlib.abc.MetaPathFinder):
    def __init__(self, patches) -> None:
        self.patches = patches

    def find_spec(self, name, path, target=None):
        if name not in self.patches:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _PatchingLoader(spec.loader, self.patches[name])
        return spec


def _after_import(patches) -> None:
    """Call patches[name](module) once module `name` is imported (by whoever imports it)."""
    sys.meta_path.insert(0, _PatchingFinder(patches))


# ---------------------------------------------------------------------- the comparison

STEPS = [  # (what the table calls it, the stamp that ends it)
    ("Ray imported", "ray imported"),
    ("Ray started (ray.init returned)", "ray.init returned"),
    ("Tuner.fit called", "Tuner.fit called"),
    ("first trial started", "first on_trial_start"),
    ("first evaluation reported", "first on_trial_result"),
    ("last trial ended", "last on_trial_complete"),
    ("Ray shut down", "ray.shutdown returned"),
    ("main returned", "main returned"),
]


def timed(cmd: list[str], cwd: Path, out: Path) -> dict[str, float]:
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = str(cwd)  # the tunetrain of that checkout, not the installed one
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL)
    stamps = json.loads(out.read_text())
    stamps["process exited"] = time.perf_counter() - start
    out.unlink()
    return stamps


def experiment_file(workdir: Path, name: str) -> Path:
    import yaml

    sys.path.insert(0, str(Path(__file__).parent))
    import search_vs_handwritten as hand

    experiment = hand.tunetrain_experiment(2, 1, str(workdir / f"runs-{name}"))
    experiment["name"] = f"startup-{name}"
    experiment["search"]["scheduler"]["grace_period"] = 1  # one epoch
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(experiment, sort_keys=False))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--before", help="a git revision to compare with (checked out in a temporary worktree)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--child-optuna", help=argparse.SUPPRESS)
    cli = parser.parse_args()
    if cli.child:
        child_tunetrain(*cli.child)
        return
    if cli.child_optuna:
        child_optuna(cli.child_optuna)
        return

    with tempfile.TemporaryDirectory(prefix="tunetrain-startup-") as tmp:
        tmp = Path(tmp)
        checkouts = {"now": ROOT}
        if cli.before:
            worktree = tmp / "before"
            subprocess.run(["git", "worktree", "add", "--detach", str(worktree), cli.before], cwd=ROOT, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
            checkouts = {f"before ({cli.before})": worktree, "now": ROOT}
        try:
            runs: dict[str, list[dict[str, float]]] = {name: [] for name in [*checkouts, "optuna in-process"]}
            for repeat in range(cli.repeats):
                for name, checkout in checkouts.items():
                    path = experiment_file(tmp, f"{len(runs[name])}-{name.split()[0]}")
                    out = tmp / "stamps.json"
                    script = checkout / "bench" / "startup.py"
                    if not script.exists():  # an older checkout: this file's child, run against that checkout
                        script = Path(__file__).resolve()
                    runs[name].append(
                        timed([sys.executable, str(script), "--child", str(path), str(out)], checkout, out)
                    )
                out = tmp / "stamps.json"
                runs["optuna in-process"].append(
                    timed([sys.executable, str(Path(__file__).resolve()), "--child-optuna", str(out)], ROOT, out)
                )
                print(f"repeat {repeat + 1}/{cli.repeats} done", file=sys.stderr)
        finally:
            if cli.before:
                subprocess.run(["git", "worktree", "remove", "--force", str(tmp / "before")], cwd=ROOT, check=False)

    def median(name: str, key: str) -> str:
        values = [run[key] for run in runs[name] if key in run]
        return f"{statistics.median(values):6.2f}" if values else "     -"

    names = list(runs)
    print("2 trials x 1 epoch, MNIST-1D CNN, 2 at a time; seconds since the process started, median of "
          f"{cli.repeats}")  # fmt: skip
    print(f"{'step':34}" + "".join(f"{name:>24}" for name in names))
    for label, key in [*STEPS, ("Optuna: imports done", "imports done"), ("Optuna: first epoch reported",
                                                                              "first epoch reported")]:  # fmt: skip
        print(f"{label:34}" + "".join(f"{median(name, key):>24}" for name in names))
    print(f"{'process exited (wall)':34}" + "".join(f"{median(name, 'process exited'):>24}" for name in names))
    walls = {name: statistics.median(run["process exited"] for run in runs[name]) for name in names}
    for name in checkouts:
        print(f"fixed cost {name} / optuna in-process: {walls[name] / walls['optuna in-process']:.2f}")


if __name__ == "__main__":
    main()
