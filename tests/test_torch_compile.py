"""torch_compile (Transformers' argument): the training steps run through torch.compile, the checkpoints load and
resume without it, and the time spent compiling is reported apart from the training's.

The backends here are torch's own that need no C++ compiler: aot_eager (AOTAutograd's forward and backward graphs,
run by eager kernels) and eager (dynamo's graph capture alone). inductor measured 70 s for its first compile of the
tiny model on this machine: no test here.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import tiny_task
import torch
from safetensors.torch import load_file

from tunetrain import Task, Trainer, TrainingArguments
from tunetrain import checkpoint as ckpt


@pytest.fixture(autouse=True)
def _fresh_compile_caches() -> None:
    """Each test compiles from scratch: a graph cached by another test would take no time to compile here."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _args(tmp_path: Path, **overrides) -> TrainingArguments:
    values = dict(
        output_dir=str(tmp_path / "run"), max_steps=9, per_device_train_batch_size=16, learning_rate=0.01,
        logging_steps=3, save_steps=3, eval_strategy="no", report_to="none", disable_tqdm=True,
        torch_compile_backend="aot_eager",
    )  # fmt: skip
    values.update(overrides)
    return TrainingArguments(**values)


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_a_compiled_run_trains_as_the_eager_run_does(tmp_path, tiny_task):
    compiled = Trainer(tiny_task, _args(tmp_path))
    compiled_out = compiled.train()
    eager = Trainer(tiny_task, _args(tmp_path, torch_compile_backend=None, output_dir=str(tmp_path / "eager")))
    eager_out = eager.train()
    assert torch._dynamo.utils.counters["aot_autograd"]["ok"] >= 1  # the steps went through the compiled graphs
    assert compiled_out.metrics["train_compile_seconds"] > 0
    compiled_weights, eager_weights = _weights(compiled), _weights(eager)
    assert compiled_weights.keys() == eager_weights.keys()  # trainer.model is the model itself: no `_orig_mod.`
    for name, value in eager_weights.items():  # the same kernels (dropout's RNG draws too), so the same weights
        torch.testing.assert_close(compiled_weights[name], value, rtol=1e-5, atol=1e-6)
    assert compiled_out.training_loss == pytest.approx(eager_out.training_loss, rel=1e-5)


def test_compile_time_is_reported_apart_from_train_runtime(tmp_path, tiny_task):
    start = time.perf_counter()
    metrics = Trainer(tiny_task, _args(tmp_path)).train().metrics
    wall = time.perf_counter() - start
    compiling, runtime = metrics["train_compile_seconds"], metrics["train_runtime"]
    assert compiling > 0
    # compiling (at the first forward and backward) is inside train(), and not counted in train_runtime
    assert runtime + compiling <= wall
    samples = metrics["train_samples"]  # per second of train_runtime (rounded to 0.1 ms), not of the compiling too
    assert samples / (runtime + 1e-4) <= metrics["train_samples_per_second"] <= samples / (runtime - 1e-4)
    assert list(metrics)[:2] == ["train_runtime", "train_compile_seconds"]
    plain = Trainer(tiny_task, _args(tmp_path, torch_compile_backend=None, output_dir=str(tmp_path / "plain"))).train()
    assert "train_compile_seconds" not in plain.metrics


def test_checkpoints_of_a_compiled_run_load_without_compile_and_resume_exactly(tmp_path, tiny_task):
    args = _args(tmp_path)
    full = Trainer(tiny_task, args)
    full.train()
    checkpoint = Path(args.output_dir) / "checkpoint-3"
    saved = load_file(str(next(checkpoint.glob("*.safetensors"))))
    assert not any(key.startswith("_orig_mod.") for key in saved)  # the model's own keys
    plain = tiny_task.model_init({})
    ckpt.load_weights(plain, checkpoint)  # loads into a model that was never compiled
    assert all(torch.equal(plain.state_dict()[k], saved[k]) for k in saved)

    resumed_dir = tmp_path / "resumed"  # as if the run was killed after its first checkpoint
    shutil.copytree(checkpoint, resumed_dir / "checkpoint-3")
    resumed = Trainer(tiny_task, args.replace(output_dir=str(resumed_dir)))
    resumed.train(resume_from_checkpoint=True)
    full_weights, resumed_weights = _weights(full), _weights(resumed)
    assert all(torch.equal(full_weights[k], resumed_weights[k]) for k in full_weights)
    losses = lambda t: [e for e in t.state.log_history if "loss" in e]  # noqa: E731
    assert losses(resumed) == losses(full)

    uncompiled = Trainer(tiny_task, args.replace(output_dir=str(resumed_dir), torch_compile=False))
    assert uncompiled.train(resume_from_checkpoint=str(checkpoint)).global_step == 9  # compile off: resumes too


def test_a_compiled_run_evaluates_and_loads_its_best_model(tmp_path, tiny_task):
    args = _args(tmp_path, eval_strategy="steps", eval_steps=3, load_best_model_at_end=True,
                 metric_for_best_model="accuracy")  # fmt: skip
    trainer = Trainer(tiny_task, args)
    out = trainer.train()
    assert trainer.state.num_evaluations == 3
    best = Path(trainer.state.best_model_checkpoint)
    assert best.name == f"checkpoint-{out.metrics['best_global_step']}"
    saved = load_file(str(next(best.glob("*.safetensors"))))
    assert all(torch.equal(trainer.model.state_dict()[k], saved[k]) for k in saved)  # the best, loaded back


def test_a_compiled_model_that_takes_dict_batches_and_returns_its_loss(tmp_path):
    # the wrapper's forward takes anything: whether the model takes `labels` is read from the model itself
    task = tiny_task.dict_task()
    out = Trainer(task, _args(tmp_path, torch_compile_backend="eager", max_steps=3)).train()
    assert out.global_step == 3 and out.metrics["train_compile_seconds"] > 0

    class NoLabels(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(12, 4)

        def forward(self, features: torch.Tensor) -> torch.Tensor:
            return self.linear(features)

    no_labels = Task(model_init=lambda params: NoLabels(), train_dataset=task.train_dataset, name="no-labels")
    out = Trainer(
        no_labels, _args(tmp_path, torch_compile_backend="eager", max_steps=3, output_dir=str(tmp_path / "n"))
    )
    assert out.train().global_step == 3  # `labels` is not passed to a forward that does not take it
