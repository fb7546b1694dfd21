"""The core loop: exact resume, checkpoints, best model, accumulation, Optuna, metrics, bad input."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import optuna
import pytest
import tiny_task
import torch

from tunetrain import CheckpointError, ConfigError, SearchSpace, Task, Trainer, TrainingArguments, train
from tunetrain import checkpoint as ckpt
from tunetrain.reporting import Reporter


def _args(tmp_path: Path, **overrides) -> TrainingArguments:
    values = dict(
        output_dir=str(tmp_path / "run"),
        num_train_epochs=3,
        per_device_train_batch_size=16,  # 15 batches an epoch
        per_device_eval_batch_size=32,
        learning_rate=0.01,
        logging_steps=4,
        eval_strategy="steps",
        eval_steps=6,
        save_steps=6,
        metric_for_best_model="accuracy",
        disable_tqdm=True,
        report_to="none",
    )
    values.update(overrides)
    return TrainingArguments(**values)


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def _losses(trainer: Trainer) -> list[dict]:
    return [e for e in trainer.state.log_history if "loss" in e]


def _resumed_copy(tmp_path: Path, source: Path, step: int) -> Path:
    """A fresh output dir holding only checkpoint-{step} of `source`: as if the run was killed after it."""
    target = tmp_path / f"resumed-{step}"
    shutil.copytree(source / f"checkpoint-{step}", target / f"checkpoint-{step}")
    return target


@pytest.mark.parametrize(
    ("step", "accum"),
    [(18, 1), (30, 1), (6, 3)],  # mid-epoch (15 batches an epoch), at an epoch boundary, mid-epoch with accumulation
)
def test_resume_is_bitwise_exact(tmp_path, tiny_task, step, accum):
    args = _args(tmp_path, gradient_accumulation_steps=accum, save_steps=6 if accum == 1 else 3, eval_steps=3)
    full = Trainer(tiny_task, args)
    full_out = full.train()
    out_dir = _resumed_copy(tmp_path, Path(args.output_dir), step)
    resumed = Trainer(tiny_task, args.replace(output_dir=str(out_dir)))
    resumed_out = resumed.train(resume_from_checkpoint=True)

    assert resumed_out.global_step == full_out.global_step
    full_weights, resumed_weights = _weights(full), _weights(resumed)
    assert all(torch.equal(full_weights[k], resumed_weights[k]) for k in full_weights)
    assert _losses(resumed) == _losses(full)  # every logged loss, the ones before the checkpoint included
    assert resumed.state.best_metric == full.state.best_metric


def test_resume_metrics_count_only_this_call(tmp_path, tiny_task):
    args = _args(tmp_path)
    full = train(tiny_task, args)
    out_dir = _resumed_copy(tmp_path, Path(args.output_dir), 36)
    resumed = train(tiny_task, args.replace(output_dir=str(out_dir)), resume_from_checkpoint=True)
    assert full.global_step == resumed.global_step == 45
    steps_done, samples_done = 45 - 36, 240 * 3 - 36 * 16
    per_step = resumed.metrics["train_steps_per_second"]
    assert per_step * resumed.metrics["train_runtime"] == pytest.approx(steps_done, rel=0.01)
    samples = resumed.metrics["train_samples_per_second"] * resumed.metrics["train_runtime"]
    assert samples == pytest.approx(samples_done, rel=0.01)
    assert resumed.metrics["epoch"] == full.metrics["epoch"] == 3.0
    # the mean loss of the 9 steps done after the resume, not of all 45, and not divided by 45
    assert resumed.training_loss != pytest.approx(full.training_loss)
    assert resumed.training_loss < full.training_loss


def test_resume_true_takes_the_latest_and_a_path_takes_that_one(tmp_path, tiny_task):
    args = _args(tmp_path, num_train_epochs=1)  # 15 steps: checkpoints 6 and 12
    train(tiny_task, args)
    run = Path(args.output_dir)
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["checkpoint-6", "checkpoint-12"]
    assert ckpt.find_latest(run).name == "checkpoint-12"
    longer = args.replace(num_train_epochs=2)
    trainer = Trainer(tiny_task, longer)
    trainer.train(resume_from_checkpoint=True)
    first_log = _losses(trainer)[-1]
    assert trainer.state.global_step == 30
    # resuming from checkpoint-12: the log lines up to step 12 come from the checkpoint
    assert [e["step"] for e in _losses(trainer)][:3] == [4, 8, 12]
    assert first_log["step"] == 28
    from_path = Trainer(tiny_task, longer.replace(output_dir=str(tmp_path / "other")))
    from_path.train(resume_from_checkpoint=str(run / "checkpoint-6"))
    assert from_path.state.global_step == 30


def test_half_written_checkpoint_is_never_the_latest(tmp_path, tiny_task):
    args = _args(tmp_path, num_train_epochs=1)
    train(tiny_task, args)
    run = Path(args.output_dir)
    partial = run / ".tmp-checkpoint-99-1234"  # what a kill during a save leaves
    shutil.copytree(run / "checkpoint-12", partial)
    (partial / ckpt.TRAINER_STATE_NAME).unlink()
    assert ckpt.find_latest(run).name == "checkpoint-12"
    Trainer(tiny_task, args.replace(num_train_epochs=2)).train(resume_from_checkpoint=True)
    assert not partial.exists()


def test_rotation_keeps_the_best(tmp_path, tiny_task):
    # a learning rate that makes accuracy peak early, so the best is not among the latest
    args = _args(tmp_path, num_train_epochs=4, save_total_limit=2, learning_rate=0.05)
    trainer = Trainer(tiny_task, args)
    trainer.train()
    run = Path(args.output_dir)
    names = [p.name for p in ckpt.list_checkpoints(run)]
    best = Path(trainer.state.best_model_checkpoint).name
    assert best in names
    assert names[-1] == "checkpoint-60"
    assert len(names) == 2 if best == "checkpoint-60" else len(names) == 2 and best == names[0]
    state = json.loads((run / names[-1] / ckpt.TRAINER_STATE_NAME).read_text())
    assert state["best_model_checkpoint"].endswith(best)


def test_rotate_checkpoints_never_deletes_the_best(tmp_path):
    for step in (5, 10, 15, 20):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / ckpt.TRAINER_STATE_NAME).write_text("{}")
    deleted = ckpt.rotate_checkpoints(tmp_path, limit=1, keep=tmp_path / "checkpoint-5")
    assert sorted(p.name for p in deleted) == ["checkpoint-10", "checkpoint-15"]
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["checkpoint-5", "checkpoint-20"]
    deleted = ckpt.rotate_checkpoints(tmp_path, limit=1, keep=tmp_path / "checkpoint-20")
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["checkpoint-20"]


def test_load_best_model_at_end_restores_the_best_weights(tmp_path, tiny_task):
    args = _args(tmp_path, num_train_epochs=4, learning_rate=0.05, load_best_model_at_end=True)
    trainer = Trainer(tiny_task, args)
    out = trainer.train()
    best = trainer.state.best_model_checkpoint
    assert best is not None
    from safetensors.torch import load_file

    expected = load_file(Path(best) / ckpt.WEIGHTS_NAME)
    assert all(torch.equal(expected[k], v) for k, v in trainer.model.state_dict().items())
    assert trainer.evaluate()["eval_accuracy"] == out.metrics["best_metric"]


def test_objective_is_the_best_evaluation_not_the_last(tmp_path, tiny_task):
    trainer = Trainer(tiny_task, _args(tmp_path, num_train_epochs=4, learning_rate=0.05))
    out = trainer.train()
    evaluations = [e["eval_accuracy"] for e in trainer.state.log_history if "eval_accuracy" in e]
    assert out.metrics["best_metric"] == max(evaluations)
    assert trainer.state.num_evaluations == len(evaluations) == 10


def test_gradient_accumulation_matches_one_big_batch(tmp_path, tiny_task):
    common = dict(num_train_epochs=1, max_steps=5, optim="sgd", learning_rate=0.1, max_grad_norm=0.0)
    big = Trainer(tiny_task, _args(tmp_path / "a", per_device_train_batch_size=32, **common))
    small = Trainer(
        tiny_task, _args(tmp_path / "b", per_device_train_batch_size=8, gradient_accumulation_steps=4, **common)
    )
    task = Task(model_init=lambda p: tiny_task.model_init({"dropout": 0.0}), train_dataset=tiny_task.train_dataset)
    big.task = small.task = task
    big_out, small_out = big.train(), small.train()
    assert big_out.global_step == small_out.global_step == 5
    for name, value in _weights(big).items():
        torch.testing.assert_close(_weights(small)[name], value, rtol=1e-5, atol=1e-6)
    assert small_out.training_loss == pytest.approx(big_out.training_loss, rel=1e-5)


SPACE = SearchSpace.from_mapping(
    {
        "learning_rate": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
        "hidden": {"type": "int", "low": 4, "high": 32},
        "dropout": {"type": "float", "low": 0.0, "high": 0.5},
    }
)


@pytest.fixture
def cpu_grad_scaler(monkeypatch):
    """An fp16 run on CPU gets the GradScaler accelerate gives an fp16 run on a GPU. On CPU, accelerate (1.x) gives
    fp16 no scaler and no autocast, so the loop's scaler path (scale, unscale before clipping, step, update, and
    `scaler.pt` saved and restored) runs here only with torch's CPU GradScaler put in its place; the real fp16 run
    is `test_fp16_on_a_gpu_scales_its_losses_and_resumes_exactly`. The scale grows x2 every 3 steps."""
    setup = Trainer._setup_accelerator

    def with_scaler(self: Trainer, args: TrainingArguments) -> None:
        setup(self, args)
        if args.fp16 and self.accelerator.scaler is None:
            self.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=3)
            self._plain_backward = False  # accelerator.backward scales the loss when there is a scaler

    monkeypatch.setattr(Trainer, "_setup_accelerator", with_scaler)


def _scale(checkpoint: Path) -> float:
    return torch.load(checkpoint / ckpt.SCALER_NAME, weights_only=True)["scale"]


@pytest.mark.parametrize(("step", "accum"), [(18, 1), (6, 3)])
def test_the_grad_scaler_is_saved_and_restored_with_each_checkpoint(tmp_path, tiny_task, cpu_grad_scaler, step, accum):
    args = _args(tmp_path, fp16=True, gradient_accumulation_steps=accum, save_steps=6 if accum == 1 else 3)
    full = Trainer(tiny_task, args)
    full_out = full.train()
    assert full.accelerator.scaler is not None
    run = Path(args.output_dir)
    for checkpoint in ckpt.list_checkpoints(run):  # one update a optimizer step, and each checkpoint holds it
        assert _scale(checkpoint) == 2.0 ** (10 + ckpt.checkpoint_step(checkpoint) // 3)
    out_dir = _resumed_copy(tmp_path, run, step)
    resumed = Trainer(tiny_task, args.replace(output_dir=str(out_dir)))
    resumed.train(resume_from_checkpoint=True)
    # the scale went on from the checkpoint's (a fresh scaler would have started again at 2**10)
    assert resumed.accelerator.scaler.state_dict() == full.accelerator.scaler.state_dict()
    assert resumed.accelerator.scaler.get_scale() == 2.0 ** (10 + full_out.global_step // 3)
    full_weights, resumed_weights = _weights(full), _weights(resumed)
    assert all(torch.equal(full_weights[k], resumed_weights[k]) for k in full_weights)
    assert _losses(resumed) == _losses(full)


def test_a_checkpoint_without_the_grad_scaler_does_not_resume_an_fp16_run(tmp_path, tiny_task, cpu_grad_scaler):
    args = _args(tmp_path, num_train_epochs=1)
    train(tiny_task, args)  # fp32: no scaler.pt
    with pytest.raises(CheckpointError, match=r"checkpoint-12' has no scaler\.pt, but this run uses fp16"):
        Trainer(tiny_task, args.replace(fp16=True)).train(resume_from_checkpoint=True)


@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="GPU check: needs a CUDA device (accelerate gives fp16 its GradScaler and autocast only on a GPU)",
)
def test_fp16_on_a_gpu_scales_its_losses_and_resumes_exactly(tmp_path, tiny_task):
    args = _args(tmp_path, fp16=True)
    full = Trainer(tiny_task, args)
    full.train()
    scaler = full.accelerator.scaler
    assert isinstance(scaler, torch.amp.GradScaler) and full.accelerator.device.type == "cuda"
    run = Path(args.output_dir)
    assert all((c / ckpt.SCALER_NAME).is_file() for c in ckpt.list_checkpoints(run))
    resumed = Trainer(tiny_task, args.replace(output_dir=str(_resumed_copy(tmp_path, run, 18))))
    resumed.train(resume_from_checkpoint=True)
    assert resumed.accelerator.scaler.state_dict() == scaler.state_dict()
    full_weights, resumed_weights = _weights(full), _weights(resumed)
    assert all(torch.equal(full_weights[k], resumed_weights[k]) for k in full_weights)


class _WeightsAtStart(Reporter):
    """Copies the weights of `trainer`'s model when its run begins."""

    trainer: Trainer
    weights: dict[str, torch.Tensor]

    def on_train_begin(self, args, state, params) -> None:
        self.weights = _weights(self.trainer)


