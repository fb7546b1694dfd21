"""tunetrain.train() against a hand-written PyTorch loop: samples/s ratio, measured side by side in one run.

Same model (MNIST-1D MLP), data, batch order (a RandomSampler reseeded with seed + epoch), optimizer (AdamW, no
decay on 1-D params), LR schedule (linear with warmup), gradient clipping; CPU, one thread. Runs alternate
(raw, tunetrain, raw, ...) so that machine noise hits both; the median of each is compared.

The raw loop uses a DataLoader as written by hand, which fetches a batch example by example and stacks them;
tunetrain fetches a TensorDataset batch with one indexing per tensor (same batches), which is most of why it can
beat the raw loop here. A second raw loop with the same batched fetching shows tunetrain's own overhead alone.

The same work on a tiny model (issue 17), where a step is short (~0.5 ms) and the framework's per-step Python work
shows most: a 30-256-2 MLP, batch 16, constant learning rate, no clipping, no evaluation, checkpoint or log line,
against a hand-written loop doing exactly that (same batched fetching, same optimizer groups, no loss tracking),
the two alternating epoch by epoch. Besides the ratio it prints tunetrain's own work a step: (1 / ours - 1 / raw)
samples/s, times the batch.

    python bench/loop_overhead.py [--epochs 20] [--tiny-epochs 20] [--repeats 3]

Targets: >= 0.97 with evaluation and checkpointing off, >= 0.90 with them on (each epoch) (issue 5); >= 0.97 on the
tiny model, the same work (<= 10 us of framework work a step) (issue 17).
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time

import torch
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from tunetrain import Task, Trainer, TrainingArguments, load_task
from tunetrain.data import batched

SEED = 42
BATCH = 64
LR = 3e-3
TINY_BATCH = 16


def tiny_task() -> Task:
    """A 30-256-2 MLP on 4096 synthetic examples (256 steps an epoch at batch 16): a step of about 0.5 ms."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 30, generator=generator)
    y = (x @ torch.randn(30, generator=generator) > 0).long()

    def model_init(params: dict) -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Linear(30, 256), torch.nn.ReLU(), torch.nn.Linear(256, 2))

    return Task(model_init=model_init, train_dataset=TensorDataset(x, y), name="tiny-mlp")


