"""Many trials: the driver's memory, time per trial, Optuna's ask time and disk per trial over a search of 2,000.

One `tunetrain.search` of `--trials` tiny trials (the task of bench/search_overhead.py: a linear model, 64
examples, one optimizer step per evaluation), `--evaluations` evaluations each, 2 at a time, TPE, no early
stopping, on a local Ray, through tunetrain's real search path (in this process: the driver is this process).
Read at 1/8, 1/4, 1/2 and all of the trials (250 / 500 / 1,000 / 2,000 for the default 2,000), as each of those
trials is done (from inside the driver: the bookkeeper's end of a trial):

- driver RSS, and its growth per trial since the mark before;
- seconds per trial of the search over the last `--window` trials ending there (from results.parquet's
  `ended_at`), and, over the same window, the driver's time per trial in: Optuna's ask (`OptunaSearch.suggest`:
  TPE gets slower with the study's size, optuna#2172), the study's journal mirror, tunetrain's bookkeeping
  (results / history, ended.json), the seal of Ray's snapshots, and Ray's own experiment snapshot;
- disk per trial of the experiment dir, by kind: checkpoints (the loops' own), Ray's state (its experiment state,
  searcher and per-trial dirs: token checkpoints, result files), tunetrain's sealed copy of it, TensorBoard events,
  results (results.parquet, history.parquet, search.json, ended.json), the Optuna journal.

With `--tracemalloc A B`, Python's allocations are traced (slower: use a few hundred trials) and snapshots taken
at A and B trials done are diffed, per trial: by the allocating line of tunetrain / Ray / Optuna / pyarrow (the
innermost frame in one of them: json.dumps called by Ray counts as Ray's), by package, and the live objects by type.

    python bench/search_scale.py [--trials 2000] [--evaluations 3]
    python bench/search_scale.py --trials 500 --tracemalloc 200 400

Targets (issue 17): 2,000 trials finish; driver RSS growth <= 50 KiB a trial beyond the results kept; seconds per
trial at 2,000 within 1.5x of those at 250.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # a local Ray on 127.0.0.1, before Ray is imported
os.environ.setdefault("OMP_NUM_THREADS", "1")

from search_memory import _deep_size, _rss, run_search  # bench/ is the script's directory, so on sys.path

KIB = 1024
MIB = 1024 * 1024
PARTS = ("ask", "mirror", "bookkeeping", "seal", "ray snapshot")  # the driver's time, by part
KINDS = ("checkpoints", "ray state", "sealed copy", "tensorboard", "results", "journal")
PACKAGES = ("tunetrain", "ray", "optuna", "pyarrow")


class Probe:
    """What the bench reads inside the driver: timed calls by part, and the marks taken as trials end."""

    def __init__(self, marks: list[int], exp_dir: Path, traced: tuple[int, int] | None) -> None:
        self.marks = set(marks)
        self.exp_dir = exp_dir
        self.traced = set(traced or ())
        self.calls: dict[str, list[tuple[float, float]]] = {part: [] for part in PARTS}  # (ended at, seconds)
        self.asks: list[float] = []  # seconds of each suggest that returned a config, in order
        self.ended = 0
        self.at: dict[int, dict] = {}  # mark -> {"rss", "disk", "time"}
        self.snapshots: dict[int, tuple] = {}  # mark -> (tracemalloc snapshot, object counts by type)

    def timed(self, part: str, method):
        calls = self.calls[part]

        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                calls.append((time.time(), time.perf_counter() - start))

        return wrapper

    def timed_ask(self, method):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            config = method(*args, **kwargs)
            if isinstance(config, dict):
                self.asks.append(time.perf_counter() - start)
                self.calls["ask"].append((time.time(), self.asks[-1]))
            return config

        return wrapper

    def trial_ended(self) -> None:
        self.ended += 1
        if self.ended in self.traced:
            gc.collect()
            counts = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
            self.snapshots[self.ended] = (tracemalloc.take_snapshot(), counts)
        if self.ended in self.marks:
            self.at[self.ended] = {"rss": _rss(), "disk": disk_usage(self.exp_dir), "time": time.time()}


def install(probe: Probe) -> None:
    """Wrap the driver's methods the probe times (class attributes: the objects the search builds use them)."""
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.search.optuna import OptunaSearch

    from tunetrain.tuning.ray.driver import Bookkeeper, PrunedAwareOptunaSearch

    OptunaSearch.suggest = probe.timed_ask(OptunaSearch.suggest)
    PrunedAwareOptunaSearch.mirror = probe.timed("mirror", PrunedAwareOptunaSearch.mirror)
    for name in ("on_trial_start", "on_trial_result", "on_trial_complete", "on_trial_error"):
        setattr(Bookkeeper, name, probe.timed("bookkeeping", getattr(Bookkeeper, name)))
    Bookkeeper.seal = probe.timed("seal", Bookkeeper.seal)
    TuneController.checkpoint = probe.timed("ray snapshot", TuneController.checkpoint)
    finish = Bookkeeper._finish

    def _finish(self, *args, **kwargs):
        finish(self, *args, **kwargs)
        probe.trial_ended()

    Bookkeeper._finish = _finish