def test_a_tasks_own_compute_loss_is_what_trains_and_evaluates(tmp_path):
    calls = []

    def no_loss(outputs, labels):  # a loss with no gradient: the weights must not move
        calls.append((tuple(outputs.shape), labels.dtype))
        return (outputs * 0.0).sum()

    base = tiny_task.task()
    task = Task(
        model_init=base.model_init, train_dataset=base.train_dataset, eval_dataset=base.eval_dataset,
        compute_loss=no_loss, compute_metrics=tiny_task.accuracy,
    )  # fmt: skip
    args = _args(tmp_path, num_train_epochs=1)
    trainer = Trainer(task, args, reporters=[start := _WeightsAtStart()])
    start.trainer = trainer
    out = trainer.train()
    before = start.weights
    assert out.training_loss == 0.0
    assert all(e["loss"] == 0.0 for e in _losses(trainer))
    assert all(e["eval_loss"] == 0.0 for e in trainer.state.log_history if "eval_loss" in e)
    assert calls and all(shape[1] == 4 and dtype == torch.long for shape, dtype in calls)  # logits, labels
    assert len(calls) == 15 + 2 * 2  # 15 training steps, 2 evaluations of 2 batches (60 examples, 32 a batch)
    after = _weights(trainer)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_resume_with_dataloader_workers_is_bitwise_exact(tmp_path, tiny_task):
    # found by this test: the loader drew its workers' base seed from the sampler's generator when it made an
    # iterator (with persistent workers, the first epoch of a call), so a resumed run's later epochs saw other batches
    args = _args(tmp_path, dataloader_num_workers=2)
    full = Trainer(tiny_task, args)
    full_out = full.train()
    resumed = Trainer(tiny_task, args.replace(output_dir=str(_resumed_copy(tmp_path, Path(args.output_dir), 18))))
    resumed_out = resumed.train(resume_from_checkpoint=True)
    assert resumed_out.global_step == full_out.global_step
    full_weights, resumed_weights = _weights(full), _weights(resumed)
    assert all(torch.equal(full_weights[k], resumed_weights[k]) for k in full_weights)
    assert _losses(resumed) == _losses(full)
    # and the workers change nothing: the same run as with the data loaded in the main process
    alone = Trainer(tiny_task, args.replace(output_dir=str(tmp_path / "alone"), dataloader_num_workers=0))
    alone.train()
    alone_weights = _weights(alone)
    assert all(torch.equal(full_weights[k], alone_weights[k]) for k in full_weights)