def raw_loop(task, epochs: int, batched_fetch: bool = False, *, batch: int = BATCH, same_work: bool = False) -> float:
    """The loop a user would write by hand; returns samples/s.

    With `batched_fetch`, its DataLoader fetches each batch at once as tunetrain's does (`tunetrain.data.batched`):
    the comparison then shows tunetrain's own overhead alone. With `same_work` (the tiny model's comparison): a
    constant learning rate and no clipping, as `tunetrain_loop(..., same_work=True)` is told.
    """
    torch.manual_seed(SEED)
    model = task.model_init({})
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}], lr=LR
    )
    generator = torch.Generator()
    dataset, collate_fn = batched(task.train_dataset, None) if batched_fetch else (task.train_dataset, None)
    loader = DataLoader(
        dataset,
        batch_size=batch,
        sampler=RandomSampler(dataset, generator=generator),
        collate_fn=collate_fn,
        generator=generator,
    )
    model.train()
    samples = 0
    if same_work:  # what tunetrain does with a constant rate, no clipping and nothing logged
        start = time.perf_counter()
        for epoch in range(epochs):
            generator.manual_seed(SEED + epoch)
            for x, y in loader:
                loss = torch.nn.functional.cross_entropy(model(x), y)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                samples += y.shape[0]
        return samples / (time.perf_counter() - start)
    total = epochs * len(loader)
    warmup = math.ceil(0.1 * total)

    def factor(step: int) -> float:
        return step / warmup if step < warmup else max(0.0, 1 - (step - warmup) / max(1, total - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    start = time.perf_counter()
    for epoch in range(epochs):
        generator.manual_seed(SEED + epoch)
        for x, y in loader:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            samples += y.shape[0]
    return samples / (time.perf_counter() - start)


def tunetrain_loop(
    task, epochs: int, with_eval_and_save: bool, *, batch: int = BATCH, same_work: bool = False
) -> float:
    """tunetrain.train()'s samples/s. With `same_work`: a constant learning rate (no warmup) and no clipping
    (max_grad_norm 0), the work of `raw_loop(..., same_work=True)`."""
    with tempfile.TemporaryDirectory() as output_dir:
        schedule = {"lr_scheduler_type": "constant", "max_grad_norm": 0.0} if same_work else {"warmup_ratio": 0.1}
        args = TrainingArguments(
            output_dir=output_dir,
            num_train_epochs=epochs,
            per_device_train_batch_size=batch,
            per_device_eval_batch_size=500,
            learning_rate=LR,
            weight_decay=0.01,
            seed=SEED,
            logging_strategy="epoch" if with_eval_and_save else "no",
            eval_strategy="epoch" if with_eval_and_save else "no",
            save_strategy="epoch" if with_eval_and_save else "no",
            report_to="none",
            disable_tqdm=True,
            **schedule,
        )
        out = Trainer(task, args).train()
        return out.metrics["train_samples_per_second"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--tiny-epochs", type=int, default=20, help="epochs of the tiny model (256 steps each)")
    parser.add_argument("--repeats", type=int, default=3)
    cli = parser.parse_args()
    torch.set_num_threads(1)
    task = load_task("tunetrain.tasks.mnist1d:mlp")
    import logging

    logging.getLogger("tunetrain").setLevel(logging.WARNING)
    raw, raw_batched, plain, full = [], [], [], []
    tunetrain_loop(task, 1, True)  # warm-up: imports, first-call costs
    for _ in range(cli.repeats):
        raw.append(raw_loop(task, cli.epochs))
        raw_batched.append(raw_loop(task, cli.epochs, batched_fetch=True))
        plain.append(tunetrain_loop(task, cli.epochs, with_eval_and_save=False))
        full.append(tunetrain_loop(task, cli.epochs, with_eval_and_save=True))
    r, p, f = statistics.median(raw), statistics.median(plain), statistics.median(full)
    rb = statistics.median(raw_batched)
    print(f"raw loop                      {r:10.0f} samples/s")
    print(f"raw loop, batched fetching    {rb:10.0f} samples/s   (tunetrain's own overhead: no eval / save "
          f"{p / rb:.3f}, eval + save {f / rb:.3f} of this)")  # fmt: skip
    print(f"tunetrain, no eval / save     {p:10.0f} samples/s   ratio {p / r:.3f}  (target >= 0.97)")
    print(f"tunetrain, eval + save/epoch  {f:10.0f} samples/s   ratio {f / r:.3f}  (target >= 0.90)")

    # the same work on a tiny model. The two alternate epoch by epoch (each epoch a run of its own, 256 steps), so
    # that the machine's load, which changes by the second, falls on both alike; a repeat's samples/s is its epochs'
    # samples over their summed training time (tunetrain's: train_runtime, without its setup)
    tiny = tiny_task()
    raw_epoch = lambda: raw_loop(tiny, 1, batched_fetch=True, batch=TINY_BATCH, same_work=True)  # noqa: E731
    ours_epoch = lambda: tunetrain_loop(tiny, 1, False, batch=TINY_BATCH, same_work=True)  # noqa: E731
    raw_epoch(), ours_epoch()  # warm-up
    samples = len(tiny.train_dataset)
    tiny_raw, tiny_ours = [], []
    for _ in range(cli.repeats):
        raw_seconds = ours_seconds = 0.0
        for _ in range(cli.tiny_epochs):
            raw_seconds += samples / raw_epoch()
            ours_seconds += samples / ours_epoch()
        tiny_raw.append(samples * cli.tiny_epochs / raw_seconds)
        tiny_ours.append(samples * cli.tiny_epochs / ours_seconds)
    tr, to = statistics.median(tiny_raw), statistics.median(tiny_ours)
    framework_us = (1 / to - 1 / tr) * TINY_BATCH * 1e6
    print("tiny MLP 30-256-2, batch 16, the same work (constant lr, no clipping, no eval / save / log):")
    print(f"  hand-written loop           {tr:10.0f} samples/s   ({TINY_BATCH / tr * 1e6:.0f} us a step)")
    print(f"  tunetrain                   {to:10.0f} samples/s   ratio {to / tr:.3f}  (target >= 0.97); "
          f"tunetrain's own work {framework_us:.1f} us a step (target <= 10)")  # fmt: skip


if __name__ == "__main__":
    main()