def disk_usage(experiment_dir: Path) -> dict[str, int]:
    """{kind: bytes} of every file under the experiment dir."""
    usage = dict.fromkeys(KINDS, 0)
    for dirpath, _, filenames in os.walk(experiment_dir):
        relative = Path(dirpath).relative_to(experiment_dir).parts
        for name in filenames:
            try:
                size = os.lstat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:  # a temporary file renamed meanwhile
                continue
            usage[_kind(relative, name)] += size
    return usage


def _kind(relative: tuple[str, ...], name: str) -> str:
    top = relative[0] if relative else ""
    if top == "tensorboard":
        return "tensorboard"
    if top == "trials":
        return "checkpoints" if any(p.startswith("checkpoint-") for p in relative) else "results"  # ended.json
    if top == "ray-state-backup":
        return "sealed copy"
    if not relative and name.startswith("optuna.journal"):
        return "journal"
    if not relative and name.split(".tmp")[0] in ("results.parquet", "history.parquet", "search.json"):
        return "results"
    return "ray state"  # experiment_state-*, searcher-state-*, tuner.pkl, trial_<id>/ (tokens, Ray's result files)


def per_trial_in(calls: list[tuple[float, float]], start: float, end: float, trials: int) -> float:
    """Seconds per trial spent in `calls` that ended in (start, end]."""
    return sum(seconds for at, seconds in calls if start < at <= end) / trials


def print_traced(probe: Probe, first: int, second: int, top: int) -> None:
    """The growth of Python's allocations between two marks, per trial, by origin."""
    (before, counts_before), (after, counts_after) = probe.snapshots[first], probe.snapshots[second]
    n = second - first
    by_line: dict[tuple[str, str], list[int]] = {}
    by_package: dict[str, int] = collections.Counter()
    for stat in after.compare_to(before, "traceback"):
        package, line = _origin(stat.traceback)
        entry = by_line.setdefault((package, line), [0, 0])
        entry[0] += stat.size_diff
        entry[1] += stat.count_diff
        by_package[package] += stat.size_diff
    total = sum(by_package.values())
    print(f"\ntracemalloc, trials {first} -> {second}: Python allocations grew {total / n / KIB:.1f} KiB per trial")
    print("  by package: " + ", ".join(f"{p} {b / n / KIB:.2f}" for p, b in sorted(by_package.items(),
                                                                                   key=lambda i: -i[1])))  # fmt: skip
    print(f"  top {top} allocating lines (the innermost frame of {', '.join(PACKAGES)}), per trial:")
    for (_, line), (size, count) in sorted(by_line.items(), key=lambda i: -i[1][0])[:top]:
        print(f"    {size / n / KIB:8.2f} KiB {count / n:7.1f} blocks  {line}")
    grown = [(name, counts_after[name] - counts_before.get(name, 0)) for name in counts_after]
    grown = sorted((g for g in grown if g[1] > 0), key=lambda g: -g[1])[:top]
    print("  live objects (gc) by type, per trial: " + ", ".join(f"{name} {count / n:.1f}" for name, count in grown))