def test_dict_and_optuna_trial_give_the_same_run(tmp_path, tiny_task):
    params = {"learning_rate": 0.02, "hidden": 8, "dropout": 0.25}
    from_dict = Trainer(tiny_task, _args(tmp_path / "a"), SPACE)
    dict_out = from_dict.train(trial=params)
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(params)
    from_trial = Trainer(tiny_task, _args(tmp_path / "b"), SPACE)
    trial_out = from_trial.train(trial=study.ask())
    assert from_trial.params == from_dict.params == params
    assert trial_out.training_loss == dict_out.training_loss
    assert trial_out.metrics["best_metric"] == dict_out.metrics["best_metric"]
    assert from_trial.run_args.learning_rate == 0.02  # a TrainingArguments field, overridden by the param
    assert from_trial.model[0].out_features == 8  # the rest went to model_init


def test_optuna_pruning_stops_cleanly_and_raises_trial_pruned(tmp_path, tiny_task):
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=2.0))
    trial = study.ask()
    trainer = Trainer(tiny_task, _args(tmp_path, report_to="tensorboard"), SPACE)
    with pytest.raises(optuna.TrialPruned, match="pruned at evaluation 1"):
        trainer.train(trial=trial)
    assert trainer.state.global_step == 6  # stopped at the first evaluation
    assert trial.storage.get_trial(trial._trial_id).intermediate_values == {1: trainer.state.best_metric}
    assert (Path(trainer.run_args.output_dir) / "checkpoint-6").is_dir()


