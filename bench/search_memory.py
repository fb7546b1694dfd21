"""Search driver memory and disk: the driver's RSS over a search of many tiny trials, and bytes on disk per trial.

One `tunetrain.search` of `--trials` tiny trials (the task of bench/search_overhead.py: a linear model, 64
examples, one optimizer step per evaluation), `--evaluations` evaluations each, 2 at a time, on a local Ray, with
the default checkpoint retention (keep_checkpoints_per_trial: 2, the best and the latest). The driver is this
process: Tune's controller, the Optuna searcher and tunetrain's bookkeeping (results.parquet / history.parquet).

- RSS: a thread reads this process's VmRSS every 0.1 s; after the search, each trial's `ended_at` in
  results.parquet places the samples against the number of trials done. Printed: RSS before the search (Ray up,
  everything imported), after each quarter of the trials, the growth per trial from the first quarter to the end
  (the difference, and a least-squares slope over every sample past the first quarter: one-time costs of the first
  trials are left out), and the peak. For scale, "results kept per trial": what results.parquet and
  history.parquet hold, read back as Python objects, per trial; that much growth is expected.
- Disk: every file under the experiment dir (os.walk), per trial, by kind: checkpoints (the loop's
  trials/<id>/checkpoint-<step> dirs), TensorBoard events, results (results.parquet, history.parquet,
  search.json), Ray's token checkpoints (checkpoint_* in Ray's trial dirs), Ray's state (experiment state,
  searcher, tuner and per-trial files); bytes (file sizes) and allocated (st_blocks: small files take a
  whole block). Then what lies outside it: Ray's staging dir of this session and the trials' scratch dirs left in
  the temp dir.

    python bench/search_memory.py [--trials 200] [--evaluations 5]

Target (issue 5): the driver must not grow with the trial count beyond the results it keeps.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # a local Ray on 127.0.0.1, before Ray is imported
os.environ.setdefault("OMP_NUM_THREADS", "1")

from search_overhead import TASK  # bench/ is the script's directory, so on sys.path

MIB = 1024 * 1024
KIB = 1024


class RssSampler(threading.Thread):
    """(time.time(), RSS bytes) of this process every `every_s` until stopped."""

    def __init__(self, every_s: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.every_s = every_s
        self.samples: list[tuple[float, int]] = []
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.samples.append((time.time(), _rss()))
            self._done.wait(self.every_s)

    def stop(self) -> None:
        self._done.set()
        self.join()
        self.samples.append((time.time(), _rss()))


def _rss() -> int:
    """This process's resident set size in bytes: /proc (Linux), else psutil."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * KIB
    except OSError:
        pass
    import psutil

    return psutil.Process().memory_info().rss


def _peak_rss() -> int:
    """The process's peak RSS so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * KIB


def run_search(root: Path, trials: int, evaluations: int, *, name: str = "memory", sampler: str = "random"):
    """The search's result and wall seconds (a tiny task; `sampler` with seed 0; each trial must complete)."""
    import tunetrain
    from tunetrain.experiment import experiment_from_dict

    (root / "tiny_task.py").write_text(TASK)
    experiment = experiment_from_dict(
        {
            "name": name,
            "task": f"{root / 'tiny_task.py'}:task",
            "train": {"max_steps": evaluations, "per_device_train_batch_size": 64, "eval_strategy": "steps",
                      "eval_steps": 1, "logging_strategy": "no", "metric_for_best_model": "accuracy",
                      "per_device_eval_batch_size": 64},
            "space": {"learning_rate": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True}},
            "search": {"num_trials": trials, "max_concurrent_trials": 2, "scheduler": "none", "sampler": sampler,
                       "seed": 0, "storage": str(root / "runs")},
        }
    )  # fmt: skip
    start = time.perf_counter()
    result = tunetrain.search(experiment)
    wall = time.perf_counter() - start
    statuses = {t.status for t in result.trials}
    if len(result.trials) != trials or statuses != {"completed"}:
        raise RuntimeError(f"{len(result.trials)} trials, statuses {statuses}")
    return result, wall


def rss_by_trials_done(samples: list[tuple[float, int]], ended: list[float]) -> list[tuple[int, int]]:
    """(trials done, RSS) for each sample taken after the first trial ended."""
    ended = sorted(ended)
    points, done = [], 0
    for at, rss in samples:
        while done < len(ended) and ended[done] <= at:
            done += 1
        if done:
            points.append((done, rss))
    return points


def rss_after(points: list[tuple[int, int]], n: int) -> int:
    """RSS at the first sample with at least n trials done."""
    return next(rss for done, rss in points if done >= n)


def disk_usage(experiment_dir: Path) -> dict[str, list[int]]:
    """{kind: [bytes, allocated bytes, files]} of every file under the experiment dir."""
    usage: dict[str, list[int]] = {}
    for dirpath, _, filenames in os.walk(experiment_dir):
        relative = Path(dirpath).relative_to(experiment_dir).parts
        for name in filenames:
            stat = os.lstat(os.path.join(dirpath, name))
            kind = _kind(relative, name)
            entry = usage.setdefault(kind, [0, 0, 0])
            entry[0] += stat.st_size
            entry[1] += stat.st_blocks * 512
            entry[2] += 1
    return usage


