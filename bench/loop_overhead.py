"""tunetrain.train() against a hand-written PyTorch loop: samples/s ratio, measured side by side in one run.

Same model (MNIST-1D MLP), data, batch order (a RandomSampler reseeded with seed + epoch), optimizer (AdamW, no
decay on 1-D params), LR schedule (linear with warmup), gradient clipping; CPU, one thread. Runs alternate
(raw, tunetrain, raw, ...) so that machine noise hits both; the median of each is compared.

The raw loop uses a DataLoader as written by hand, which fetches a batch example by example and stacks them;
tunetrain fetches a TensorDataset batch with one indexing per tensor (same batches), which is most of why it can
beat the raw loop here. A second raw loop with the same batched fetching shows tunetrain's own overhead alone.

    python bench/loop_overhead.py [--epochs 20] [--repeats 3]

Targets (issue 5): >= 0.97 with evaluation and checkpointing off; >= 0.90 with them on (each epoch).
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time

import torch
from torch.utils.data import DataLoader, RandomSampler

from tunetrain import Trainer, TrainingArguments, load_task
from tunetrain.data import batched

SEED = 42
BATCH = 64
LR = 3e-3


def raw_loop(task, epochs: int, batched_fetch: bool = False) -> float:
    """The loop a user would write by hand; returns samples/s.

    With `batched_fetch`, its DataLoader fetches each batch at once as tunetrain's does (`tunetrain.data.batched`):
    the comparison then shows tunetrain's own overhead alone.
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
        batch_size=BATCH,
        sampler=RandomSampler(dataset, generator=generator),
        collate_fn=collate_fn,
        generator=generator,
    )
    total = epochs * len(loader)
    warmup = math.ceil(0.1 * total)

    def factor(step: int) -> float:
        return step / warmup if step < warmup else max(0.0, 1 - (step - warmup) / max(1, total - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    model.train()
    samples = 0
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


def tunetrain_loop(task, epochs: int, with_eval_and_save: bool) -> float:
    with tempfile.TemporaryDirectory() as output_dir:
        args = TrainingArguments(
            output_dir=output_dir,
            num_train_epochs=epochs,
            per_device_train_batch_size=BATCH,
            per_device_eval_batch_size=500,
            learning_rate=LR,
            weight_decay=0.01,
            warmup_ratio=0.1,
            seed=SEED,
            logging_strategy="epoch" if with_eval_and_save else "no",
            eval_strategy="epoch" if with_eval_and_save else "no",
            save_strategy="epoch" if with_eval_and_save else "no",
            report_to="none",
            disable_tqdm=True,
        )
        out = Trainer(task, args).train()
        return out.metrics["train_samples_per_second"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
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


if __name__ == "__main__":
    main()