def test_early_stopping_patience(tmp_path, tiny_task):
    # learning_rate 0: the metric never improves after the first evaluation
    trainer = Trainer(tiny_task, _args(tmp_path, learning_rate=0.0, early_stopping_patience=2))
    out = trainer.train()
    assert out.global_step == 18
    assert out.metrics["stopped"] == "early_stopping"


def _scalar_events(logdir: Path) -> dict[str, list[int]]:
    """tag -> steps, read from the TFRecord event files with tensorboardX's own protobufs."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    found: dict[str, list[int]] = {}
    for path in sorted(logdir.rglob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                found.setdefault(value.tag, []).append(event.step)
    return found


def test_tensorboard_events_hold_the_run(tmp_path, tiny_task):
    args = _args(tmp_path, report_to="tensorboard", num_train_epochs=1)
    train(tiny_task, args, space=SPACE, trial={"learning_rate": 0.01, "hidden": 8, "dropout": 0.0})
    events = _scalar_events(Path(args.output_dir) / "runs")
    assert {"train/loss", "train/learning_rate", "train/grad_norm", "eval/accuracy", "eval/loss"} <= set(events)
    assert events["train/loss"] == [4, 8, 12]
    assert events["eval/accuracy"] == [6, 12]
    assert "hparam/best_metric" in events  # the params with the final metrics


def test_dict_batches_model_loss_and_arrow_data(tmp_path):
    trainer = Trainer(tiny_task.dict_task(), _args(tmp_path, learning_rate=0.1, num_train_epochs=2))
    out = trainer.train()
    assert out.metrics["best_metric"] > 0.5
    assert trainer.evaluate()["eval_loss"] == pytest.approx(out.metrics["eval_loss"])


def test_evaluate_scores_any_split_with_a_prefix(tmp_path, tiny_task):
    trainer = Trainer(tiny_task, _args(tmp_path, num_train_epochs=1))
    trainer.train()
    metrics = trainer.evaluate(tiny_task.test_dataset, metric_key_prefix="test")
    assert {"test_loss", "test_accuracy", "test_runtime", "test_samples_per_second"} <= set(metrics)
    # the model's size, which a search can trade accuracy against: trainable parameters only
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    assert metrics["test_num_parameters"] == trainable > 0
    next(trainer.model.parameters()).requires_grad_(False)
    frozen = trainer.evaluate(metric_key_prefix="eval")["eval_num_parameters"]
    assert frozen == trainable - next(trainer.model.parameters()).numel()


def test_checkpoint_files_are_safe_to_load(tmp_path, tiny_task):
    args = _args(tmp_path, num_train_epochs=1)
    train(tiny_task, args)
    path = Path(args.output_dir) / "checkpoint-6"
    names = {p.name for p in path.iterdir()}
    assert set(ckpt.REQUIRED_FILES) <= names
    for name in (ckpt.OPTIMIZER_NAME, ckpt.SCHEDULER_NAME, ckpt.RNG_STATE_NAME):
        torch.load(path / name, weights_only=True)  # no pickled objects
    assert json.loads((path / ckpt.TRAINER_STATE_NAME).read_text())["global_step"] == 6


# ---------------------------------------------------------------------- bad input


def test_metric_that_compute_metrics_never_returns(tmp_path, tiny_task):
    with pytest.raises(ConfigError, match=r"`metric_for_best_model` is 'f1', but the evaluation returned only eval_"):
        train(tiny_task, _args(tmp_path, metric_for_best_model="f1"))


def test_params_outside_the_space(tmp_path, tiny_task):
    with pytest.raises(ConfigError, match="hidden"):
        Trainer(tiny_task, _args(tmp_path), SPACE).train(trial={"hidden": 1000})
    with pytest.raises(ConfigError, match="nope"):
        Trainer(tiny_task, _args(tmp_path), SPACE).train(trial={"nope": 1})
    assert not (tmp_path / "run").exists()  # nothing written


def test_missing_incomplete_and_foreign_checkpoints(tmp_path, tiny_task):
    args = _args(tmp_path, num_train_epochs=1)
    with pytest.raises(CheckpointError, match="there is no checkpoint in"):
        Trainer(tiny_task, args).train(resume_from_checkpoint=True)
    with pytest.raises(CheckpointError, match="does not exist"):
        Trainer(tiny_task, args).train(resume_from_checkpoint=str(tmp_path / "nowhere"))
    train(tiny_task, args)
    incomplete = tmp_path / "incomplete"
    shutil.copytree(Path(args.output_dir) / "checkpoint-6", incomplete)
    (incomplete / ckpt.OPTIMIZER_NAME).unlink()
    with pytest.raises(CheckpointError, match=r"incomplete: missing optimizer\.pt"):
        Trainer(tiny_task, args).train(resume_from_checkpoint=str(incomplete))
    other = Trainer(tiny_task, args.replace(output_dir=str(tmp_path / "other")), SPACE)
    with pytest.raises(CheckpointError, match=r"from a different model: '0\.(weight|bias)' has shape"):
        other.train(resume_from_checkpoint=str(Path(args.output_dir) / "checkpoint-6"), trial={"hidden": 5})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"learning_rat": 0.1},
            r"`train.learning_rat` is not a TrainingArguments field \(did you mean `learning_rate`",
        ),
        ({"num_train_epochs": "many"}, r"`train.num_train_epochs` is 'many' \(str\), but must be a float"),
        ({"load_best_model_at_end": True, "eval_strategy": "epoch"}, "needs save_strategy to match eval_strategy"),
        ({"load_best_model_at_end": True}, "needs an evaluation, but eval_strategy is 'no'"),
        (
            {"optim": "lion"},
            "`train.optim` is 'lion', but must be one of adamw | adamw_torch | adamw_torch_fused | adam | sgd",
        ),
        ({"fp16": True, "bf16": True}, "at most one mixed precision"),
        ({"per_device_train_batch_size": 0}, "must be >= 1"),
        ({"momentum": 0.9}, "applies only to optim=sgd"),
        ({"learning_rate": float("nan")}, "must be a finite number"),
    ],
)
def test_bad_training_arguments(values, message):
    with pytest.raises(ConfigError, match=message):
        TrainingArguments.from_dict(values)


def test_unloadable_tasks():
    from tunetrain import TaskError, load_task

    with pytest.raises(TaskError, match="no module named 'no_such_module'"):
        load_task("no_such_module:task")
    with pytest.raises(TaskError, match="has no attribute 'nothing'"):
        load_task("tiny_task:nothing")
    with pytest.raises(TaskError, match=r"returned a int, but must return a tunetrain\.Task"):
        load_task("tiny_task:broken_task")
    with pytest.raises(TaskError, match="must look like"):
        load_task("tiny_task")
    assert load_task(f"{Path(tiny_task.__file__)}:task").name == "tiny"


def test_yaml_no_is_read_as_the_no_strategy():
    import yaml

    args = TrainingArguments.from_dict(yaml.safe_load("eval_strategy: no\nsave_strategy: no\nlogging_strategy: no"))
    assert (args.eval_strategy, args.save_strategy, args.logging_strategy) == ("no", "no", "no")


class _NeedsSmallBatches(torch.nn.Module):
    """Fails like a GPU out of memory on training batches larger than 8."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] > 8:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.linear(x)