def _kind(relative: tuple[str, ...], name: str) -> str:
    if relative and relative[0] == "tensorboard":
        return "tensorboard"
    if relative and relative[0] == "trials" and any(part.startswith("checkpoint-") for part in relative):
        return "checkpoints"  # trials/<id>/checkpoint-<step>/: the loop's own, which a resumed trial starts from
    if any(part.startswith("checkpoint_") for part in relative):
        return "ray tokens"  # the token checkpoint Ray keeps per trial (a file naming the trial's dir)
    if not relative and name.split(".tmp")[0] in ("results.parquet", "history.parquet", "search.json"):
        return "results"
    return "ray state"


def _tree_bytes(path: Path) -> tuple[int, int]:
    """(bytes, files) under path."""
    total = files = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            total += os.lstat(os.path.join(dirpath, name)).st_size
            files += 1
    return total, files


def _deep_size(obj, seen: set[int] | None = None) -> int:
    """sys.getsizeof of obj and everything it holds (dicts, lists, dataclass fields)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, dict):
        size += sum(_deep_size(k, seen) + _deep_size(v, seen) for k, v in obj.items())
    elif isinstance(obj, (list, tuple, set)):
        size += sum(_deep_size(item, seen) for item in obj)
    elif hasattr(obj, "__dict__"):
        size += _deep_size(vars(obj), seen)
    return size


def _ray_session_artifacts() -> Path | None:
    """This Ray session's staging dir (private API: None where it moved)."""
    try:
        import ray._private.worker

        return Path(ray._private.worker._global_node.get_session_dir_path()) / "artifacts"
    except (AttributeError, ImportError, TypeError):
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--evaluations", type=int, default=5)
    cli = parser.parse_args()
    if cli.trials < 4:
        parser.error("--trials must be >= 4 (the RSS is read at each quarter)")
    import logging

    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             logging_level=logging.ERROR)  # fmt: skip
    logging.getLogger("tunetrain").setLevel(logging.WARNING)
    import tunetrain.results
    import tunetrain.tuning.ray.backend  # Ray Tune and Optuna, imported before the baseline is read

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        baseline = _rss()
        sampler = RssSampler()
        sampler.start()
        try:
            result, wall = run_search(root, cli.trials, cli.evaluations)
        finally:
            sampler.stop()
        peak = max(rss for _, rss in sampler.samples)
        experiment_dir = Path(result.experiment_dir)
        usage = disk_usage(experiment_dir)
        kept = _deep_size(result.trials) + _deep_size(tunetrain.results.read_history(experiment_dir))
        checkpoints_kept = sum(1 for _ in experiment_dir.glob("trials/*/checkpoint-*"))
        artifacts = _ray_session_artifacts()
        staging = _tree_bytes(artifacts) if artifacts is not None and artifacts.exists() else None
        scratch_dir = Path(tempfile.gettempdir()) / "tunetrain-trials"
        scratch = [p for t in result.trials for p in scratch_dir.glob(f"{t.trial_id}-*")]
    ray.shutdown()

    n = cli.trials
    points = rss_by_trials_done(sampler.samples, [t.ended_at for t in result.trials])
    quarters = [max(1, round(n * q / 4)) for q in (1, 2, 3, 4)]
    at = {q: rss_after(points, q) for q in quarters}
    late = [(done, rss) for done, rss in points if done >= quarters[0]]
    slope = statistics.linear_regression([d for d, _ in late], [r for _, r in late]).slope if len(late) > 1 else 0.0
    print(json.dumps({"trials": n, "evaluations": cli.evaluations, "concurrency": 2, "keep_checkpoints_per_trial": 2,
                      "wall_s": round(wall, 1), "rss_samples": len(sampler.samples)}))  # fmt: skip
    after = "  ".join(f"{q}: {at[q] / MIB:.1f}" for q in quarters)
    print(f"driver RSS MiB   before search {baseline / MIB:.1f}   after N trials done  {after}")
    print(f"driver RSS peak  {peak / MIB:.1f} MiB in the search (process peak {_peak_rss() / MIB:.1f} MiB)")
    growth = (at[quarters[-1]] - at[quarters[0]]) / max(1, quarters[-1] - quarters[0]) / KIB
    print(
        f"driver growth per trial, {quarters[0]} -> {n} trials: {growth:.1f} KiB (least squares {slope / KIB:.1f} "
        f"KiB); results kept per trial: {kept / n / KIB:.1f} KiB"
    )
    total = [sum(v[i] for v in usage.values()) for i in range(3)]
    print(
        f"disk per trial   {total[0] / n / KIB:.1f} KiB (allocated {total[1] / n / KIB:.1f}), {total[2] / n:.1f} files"
    )
    for kind in ("checkpoints", "tensorboard", "results", "ray tokens", "ray state"):
        size, allocated, files = usage.get(kind, [0, 0, 0])
        print(f"  {kind:<12} {size / n / KIB:8.1f} KiB  (allocated {allocated / n / KIB:8.1f})  {files / n:5.1f} files")
    if checkpoints_kept:
        per = usage.get("checkpoints", [0])[0] / checkpoints_kept / KIB
        print(f"  checkpoints kept per trial {checkpoints_kept / n:.2f}, {per:.1f} KiB each")
    if staging is not None:
        print(f"outside the experiment dir: Ray staging {staging[0] / n / KIB:.1f} KiB per trial ({staging[1]} files)")
    print(f"outside the experiment dir: {len(scratch)} trial scratch dirs left in {scratch_dir}")


if __name__ == "__main__":
    main()
