"""Search overhead per trial slot: `tunetrain.search` against bare Ray Tune, side by side in one run.

24 tiny trials of 10 evaluations each, 2 at a time, on a local Ray. The tunetrain trials are real `train()` runs
of a task so small that training is negligible (a linear model, 64 examples, one optimizer step per evaluation:
about 3 ms of compute per trial); every evaluation is reported with its checkpoint, as in any search. The bare
Ray Tune trials are a function trainable that only calls `tune.report` 10 times, with Ray's defaults (no actor
reuse). With training time taken as 0 for both, the overhead per trial slot is

    search wall time x concurrency / trials

It counts everything a trial costs besides its math: actor start or reuse, task and model set-up, evaluation,
checkpoint writes, reports and Ray persisting the checkpoints. Ray's start-up (the same for both) is measured
apart and left out.

    python bench/search_overhead.py [--trials 24] [--evaluations 10]

Target (issue 5): <= 0.3 s per trial slot for tunetrain on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # a local Ray on 127.0.0.1, before Ray is imported
os.environ.setdefault("OMP_NUM_THREADS", "1")

TASK = """
import torch
from torch.utils.data import TensorDataset
from tunetrain import Task

_g = torch.Generator().manual_seed(0)
_x = torch.randn(64, 8, generator=_g)
_y = (_x[:, 0] > 0).long()


def task():
    return Task(
        model_init=lambda params: torch.nn.Linear(8, 2),
        train_dataset=TensorDataset(_x, _y),
        eval_dataset=TensorDataset(_x, _y),
        compute_metrics=lambda p, l: {"accuracy": float((p.argmax(-1) == l).mean())},
    )
"""


def tunetrain_search(root: Path, trials: int, evaluations: int) -> tuple[float, float]:
    """Wall seconds of a tunetrain search on a running local Ray, and seconds until its first trial ended."""
    import tunetrain
    from tunetrain.experiment import experiment_from_dict

    (root / "tiny_task.py").write_text(TASK)
    experiment = experiment_from_dict(
        {
            "name": "overhead",
            "task": f"{root / 'tiny_task.py'}:task",
            "train": {"max_steps": evaluations, "per_device_train_batch_size": 64, "eval_strategy": "steps",
                      "eval_steps": 1, "logging_strategy": "no", "report_to": "none",
                      "metric_for_best_model": "accuracy", "per_device_eval_batch_size": 64},
            "space": {"learning_rate": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True}},
            "search": {"num_trials": trials, "max_concurrent_trials": 2, "scheduler": "none", "sampler": "random",
                       "storage": str(root / "runs")},
        }
    )  # fmt: skip
    start, started_at = time.perf_counter(), time.time()
    result = tunetrain.search(experiment)
    wall = time.perf_counter() - start
    assert len(result.trials) == trials and {t.status for t in result.trials} == {"completed"}
    return wall, min(t.ended_at for t in result.trials) - started_at


def bare_ray_tune(root: Path, trials: int, evaluations: int, reuse_actors: bool = False, torch: bool = False) -> float:
    """Wall seconds of the same search shape in bare Ray Tune (its defaults, or reused actors).

    With `torch`, the trainable also does what any PyTorch trainable does first: import torch and make an
    optimizer (the first one imports torch._dynamo), once per worker process; a second each on this machine.
    """
    from ray import tune

    def trainable(config: dict) -> None:
        if torch:
            import torch as pytorch

            pytorch.optim.AdamW([pytorch.zeros(1, requires_grad=True)])
        for i in range(evaluations):
            tune.report({"accuracy": config["x"] * (i + 1)})

    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        param_space={"x": tune.uniform(0, 1)},
        tune_config=tune.TuneConfig(
            num_samples=trials, max_concurrent_trials=2, metric="accuracy", mode="max", reuse_actors=reuse_actors
        ),
        run_config=tune.RunConfig(name=f"bare-{reuse_actors}-{torch}", storage_path=str(root / "ray"), verbose=0),
    )
    start = time.perf_counter()
    tuner.fit()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--evaluations", type=int, default=10)
    cli = parser.parse_args()
    import logging

    import ray

    start = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             logging_level=logging.ERROR)  # fmt: skip
    startup = time.perf_counter() - start
    logging.getLogger("tunetrain").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bare = bare_ray_tune(root, cli.trials, cli.evaluations)
        reused = bare_ray_tune(root, cli.trials, cli.evaluations, reuse_actors=True)
        reused_torch = bare_ray_tune(root, cli.trials, cli.evaluations, reuse_actors=True, torch=True)
        wall, first = tunetrain_search(root, cli.trials, cli.evaluations)
    ray.shutdown()
    slots = cli.trials / 2
    print(json.dumps({"ray_startup_s": round(startup, 2), "trials": cli.trials, "evaluations": cli.evaluations}))
    print(f"bare Ray Tune, defaults        wall {bare:6.2f} s   per trial slot {bare / slots:.3f} s")
    print(f"bare Ray Tune, reused actors   wall {reused:6.2f} s   per trial slot {reused / slots:.3f} s")
    print(f"  + import torch, an optimizer  wall {reused_torch:6.2f} s   per trial slot {reused_torch / slots:.3f} s")
    print(f"tunetrain search               wall {wall:6.2f} s   per trial slot {wall / slots:.3f} s  (target <= 0.3)")
    # the first trials pay once for the worker processes: Ray's actor start-up, then importing torch and the task
    print(f"  of which: until the first trial ended {first:.2f} s (one-time start-up); after it, per trial slot "
          f"{(wall - first) / (slots - 1):.3f} s")  # fmt: skip
    print(f"ratio tunetrain / bare per slot: {wall / bare:.2f} (defaults), {wall / reused:.2f} (reused actors), "
          f"{wall / reused_torch:.2f} (reused actors, importing torch)")  # fmt: skip


if __name__ == "__main__":
    main()