def test_auto_find_batch_size_shrinks_until_it_fits(tmp_path, tiny_task):
    task = Task(model_init=lambda params: _NeedsSmallBatches(), train_dataset=tiny_task.train_dataset)
    args = _args(tmp_path, per_device_train_batch_size=32, auto_find_batch_size=True, eval_strategy="no")
    trainer = Trainer(task, args)
    out = trainer.train()
    assert trainer.state.train_batch_size <= 8
    assert out.global_step == 3 * -(-240 // trainer.state.train_batch_size)


def test_parquet_datasets(tmp_path):
    import pyarrow.parquet as pq

    from tunetrain import ArrowDataset

    task = tiny_task.dict_task()
    path = tmp_path / "train.parquet"
    table = task.train_dataset  # an ArrowDataset built from a pyarrow Table
    assert isinstance(table, ArrowDataset)
    import pyarrow as pa

    pq.write_table(pa.table({k: v.numpy().tolist() for k, v in table.columns.items()}), path)
    from_file = Task(model_init=task.model_init, train_dataset=str(path))
    assert len(from_file.train_dataset) == 240
    assert from_file.train_dataset[0]["features"].dtype == torch.float32
    assert train(from_file, _args(tmp_path, eval_strategy="no", num_train_epochs=1)).global_step == 15
    with pytest.raises(ConfigError, match="does not exist"):
        Task(model_init=task.model_init, train_dataset=str(tmp_path / "missing.parquet"))


@pytest.mark.parametrize("kind", ["tensors", "arrow"])
def test_batched_fetching_gives_the_batches_of_per_example_fetching(kind):
    from torch.utils.data import DataLoader, RandomSampler, TensorDataset

    from tunetrain.data import BatchedView, batched

    dataset = tiny_task.dict_task().train_dataset if kind == "arrow" else tiny_task.task().train_dataset
    view, collate_fn = batched(dataset, None)
    assert isinstance(view, BatchedView)

    def batches(data, collate):
        generator = torch.Generator().manual_seed(3)
        loader = DataLoader(data, batch_size=16, sampler=RandomSampler(data, generator=generator), collate_fn=collate)
        return list(loader)

    plain, fast = batches(dataset, None), batches(view, collate_fn)
    assert len(plain) == len(fast) == 15
    for a, b in zip(plain, fast, strict=True):
        pairs = [(a[k], b[k]) for k in a] if isinstance(a, dict) else list(zip(a, b, strict=True))
        assert all(x.dtype == y.dtype and torch.equal(x, y) for x, y in pairs)
    # a custom collate_fn, or a dataset of another type, is left alone
    assert batched(dataset, torch.utils.data.default_collate)[0] is dataset
    subclass = type("Sub", (TensorDataset,), {})(torch.zeros(4, 2))
    assert batched(subclass, None) == (subclass, None)


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_a_diverging_loss_stops_the_run_before_it_is_saved(tmp_path, tiny_task, value):
    from tunetrain.errors import NonFiniteLossError

    args = _args(tmp_path, logging_steps=100)  # no log line in between: the eval / save steps check the loss
    with pytest.raises(NonFiniteLossError, match=rf"training loss became {value} in steps 7-12; the run stopped"):
        Trainer(tiny_task, args).train(trial={"diverge_after": 10, "diverge_to": value})
    # the checkpoint of step 6 is there; nothing was saved from the diverged weights
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "run")] == ["checkpoint-6"]


