"""Data-parallel scaling: samples/s of one process against N processes, side by side in one run, and what a
data-parallel trial's start-up costs on Ray Train.

1. Scaling. The same run (an MLP big enough that the step dominates: `--width` x `--layers`, synthetic data, no
   evaluation or checkpoint) trained by `tunetrain.launch` on 1 process with a global batch of `--batch`, then on
   N processes with `--batch / N` each (the same global batches: the same work). Samples/s is the loop's own
   `train_samples_per_second` (the main process's wall time; samples of every process). Efficiency: samples/s at
   N / (N x samples/s at 1). Each process has `--threads` torch threads; a third row gives one process the
   threads of all N (on a CPU, the other way to use the same cores). On a 2-core machine expect little gain; the
   figure is for GPU machines (nccl, a process a GPU).
2. Ray Train start-up (`--ray`): on a local Ray started once, a TorchTrainer of N workers whose function does
   nothing, `--repeats` times: what a data-parallel trial pays before its first step that a 1-process trial on a
   reused actor does not (worker group, process group, imports), against one Ray task that does nothing.

    python bench/ddp_scaling.py [--nproc 2] [--width 1024] [--layers 4] [--batch 256] [--steps 200] [--threads 1]
    python bench/ddp_scaling.py --ray [--nproc 2] [--repeats 3] [--ray-defaults]
    python bench/ddp_scaling.py --gpu ...        # one process a GPU (nccl); needs N GPUs
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def big_task(width: int, layers: int, examples: int):
    """A synthetic classification task whose model is `layers` linear layers of `width`."""
    import torch
    from torch.utils.data import TensorDataset

    from tunetrain import Task

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(examples, width, generator=generator)
    y = torch.randint(0, 10, (examples,), generator=generator)

    def model_init(params):
        torch.manual_seed(0)
        blocks = [m for _ in range(layers - 1) for m in (torch.nn.Linear(width, width), torch.nn.ReLU())]
        return torch.nn.Sequential(*blocks, torch.nn.Linear(width, 10))

    return Task(model_init=model_init, train_dataset=TensorDataset(x, y), name="ddp-bench")


def run(options: dict) -> dict:
    """One run in this process (of a launch); the loop's metrics."""
    from tunetrain import TrainingArguments
    from tunetrain.loop import Trainer

    task = big_task(options["width"], options["layers"], options["examples"])
    args = TrainingArguments(
        output_dir=options["output_dir"], per_device_train_batch_size=options["per_device"], max_steps=options["steps"],
        eval_strategy="no", save_strategy="no", logging_strategy="no", report_to="none", disable_tqdm=True,
        use_cpu=not options["gpu"], learning_rate=1e-3,
    )  # fmt: skip
    return Trainer(task, args, console=False).train().metrics


def scaling(cli: argparse.Namespace) -> None:
    from tunetrain.launch import launch

    examples = cli.batch * cli.steps  # one epoch: every step a fresh global batch
    rows = []
    # 1 process; 1 process with the cores N processes have (on a CPU, threads are the other way to use them); N
    for nproc, threads in ((1, cli.threads), (1, cli.threads * cli.nproc), (cli.nproc, cli.threads)):
        options = {
            "width": cli.width, "layers": cli.layers, "examples": examples, "steps": cli.steps, "gpu": cli.gpu,
            "per_device": cli.batch // nproc, "output_dir": tempfile.mkdtemp(prefix="ddp-bench-"),
        }  # fmt: skip
        launch(run, ({**options, "steps": 5},), nproc=nproc, threads=threads)  # warm-up: caches, allocator
        metrics = launch(run, (options,), nproc=nproc, threads=threads)
        assert metrics["num_processes"] == nproc
        rows.append((nproc, threads, metrics["train_samples_per_second"]))
    one = rows[0][2]
    where = "GPU (nccl)" if cli.gpu else "CPU (gloo)"
    print(f"model: {cli.layers} x {cli.width} MLP, global batch {cli.batch}, {cli.steps} steps, {where}, "
          f"{os.cpu_count()} logical CPUs")  # fmt: skip
    print(f"{'processes':>10} {'threads':>8} {'samples/s':>12} {'vs 1':>8}")
    for nproc, threads, rate in rows:
        print(f"{nproc:>10} {threads:>8} {rate:>12.1f} {rate / one:>8.2f}")
    print(f"data-parallel efficiency (N processes / N x 1 process): {rows[2][2] / (cli.nproc * one):.2f}")


def ray_startup(cli: argparse.Namespace) -> None:
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    if not cli.ray_defaults:  # what a tunetrain data-parallel trial sets
        from tunetrain.tuning.ray.data_parallel import RAY_TRAIN_ENV

        for key, value in RAY_TRAIN_ENV.items():
            os.environ.setdefault(key, value)
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    began = time.perf_counter()
    ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False, logging_level="ERROR",
             log_to_driver=False)  # fmt: skip
    print(f"ray.init: {time.perf_counter() - began:.2f} s")
    nothing = ray.remote(num_cpus=0)(lambda: None)
    ray.get(nothing.remote())  # the first worker process
    times, fits = [], []
    for _ in range(cli.repeats):
        began = time.perf_counter()
        ray.get(nothing.remote())
        times.append(time.perf_counter() - began)
        trainer = TorchTrainer(
            lambda config: None,
            scaling_config=ScalingConfig(num_workers=cli.nproc, use_gpu=cli.gpu, resources_per_worker={"CPU": 1}),
            run_config=RunConfig(storage_path=tempfile.mkdtemp(prefix="ddp-bench-ray-"), name="startup"),
        )
        began = time.perf_counter()
        trainer.fit()
        fits.append(time.perf_counter() - began)
    ray.shutdown()
    print(f"a Ray task that does nothing: {min(times) * 1000:.1f} ms (best of {cli.repeats})")
    shown = ", ".join(f"{t:.2f}" for t in fits)
    median = sorted(fits)[len(fits) // 2]
    print(f"a TorchTrainer of {cli.nproc} workers that does nothing: {shown} s; median {median:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=256, help="the global batch")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="torch threads a process")
    parser.add_argument("--gpu", action="store_true", help="one process a GPU (nccl)")
    parser.add_argument("--ray", action="store_true", help="measure Ray Train's start-up instead")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ray-defaults", action="store_true", help="Ray Train's own settings, not tunetrain's")
    cli = parser.parse_args()
    if cli.ray:
        ray_startup(cli)
    else:
        scaling(cli)


if __name__ == "__main__":
    main()