def _origin(traceback: tracemalloc.Traceback) -> tuple[str, str]:
    """(package, 'path:line') of the innermost frame in one of PACKAGES, else of the innermost frame; 'bench' for
    what this script allocated itself (the probe's timings)."""
    if traceback[-1].filename == __file__:  # oldest first: the innermost is the last
        return "bench", f"{Path(__file__).name}:{traceback[-1].lineno}"
    for frame in reversed(traceback):
        parts = Path(frame.filename).parts
        for package in PACKAGES:
            if package in parts:
                index = len(parts) - 1 - parts[::-1].index(package)
                return package, f"{'/'.join(parts[index:])}:{frame.lineno}"
    frame = traceback[-1]
    return "other", f"{frame.filename}:{frame.lineno}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--evaluations", type=int, default=3)
    parser.add_argument("--window", type=int, default=50, help="trials over which time per trial is taken")
    parser.add_argument("--tracemalloc", type=int, nargs=2, metavar=("A", "B"), help="diff allocations at A, B")
    parser.add_argument("--top", type=int, default=20, help="lines and types shown with --tracemalloc")
    cli = parser.parse_args()
    if cli.trials < 16:
        parser.error(f"`--trials` is {cli.trials}, but must be >= 16 (read at 1/8 of them)")
    if cli.tracemalloc and not 0 < cli.tracemalloc[0] < cli.tracemalloc[1] <= cli.trials:
        parser.error(f"`--tracemalloc` is {cli.tracemalloc}, but must be 0 < A < B <= --trials")
    n = cli.trials
    marks = sorted({n // 8, n // 4, n // 2, n})
    window = min(cli.window, marks[0])
    import logging

    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             logging_level=logging.ERROR)  # fmt: skip
    logging.getLogger("tunetrain").setLevel(logging.WARNING)
    import tunetrain.results
    import tunetrain.tuning.ray.backend  # Ray Tune and Optuna, imported before the baseline is read

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        probe = Probe(marks, root / "runs" / "scale", cli.tracemalloc)
        install(probe)
        if cli.tracemalloc:
            tracemalloc.start(16)
        baseline = _rss()
        result, wall = run_search(root, n, cli.evaluations, name="scale", sampler="tpe")
        tracemalloc.stop()
        experiment_dir = Path(result.experiment_dir)
        kept = _deep_size(result.trials) + _deep_size(tunetrain.results.read_history(experiment_dir))
        final_disk = disk_usage(experiment_dir)
    ray.shutdown()

    ended = sorted(t.ended_at for t in result.trials)
    print(json.dumps({"trials": n, "evaluations": cli.evaluations, "concurrency": 2, "sampler": "tpe",
                      "scheduler": "none", "wall_s": round(wall, 1), "window": window,
                      "tracemalloc": cli.tracemalloc}))  # fmt: skip
    print(f"driver RSS before the search {baseline / MIB:.1f} MiB; results kept {kept / n / KIB:.1f} KiB per trial")
    header = ["trials", "RSS MiB", "KiB/trial", "s/trial", *(f"{p} ms" for p in PARTS), "disk KiB/trial"]
    print("  ".join(header))
    spt, previous = {}, (0, baseline)
    for mark in marks:
        at = probe.at[mark]
        growth = (at["rss"] - previous[1]) / (mark - previous[0]) / KIB
        start, end = ended[mark - 1 - window] if mark > window else ended[0], ended[mark - 1]
        spt[mark] = (end - start) / (window if mark > window else mark - 1)
        parts = [per_trial_in(probe.calls[p], start, end, window) * 1000 for p in PARTS]
        cells = [mark, f"{at['rss'] / MIB:.1f}", f"{growth:.1f}", f"{spt[mark]:.3f}", *(f"{v:.1f}" for v in parts),
                 f"{sum(at['disk'].values()) / mark / KIB:.1f}"]  # fmt: skip
        print("  ".join(str(c).rjust(len(h)) for c, h in zip(cells, header, strict=True)))
        previous = (mark, at["rss"])
    asks = probe.asks
    print("Optuna ask ms, mean of the window ending at: " + ", ".join(
        f"{m}: {1000 * sum(asks[max(0, m - window):m]) / len(asks[max(0, m - window):m]):.2f}" for m in marks
        if m <= len(asks)))  # fmt: skip
    print(f"disk per trial at the end, {sum(final_disk.values()) / n / KIB:.1f} KiB: " + ", ".join(
        f"{kind} {final_disk[kind] / n / KIB:.1f}" for kind in KINDS))  # fmt: skip
    first, last = marks[0], marks[-1]
    growth = (probe.at[last]["rss"] - probe.at[first]["rss"]) / (last - first) / KIB
    beyond = growth - kept / n / KIB
    ratio = spt[last] / spt[first]
    print(f"target: {n} trials finish: yes ({wall:.0f} s)")
    print(f"target: driver RSS growth <= 50 KiB a trial beyond the results kept: {growth:.1f} KiB from {first} to "
          f"{last} trials, {beyond:.1f} beyond: {'yes' if beyond <= 50 else 'no'}")  # fmt: skip
    print(f"target: s/trial at {last} within 1.5x of those at {first}: {ratio:.2f}x: {'yes' if ratio <= 1.5 else 'no'}")
    if cli.tracemalloc:
        print_traced(probe, *cli.tracemalloc, cli.top)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