def test_tunetrain_train_reports_a_diverged_run_in_one_line(tmp_path, capsys):
    from tunetrain.cli import main

    experiment = tmp_path / "x.yaml"
    experiment.write_text(
        json.dumps(
            {
                "name": "diverges",
                "task": f"{Path(tiny_task.__file__)}:task",
                "train": {"num_train_epochs": 1, "per_device_train_batch_size": 16, "logging_steps": 5,
                          "output_dir": str(tmp_path / "run"), "report_to": "none"},
                "params": {"diverge_after": 3},
            }
        )
    )  # fmt: skip
    assert main(["train", str(experiment)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "tunetrain: error: the training loss became nan in steps 1-5; the run stopped"
    assert not any("Traceback" in line for line in err)


# --- damaged checkpoints ---------------------------------------------------------------------------------------------


def _cut_in_half(file: Path) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


def test_resume_true_falls_back_past_a_damaged_latest_checkpoint_and_says_so(tmp_path, tiny_task, caplog):
    args = _args(tmp_path)
    full = Trainer(tiny_task, args)
    full.train()
    out_dir = _resumed_copy(tmp_path, Path(args.output_dir), 18)
    shutil.copytree(Path(args.output_dir) / "checkpoint-24", out_dir / "checkpoint-24")
    _cut_in_half(out_dir / "checkpoint-24" / ckpt.WEIGHTS_NAME)  # a kill or a full disk while it was copied

    # named explicitly, a damaged checkpoint is an error in one line, never swapped for another
    with pytest.raises(CheckpointError, match=r"weights '.*checkpoint-24/model\.safetensors' cannot be read") as err:
        Trainer(tiny_task, args.replace(output_dir=str(out_dir))).train(
            resume_from_checkpoint=str(out_dir / "checkpoint-24")
        )
    assert "\n" not in str(err.value)
    # the latest: the complete one before it, with a warning naming both
    resumed = Trainer(tiny_task, args.replace(output_dir=str(out_dir)))
    with caplog.at_level("WARNING", logger="tunetrain"):
        resumed.train(resume_from_checkpoint=True)
    (warning,) = [m for m in caplog.messages if "cannot be resumed from" in m]
    assert str(out_dir / "checkpoint-24") in warning and warning.endswith(f"'{out_dir / 'checkpoint-18'}' instead")
    full_weights, resumed_weights = _weights(full), _weights(resumed)
    assert all(torch.equal(full_weights[k], resumed_weights[k]) for k in full_weights)  # still exact
    assert (out_dir / f"checkpoint-24{ckpt.DAMAGED_SUFFIX}" / ckpt.WEIGHTS_NAME).is_file()  # kept for a look


def test_resume_true_with_every_checkpoint_damaged_starts_over_with_a_warning(tmp_path, tiny_task, caplog):
    args = _args(tmp_path, num_train_epochs=1)
    train(tiny_task, args)
    for path in ckpt.list_checkpoints(args.output_dir):
        (path / ckpt.TRAINER_STATE_NAME).write_text("{")
    with caplog.at_level("WARNING", logger="tunetrain"):
        output = Trainer(tiny_task, args).train(resume_from_checkpoint=True)
    assert output.global_step == 15 and output.metrics["train_samples"] == 240  # the whole run, from step 0
    assert any(m.endswith("the run starts from step 0") for m in caplog.messages)


@pytest.mark.parametrize("name", [ckpt.OPTIMIZER_NAME, ckpt.SCHEDULER_NAME, ckpt.RNG_STATE_NAME])
def test_resume_refuses_a_pickle_planted_in_a_checkpoint_without_running_it(tmp_path, tiny_task, name):
    # README, "Trust": checkpoints load without unpickling objects. This fails if checkpoint.py loads a .pt file
    # with weights_only=False: the planted object then runs (the marker is created) as the file loads
    args = _args(tmp_path, num_train_epochs=1)
    train(tiny_task, args)
    planted = Path(args.output_dir) / "checkpoint-12"
    marker = tmp_path / "marker"
    torch.save({"state": _Planted(marker), "param_groups": []}, planted / name)
    with pytest.raises(CheckpointError) as err:
        Trainer(tiny_task, args).train(resume_from_checkpoint=str(planted))
    assert not marker.exists()  # first: whatever the error says, the planted object never ran
    assert f"{planted / name}' holds objects other than tensors" in str(err.value) and "\n" not in str(err.value)
    # the latest: refused the same way, and the run goes on from the checkpoint before it
    assert Trainer(tiny_task, args).train(resume_from_checkpoint=True).global_step == 15
    assert not marker.exists()


class _Planted:
    """Unpickled, it opens (so creates) `marker` for writing: what a pickle planted in a checkpoint could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# --- a model given to the Trainer (issue 13, part 2) --------------------------------------------------------------


def test_a_model_given_to_the_trainer_is_the_one_that_trains_and_resumes(tmp_path):
    # before: train() threw the given model away and trained a fresh one from model_init, silently
    task = tiny_task.task()
    pretrained = tiny_task.model_init({"hidden": 16})
    with torch.no_grad():
        for parameter in pretrained.parameters():
            parameter.add_(0.5)  # not what model_init would build
    start = {k: v.clone() for k, v in pretrained.state_dict().items()}
    trainer = Trainer(task, _args(tmp_path, num_train_epochs=1, eval_strategy="no", save_steps=5), model=pretrained)
    before = trainer.evaluate()
    trainer.train()
    assert trainer.model is pretrained  # trained in place, as a Transformers Trainer does
    assert any(not torch.equal(start[k], v) for k, v in pretrained.state_dict().items())
    assert trainer.evaluate()["eval_loss"] != before["eval_loss"]

    # resumed from its checkpoint at step 10 into another model object (a fresh copy of the starting weights):
    # bitwise the same end
    out_dir = _resumed_copy(tmp_path, tmp_path / "run", 10)
    resumed_model = tiny_task.model_init({"hidden": 16})
    resumed_model.load_state_dict(start)
    args = _args(tmp_path, output_dir=str(out_dir), num_train_epochs=1, eval_strategy="no", save_steps=5)
    Trainer(task, args, model=resumed_model).train(resume_from_checkpoint=True)
    assert all(torch.equal(v, resumed_model.state_dict()[k]) for k, v in pretrained.state_dict().items())


def test_a_given_model_with_params_for_model_init_is_one_line(tmp_path):
    trainer = Trainer(tiny_task.task(), _args(tmp_path), model=tiny_task.model_init({}))
    with pytest.raises(
        ConfigError, match=r"params \['hidden'\] go to the task's model_init, but the Trainer was given"
    ):
        trainer.train(trial={"hidden": 8})


def test_a_task_without_model_init_trains_a_given_model_and_refuses_otherwise(tmp_path):
    base = tiny_task.task()
    task = Task(train_dataset=base.train_dataset, eval_dataset=base.eval_dataset, compute_metrics=tiny_task.accuracy)
    Trainer(task, _args(tmp_path, max_steps=3, eval_strategy="no"), model=tiny_task.model_init({})).train()
    with pytest.raises(ConfigError, match=r"has no model_init and the Trainer was given no model: a search builds"):
        Trainer(task, _args(tmp_path, max_steps=3, eval_strategy="no")).train()


# --- runs that cannot do what they ask (issue 13, part 5) ---------------------------------------------------------


def test_fp16_where_it_would_do_nothing_is_one_line(tmp_path, tiny_task):
    # before: on a CPU, fp16 trained in fp32 without a word (the same loss as without it)
    if torch.cuda.is_available():
        pytest.skip("fp16 works on this machine's GPU")
    with pytest.raises(ConfigError, match=r"^`fp16` is true, but the model runs on cpu, where fp16 mixed precision"):
        Trainer(tiny_task, _args(tmp_path, fp16=True)).train()


def test_a_resume_whose_budget_is_spent_says_so_and_reports_no_nan_loss(tmp_path, tiny_task, caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("tunetrain"), "propagate", True)
    args = _args(tmp_path, num_train_epochs=2, eval_strategy="no", save_strategy="epoch")
    Trainer(tiny_task, args).train()
    with caplog.at_level(logging.WARNING, logger="tunetrain"):
        out = Trainer(tiny_task, args.replace(num_train_epochs=1)).train(resume_from_checkpoint=True)
    assert "is at step 30, and this run's budget is 15 steps: nothing is left to train" in caplog.text
    assert "train_loss" not in out.metrics and out.global_step == 30  # before: train_loss NaN, written out


def test_steps_that_never_come_in_the_run_are_a_warning_before_training(tmp_path, tiny_task, caplog, monkeypatch):
    # before: gradient accumulation left fewer optimizer steps than eval_steps / save_steps, and nothing was said
    monkeypatch.setattr(logging.getLogger("tunetrain"), "propagate", True)
    args = _args(tmp_path, num_train_epochs=1, gradient_accumulation_steps=4, eval_steps=10, save_steps=10,
                 logging_steps=2, load_best_model_at_end=True)  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="tunetrain"):
        Trainer(tiny_task, args).train()
    assert "eval_steps=10, but this run has 4 optimizer steps: it never evaluates" in caplog.text
    assert "save_steps=10, but this run has 4 optimizer steps: it never saves a checkpoint" in caplog.text
    assert "logging_steps" not in caplog.text
    assert "load_best_model_at_end is set, but no evaluation comes: no best model can be chosen" in caplog.text


def test_a_users_callback_sees_every_step_and_can_stop_the_run_from_any_hook(tmp_path, tiny_task):
    # issue 13: the Reporter hooks are the callback API (Transformers' TrainerCallback), with a control in every hook
    from tunetrain import TrainerCallback

    class StopAtFive(TrainerCallback):
        def __init__(self) -> None:
            self.steps: list[int] = []

        def on_step(self, state) -> None:
            self.steps.append(state.global_step)
            if state.global_step == 5:
                self.control.stop("five is enough")

    callback = StopAtFive()
    out = Trainer(tiny_task, _args(tmp_path, eval_strategy="no"), callbacks=[callback]).train()
    assert callback.steps == [1, 2, 3, 4, 5] and out.global_step == 5
    assert out.metrics["stopped"] == "five is enough"


def test_a_callback_that_is_not_tunetrains_is_one_line(tmp_path, tiny_task):
    class TransformersStyle:  # e.g. transformers.PrinterCallback: other hooks, other arguments
        def on_log(self, args, state, control, logs=None, **kwargs): ...

    with pytest.raises(ConfigError, match=r"^callback 0 is a .*TransformersStyle, but must be a tunetrain.Trainer"):
        Trainer(tiny_task, _args(tmp_path), callbacks=[TransformersStyle()])


def test_a_resume_with_other_optimizer_settings_takes_them_and_keeps_the_schedules_shape(tmp_path, tiny_task):
    # PBT's explore step (and params changed by hand): the checkpoint's optimizer and schedule carry its run's
    # settings; before, a resume kept them and silently ignored the new ones
    settings = dict(lr_scheduler_type="linear", warmup_steps=5, logging_steps=1)
    Trainer(tiny_task, _args(tmp_path, weight_decay=0.01, **settings)).train(trial={"hidden": 8})
    shutil.copytree(tmp_path / "run" / "checkpoint-12", tmp_path / "again" / "run" / "checkpoint-12")
    changed = {"hidden": 8, "learning_rate": 0.004, "weight_decay": 0.3, "adam_beta1": 0.8}
    Trainer(tiny_task, _args(tmp_path / "again", **settings)).train(trial=changed, resume_from_checkpoint=True)
    first, second = (_learning_rates(root / "run" / "checkpoint-42") for root in (tmp_path, tmp_path / "again"))
    for step in range(13, 43):  # the same warmup-then-decay factor, times the new rate (0.004 / 0.01)
        assert second[step] == pytest.approx(first[step] * 0.4, rel=1e-6)
    optimizer = torch.load(tmp_path / "again" / "run" / "checkpoint-42" / "optimizer.pt", weights_only=True)
    groups = optimizer["param_groups"]
    assert [g["weight_decay"] for g in groups] == [0.3, 0.0]  # biases keep no decay
    assert {g["initial_lr"] for g in groups} == {0.004} and {g["betas"][0] for g in groups} == {0.8}


def _learning_rates(checkpoint: Path) -> dict[int, float]:
    log = ckpt.read_trainer_state(checkpoint).log_history
    return {entry["step"]: entry["learning_rate"] for entry in log if "learning_rate" in entry}


def test_a_resume_under_reduce_lr_on_plateau_after_a_cut_is_bitwise_exact(tmp_path, tiny_task):
    # the plateau schedule has no base rate: a resume must not touch the restored rate. 0.01 cut by 0.37, then
    # x 0.01 / 0.01, is one ulp off (seen: a rescale on every resume broke pausing schedulers' exactness)
    plateau = {"patience": 0, "factor": 0.37, "threshold": 10.0, "cooldown": 2}  # a cut every third evaluation
    args = _args(tmp_path, lr_scheduler_type="reduce_lr_on_plateau", lr_scheduler_kwargs=plateau, eval_steps=3,
                 save_steps=3, learning_rate=0.01, metric_for_best_model="loss")  # fmt: skip
    full = Trainer(tiny_task, args)
    full.train()
    resumed_dir = _resumed_copy(tmp_path, Path(args.output_dir), 3)
    (cut,) = set(_rates(resumed_dir / "checkpoint-3"))
    assert cut == pytest.approx(0.0037) and cut * 0.01 / 0.01 != cut
    resumed = Trainer(tiny_task, args.replace(output_dir=str(resumed_dir)))
    resumed.train(resume_from_checkpoint=True)
    for step in (9, 45):  # before the next cut, and at the end: to the bit
        assert _rates(resumed_dir / f"checkpoint-{step}") == _rates(Path(args.output_dir) / f"checkpoint-{step}")
    full_weights, resumed_weights = _weights(full), _weights(resumed)
    assert all(torch.equal(full_weights[k], resumed_weights[k]) for k in full_weights)
    assert _losses(resumed) == _losses(full)


def _rates(checkpoint: Path) -> list[float]:
    return [g["lr"] for g in torch.load(checkpoint / "optimizer.pt", weights_only=True)["param_groups"]]


# --- the per-step path (issue 17): what it skips must change nothing --------------------------------------------------


@pytest.mark.parametrize("kind", ["linear", "cosine", "constant", "constant_with_warmup", "inverse_sqrt"])
def test_the_schedules_step_leaves_lambdalrs_state_and_rates(kind):
    # _Schedule.step skips LambdaLR's checks and copies; its state (every checkpoint's scheduler.pt) and the rates it
    # sets must be LambdaLR's own, step by step
    from tunetrain.loop import _make_optimizer, _make_scheduler

    args = TrainingArguments(lr_scheduler_type=kind, warmup_steps=0 if kind == "constant" else 3, weight_decay=0.1)
    ours_opt, theirs_opt = (_make_optimizer(torch.nn.Linear(3, 2), args) for _ in range(2))
    ours = _make_scheduler(ours_opt, args, 20)
    theirs = torch.optim.lr_scheduler.LambdaLR(theirs_opt, ours.lr_lambdas[0])
    for _ in range(25):
        assert ours.state_dict() == theirs.state_dict()
        assert [g["lr"] for g in ours_opt.param_groups] == [g["lr"] for g in theirs_opt.param_groups]
        ours_opt.step(), theirs_opt.step()
        ours.step(), theirs.step()


def test_the_loss_window_folds_between_log_lines_and_a_resume_stays_exact(tmp_path, tiny_task, monkeypatch):
    # each micro-batch's loss is kept on the device and summed every FOLD_EVERY of them: a run saved mid-window, and
    # one resumed from there, log the same losses to the bit; the train loss is the one logged line by line
    monkeypatch.setattr("tunetrain.loop._LossWindow.FOLD_EVERY", 2)
    args = _args(tmp_path, logging_steps=5, save_steps=6, eval_steps=30, max_steps=20)
    full = Trainer(tiny_task, args)
    full_out = full.train()
    resumed_dir = _resumed_copy(tmp_path, Path(args.output_dir), 12)  # 2 steps into a log window
    resumed = Trainer(tiny_task, args.replace(output_dir=str(resumed_dir)))
    resumed.train(resume_from_checkpoint=True)
    assert _losses(resumed) == _losses(full)
    every = Trainer(tiny_task, _args(tmp_path / "every", logging_steps=1, save_strategy="no", eval_strategy="no",
                                     max_steps=20))  # fmt: skip
    every.train()
    losses = [e["loss"] for e in _losses(every)]
    assert len(losses) == 20 and full_out.training_loss == pytest.approx(sum(losses) / 20, rel=1e-6)


def test_logs_evaluations_and_saves_come_at_the_steps_their_strategies_name(tmp_path, tiny_task):
    # the loop calls _maybe_log_evaluate_save only at the next step a `steps` strategy is due and at epoch ends
    from tunetrain.loop import _next_step_due

    args = _args(tmp_path, logging_steps=4, eval_steps=6, save_steps=10, max_steps=40, save_total_limit=None)
    assert [_next_step_due(args, step) for step in (0, 4, 5, 6, 8, 10, 11)] == [4, 6, 6, 8, 10, 12, 12]
    assert _next_step_due(args.replace(logging_strategy="epoch", eval_strategy="no", save_strategy="no"), 3) > 10**9
    trainer = Trainer(tiny_task, args)
    trainer.train()
    logged = [e["step"] for e in _losses(trainer)]
    evaluated = [e["step"] for e in trainer.state.log_history if "eval_loss" in e]
    assert logged == list(range(4, 41, 4)) and evaluated == list(range(6, 37, 6))
    assert [c.name for c in ckpt.list_checkpoints(args.output_dir)] == [f"checkpoint-{s}" for s in (10, 20, 30, 40)]
    epochs = Trainer(tiny_task, _args(tmp_path / "epochs", logging_strategy="epoch", eval_strategy="epoch",
                                      save_strategy="epoch", max_steps=40))  # fmt: skip
    epochs.train()  # 15 steps an epoch; a budget that ends mid-epoch still logs, evaluates and saves there
    assert [e["step"] for e in _losses(epochs)] == [15, 30, 40]
    assert [e["step"] for e in epochs.state.log_history if "eval_loss" in e] == [15, 30, 40]
