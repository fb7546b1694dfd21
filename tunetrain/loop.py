"""The core loop: `Trainer.train(resume_from_checkpoint, trial, ignore_keys_for_eval) -> TrainOutput`.

One run trains one model from one set of hyperparameters. Hyperparameters come from a dict or an
`optuna.Trial` (sampled through the `SearchSpace`); those that name a `TrainingArguments` field override it,
the rest go to the task's `model_init`.

The per-step path is kept close to a hand-written PyTorch loop: the model goes through `accelerate` (device
placement, autocast), the optimizer and DataLoader do not (accelerate's wrappers measured 12% and 3% slower on
small models). Device syncs (`.item()`) happen only at logging and evaluation steps.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import random
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, RandomSampler, SequentialSampler

from tunetrain import checkpoint as ckpt
from tunetrain.args import TrainingArguments, field_names
from tunetrain.data import batched
from tunetrain.errors import CheckpointError, ConfigError, NonFiniteLossError
from tunetrain.prediction import Gathered, PredictionOutput, call_compute_metrics
from tunetrain.reporting import ConsoleReporter, OptunaReporter, Reporter, TensorBoardReporter, TrainerControl
from tunetrain.task import Task, load_task

if TYPE_CHECKING:
    from accelerate import Accelerator

    from tunetrain.space import SearchSpace

logger = logging.getLogger(__name__)


class TrainOutput(NamedTuple):
    """What `train()` returns, as in Transformers: the last optimizer step, the mean training loss of this call,
    and the metrics (train_*, epoch, the last evaluation's eval_*, and the run's best objective)."""

    global_step: int
    training_loss: float
    metrics: dict[str, float]


@dataclass(eq=False, slots=True)
class _Run:
    """One `train()` call's run: what the loop reads and updates, built by `Trainer._setup_run`.

    `window` is the loss of the steps since the last log line, kept on the device (see `_LossWindow`).
    """

    args: TrainingArguments
    model: torch.nn.Module  # what trains: the Trainer's model, or torch.compile's wrapper of it (torch_compile)
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any  # accelerate's GradScaler for fp16, else None
    state: ckpt.TrainerState
    control: TrainerControl
    reporters: list[Reporter]  # the main process's; none on the others
    # data and budget
    train_loader: DataLoader
    epoch_generator: torch.Generator  # the train loader's, reseeded with seed + epoch before each epoch
    num_batches: int  # micro-batches an epoch
    accum: int
    steps_per_epoch: int
    max_steps: int
    # this call's counters: metrics count only the work done in this call
    start_time: float
    start_step: int
    loss_finite_through: int  # the last step whose loss (and every one before) was checked finite
    counters: _LossCounters
    window: _LossWindow
    compile_seconds_at_start: float | None  # torch.compile's time spent compiling in this process; None: no compile
    samples_seen: int = 0
    # the last micro-batch's loss, and so its graph (backward freed its buffers), held until the next micro-batch's
    # forward has built its own: autograd caches a parameter's gradient accumulator only while a graph holds it, so
    # each forward reuses them instead of building and freeing one per parameter (and the GIL round trips that
    # costs). Measured 20k instructions of a 1.75M-instruction step of a 30-256-2 MLP (~5 us); a hand-written
    # loop's `loss = ...` keeps its last graph the same way
    last_graph: torch.Tensor | None = None
    grad_norm: torch.Tensor | None = None  # of the last optimizer step; None when max_grad_norm is 0
    # several processes: whether they all stop, as the main process said at the last log / eval / save step
    agreed: TrainerControl = field(default_factory=TrainerControl)


class Trainer:
    """Trains `task`'s model with `args`; `space` turns an `optuna.Trial` into params and checks dict params.

    `reporters` (or `callbacks`, Transformers' name) are extra `Reporter`s (`TrainerCallback`: a search driver's,
    or the user's); the console (unless `console=False`: a search shows its
    own progress), TensorBoard (per `report_to`) and, for an `optuna.Trial`, Optuna reporters are added by
    `train()`. `model`, as in Transformers, is the model that trains (a pretrained one to fine-tune, or one loaded
    with `tunetrain.load_model(DIR)`), and that `evaluate()` and `predict()` score; without it `train()` builds a
    fresh one with the task's `model_init` (which a search needs: each trial trains a fresh model).
    """

    def __init__(
        self,
        task: Task | str,
        args: TrainingArguments | None = None,
        space: SearchSpace | None = None,
        *,
        reporters: list[Reporter] | None = None,
        console: bool = True,
        model: torch.nn.Module | None = None,
        callbacks: list[Reporter] | None = None,
    ) -> None:
        self.task = load_task(task)
        self.console = console
        self.args = args if args is not None else TrainingArguments()
        if not isinstance(self.args, TrainingArguments):
            raise ConfigError(f"`args` is a {type(self.args).__name__}, but must be a TrainingArguments")
        self.space = space
        self.reporters = [*(reporters or []), *(callbacks or [])]  # `callbacks`: Transformers' name for them
        for index, reporter in enumerate(self.reporters):
            if not isinstance(reporter, Reporter):
                raise ConfigError(
                    f"callback {index} is a {type(reporter).__module__}.{type(reporter).__name__}, but must be a "
                    "tunetrain.TrainerCallback (its hooks: on_train_begin, on_step, on_log, on_evaluate, on_train_end)"
                )
        self.model = model  # the given or the last trained model: what evaluate() and predict() score
        self._given_model = model  # what train() trains; None: a fresh one from model_init at each train()
        self._prepared_model: torch.nn.Module | None = None
        self.params: dict[str, Any] = {}
        self.state = ckpt.TrainerState()  # the current (or last) run's; train() replaces it
        self.accelerator: Accelerator | None = None
        self.run_args = self.args
        # set with the accelerator (_setup_accelerator), read by the per-step path
        self._on_cpu: bool | None = None
        self._distributed: bool | None = None
        self._plain_backward: bool | None = None
        self._shift_labels = False  # a Transformers causal LM's: label smoothing shifts its labels, as Transformers

    # ------------------------------------------------------------------ public API

    def train(
        self,
        resume_from_checkpoint: str | Path | bool | None = None,
        trial: Any = None,
        ignore_keys_for_eval: list[str] | None = None,
    ) -> TrainOutput:
        """Train from scratch, or from a checkpoint (`True`: the latest under output_dir; a path: that one).

        `trial` is None, a dict of params, or an `optuna.Trial`. With a Trial, the objective is reported at every
        evaluation and `optuna.TrialPruned` is raised (after the run has stopped cleanly) when Optuna prunes.
        """
        params, optuna_trial = self._resolve_params(trial)
        run_args = self._args_for(params)
        self._setup_accelerator(run_args)
        # several processes: the main one chooses the latest checkpoint (moving a damaged one aside), every one loads
        # it; a checkpoint named is each process's own to check (on remote storage each has its own copy of it)
        resolve = lambda: self._resolve_checkpoint(resume_from_checkpoint, run_args)  # noqa: E731
        resume_path = self._main_decides(resolve) if resume_from_checkpoint is True else resolve()
        model_params = {k: v for k, v in params.items() if k not in field_names()}
        reporters = self._make_reporters(run_args, optuna_trial)
        self.params = params
        self.run_args = run_args
        if run_args.auto_find_batch_size:
            if self._distributed:  # a process out of memory would retry alone, and the others wait for it for ever
                raise ConfigError(
                    "`auto_find_batch_size` is true, but the run has several processes: give "
                    "per_device_train_batch_size (one that fits), or train on one process"
                )
            from accelerate.utils import find_executable_batch_size

            inner = find_executable_batch_size(self._inner_train, run_args.per_device_train_batch_size)
            return inner(run_args, model_params, resume_path, reporters, ignore_keys_for_eval)
        return self._inner_train(
            run_args.per_device_train_batch_size, run_args, model_params, resume_path, reporters, ignore_keys_for_eval
        )

    def evaluate(
        self, dataset: Any = None, ignore_keys: list[str] | None = None, metric_key_prefix: str = "eval"
    ) -> dict[str, float]:
        """Score `dataset` (default: the task's eval set): `{prefix}_loss`, `{prefix}_<metric>`, runtime."""
        dataset = dataset if dataset is not None else self.task.eval_dataset
        if dataset is None:
            raise ConfigError(f"no dataset to evaluate: task {self.task.name!r} has no eval_dataset")
        self._model_to_score()
        return self._evaluate(dataset, ignore_keys, metric_key_prefix)

    def predict(
        self, test_dataset: Any, ignore_keys: list[str] | None = None, metric_key_prefix: str = "test"
    ) -> PredictionOutput:
        """The model's predictions on `test_dataset`, as Transformers' `Trainer.predict`: `predictions` (numpy,
        batches padded with -100 where their lengths differ), `label_ids` (None for a dataset without labels) and
        `metrics` (`{prefix}_loss` where there are labels, compute_metrics' where there are, runtime)."""
        if test_dataset is None:
            raise ConfigError("no dataset to predict on: pass one (e.g. task.test_dataset)")
        self._model_to_score()
        metrics, predictions, labels = self._prediction_loop(test_dataset, ignore_keys, metric_key_prefix, True)
        return PredictionOutput(predictions=predictions, label_ids=labels, metrics=metrics)

    def _model_to_score(self) -> None:
        """The model evaluate() and predict() score: the one given or trained, else one built from the params."""
        if self.accelerator is None:
            self._setup_accelerator(self.run_args)
        if self.model is None:
            _set_seed(self.run_args.seed)
            self.model = self._build_model(self.params)
        if self.model is not self._prepared_model:  # a model given, or built here: device placement once
            self.model = self._prepared_model = self._prepare_model(self.model)

    # ------------------------------------------------------------------ the loop

    def _inner_train(
        self,
        batch_size: int,
        args: TrainingArguments,
        model_params: dict[str, Any],
        resume_path: Path | None,
        reporters: list[Reporter],
        ignore_keys_for_eval: list[str] | None,
    ) -> TrainOutput:
        run = self._setup_run(batch_size, args, model_params, resume_path, reporters)
        # what every step uses, as locals: the per-step path pays no attribute lookup for them
        model, optimizer, scheduler, scaler = run.model, run.optimizer, run.scheduler, run.scaler
        state, control, reporters = run.state, run.control, run.reporters
        window, pending = run.window, run.window.pending  # `pending` is emptied in place, never rebound
        add_loss = pending.append
        num_batches, accum, steps_per_epoch, max_steps = run.num_batches, run.accum, run.steps_per_epoch, run.max_steps
        max_grad_norm = args.max_grad_norm
        per_step_schedule = not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)  # that one: evals
        # several processes stop together: at the steps that log, evaluate or save, on the main process's word (its
        # reporters may stop the run); one process alone never leaves the loop
        stops = run.agreed if self._distributed else control
        # the next step a `steps` strategy logs, evaluates or saves at: the loop calls _maybe_log_evaluate_save only
        # then and at the end of an epoch (the `epoch` strategies), not at every step
        next_due = _next_step_due(args, state.global_step)
        start_epoch, steps_into_epoch = divmod(state.global_step, steps_per_epoch)
        num_epochs = math.ceil(max_steps / steps_per_epoch)
        try:
            if args.eval_on_start and state.global_step == 0:
                self._evaluate_on_start(run, ignore_keys_for_eval)
            for epoch in range(start_epoch, num_epochs):
                if state.global_step >= max_steps or stops.should_stop:
                    break
                run.epoch_generator.manual_seed(args.seed + epoch)
                skip = steps_into_epoch * accum if epoch == start_epoch else 0
                loader = run.train_loader if skip == 0 else _skip_batches(run.train_loader, skip)
                for batch_index, batch in enumerate(loader, start=skip):
                    group = 1 if accum == 1 else _group_size(batch_index, num_batches, accum)
                    boundary = accum == 1 or (batch_index + 1) % accum == 0 or batch_index + 1 == num_batches
                    add_loss(self._training_step(run, model, batch, group, boundary))
                    if not boundary:
                        continue
                    run.grad_norm = self._optimizer_step(model, optimizer, scaler, max_grad_norm)
                    if per_step_schedule:
                        scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    state.global_step += 1
                    state.epoch = state.global_step / steps_per_epoch
                    state.logging_loss_steps += 1
                    for reporter in reporters:
                        reporter.on_step(state)
                    # a budget that ends mid-epoch still gets the epoch strategies' log / eval / save, as in
                    # Transformers
                    end_of_epoch = batch_index + 1 == num_batches or state.global_step >= max_steps
                    if end_of_epoch or state.global_step >= next_due:
                        self._maybe_log_evaluate_save(run, end_of_epoch, ignore_keys_for_eval)
                        next_due = _next_step_due(args, state.global_step)
                    elif len(pending) >= _LossWindow.FOLD_EVERY:
                        window.fold()
                    if state.global_step >= max_steps or stops.should_stop:
                        break
        except BaseException:
            for reporter in reporters:
                reporter.close()
            raise
        return self._wind_down(run)

    def _setup_run(
        self,
        batch_size: int,
        args: TrainingArguments,
        model_params: dict[str, Any],
        resume_path: Path | None,
        reporters: list[Reporter],
    ) -> _Run:
        """Seed, model, data, optimizer, schedule, the state (the checkpoint's when resuming), reporters begun."""
        self._setup_accelerator(args)
        accelerator = self.accelerator
        if args.fp16 and accelerator.scaler is None:  # accelerate's fp16 off a GPU: no autocast, no scaling
            raise ConfigError(
                f"`fp16` is true, but the model runs on {accelerator.device.type}, where fp16 mixed precision does "
                "nothing (the run would train in fp32): use bf16 on a CPU, or fp16 on a GPU"
            )
        _set_seed(args.seed)
        if self._given_model is not None:
            if model_params:
                raise ConfigError(
                    f"params {sorted(model_params)} go to the task's model_init, but the Trainer was given a model to "
                    "train: drop them, or build the model from them with model_init (and give no model)"
                )
            model = self._prepare_model(self._given_model)
        else:
            model = self._prepare_model(self._build_model(model_params))
        self.model = self._prepared_model = model
        self._shift_labels = _is_causal_lm(accelerator.unwrap_model(model))
        if args.gradient_checkpointing:
            unwrapped = accelerator.unwrap_model(model)
            if not hasattr(unwrapped, "gradient_checkpointing_enable"):
                raise ConfigError(
                    f"`gradient_checkpointing` is true, but the model ({type(unwrapped).__name__}) has no "
                    "gradient_checkpointing_enable() (a Transformers PreTrainedModel has)"
                )
            # Transformers 5 names it activation checkpointing (the old name is deprecated there)
            enable = (
                getattr(unwrapped, "activation_checkpointing_enable", None) or unwrapped.gradient_checkpointing_enable
            )
            enable()
        train_loader, epoch_generator = self._train_loader(batch_size, args)
        num_batches = len(train_loader)
        accum = args.gradient_accumulation_steps
        steps_per_epoch = math.ceil(num_batches / accum)
        max_steps = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * steps_per_epoch)
        optimizer = _make_optimizer(model, args)
        scheduler = _make_scheduler(optimizer, args, max_steps)
        scaler = accelerator.scaler
        _warn_of_strategies_that_never_fire(args, max_steps)
        state = ckpt.TrainerState(
            max_steps=max_steps,
            steps_per_epoch=steps_per_epoch,
            train_batch_size=batch_size,
            num_processes=accelerator.num_processes,
        )
        if resume_path is not None:
            state = self._resume(resume_path, model, optimizer, scheduler, scaler, state, model_params)
            if state.global_step >= max_steps:
                logger.warning(
                    "%s is at step %d, and this run's budget is %d steps: nothing is left to train (raise "
                    "num_train_epochs or max_steps to train on)", resume_path, state.global_step, max_steps,
                )  # fmt: skip
        state.num_threads = torch.get_num_threads()
        self.state = state
        if accelerator.is_main_process:
            ckpt.remove_partial_checkpoints(args.output_dir)
        control = TrainerControl()
        reporters = reporters if accelerator.is_main_process else []
        for reporter in reporters:
            reporter.control = control  # any hook may stop the run (checked after every optimizer step)
            reporter.on_train_begin(args, state, self.params)
        # torch_compile: what trains is torch.compile's wrapper; the model itself (self.model) is what checkpoints,
        # evaluate(), predict() and exports see, with its own state_dict keys (no `_orig_mod.` prefix). Compiling
        # happens at the first forward and backward (and again for a new input shape): timed by dynamo, see below
        trained = _compile(model, args) if args.torch_compile else model
        # per-call counters: metrics count only the work done in this call. The loss of the steps since the
        # last log line is summed on the device (no sync); a resumed run starts from the partial sum its checkpoint
        # saved, which is not this call's work
        run = _Run(
            args=args,
            model=trained,
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=scaler,
            state=state,
            control=control,
            reporters=reporters,
            train_loader=train_loader,
            epoch_generator=epoch_generator,
            num_batches=num_batches,
            accum=accum,
            steps_per_epoch=steps_per_epoch,
            max_steps=max_steps,
            start_time=time.perf_counter(),
            start_step=state.global_step,
            loss_finite_through=state.global_step,
            counters=_LossCounters(carried=state.logging_loss_sum),
            window=_LossWindow(state.logging_loss_sum, accelerator.device),
            compile_seconds_at_start=_compile_seconds() if args.torch_compile else None,
        )
        trained.train()
        return run

    def _training_step(self, run: _Run, model: torch.nn.Module, batch: Any, group: int, boundary: bool) -> torch.Tensor:
        """Forward, loss, backward for one micro-batch; returns its share of the step's loss (a tensor: no sync).

        `model` is `run.model`, passed from the loop's local to save a lookup per micro-batch.
        """
        if not boundary and self._distributed:  # no gradient all-reduce before the accumulation boundary
            with self.accelerator.no_sync(model):
                return self._training_step(run, model, batch, group, True)
        if not self._on_cpu:
            batch = _move(batch, self.accelerator.device)
        inputs, labels = _split_batch(batch, run.args.label_names)
        run.samples_seen += _batch_size(labels if labels is not None else inputs)
        loss = self._compute_loss(_call_model(model, inputs, labels), labels)
        if group > 1:
            loss = loss / group
        run.last_graph = loss  # the last micro-batch's graph goes now, after this one's was built (see _Run)
        if self._plain_backward:
            loss.backward()
        else:
            self.accelerator.backward(loss)
        return loss.detach()

    def _optimizer_step(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: Any, max_grad_norm: float
    ) -> torch.Tensor | None:
        if scaler is not None:
            scaler.unscale_(optimizer)
        grad_norm = None
        if max_grad_norm:
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        return grad_norm

    def _maybe_log_evaluate_save(self, run: _Run, end_of_epoch: bool, ignore_keys: list[str] | None) -> None:
        """At the steps the strategies name: log the loss, evaluate (best, early stopping), save a checkpoint."""
        args, state = run.args, run.state
        step = state.global_step
        log_due = _due(args.logging_strategy, args.logging_steps, step, end_of_epoch) and state.logging_loss_steps
        eval_due = _due(args.eval_strategy, args.eval_steps, step, end_of_epoch) and self.task.eval_dataset is not None
        save_due = _due(args.save_strategy, args.save_steps, step, end_of_epoch)  # every process: its RNG is saved
        if not (log_due or eval_due or save_due):
            return
        # .item() is a device sync: only at the steps that log, evaluate or save. A NaN or inf loss since the last
        # log line stops the run here, before its weights are evaluated or saved
        window_sum = _finite_window_sum(run, self._mean_over_processes(run.window.fold()))
        if log_due:
            self._log(run, window_sum)
        metrics = self._evaluate_and_track(run, ignore_keys) if eval_due else None
        saved = self._save(run, 0.0 if log_due else window_sum) if save_due else None
        if metrics is not None:
            for reporter in run.reporters:
                reporter.on_evaluate(metrics, state, run.control, saved)
        if self._distributed:
            run.agreed.should_stop, run.agreed.reason = self._main_decides(
                lambda: (run.control.should_stop, run.control.reason)
            )
            run.control.reason = run.control.reason or run.agreed.reason

    def _log(self, run: _Run, window_sum: float) -> None:
        """One log line: the mean loss since the last one, learning rate, epoch, grad norm; the window restarts."""
        state = run.state
        run.counters.logged += window_sum
        logs = {
            "loss": window_sum / state.logging_loss_steps,
            "learning_rate": run.scheduler.get_last_lr()[0],
            "epoch": state.epoch,
        }
        if run.grad_norm is not None:
            logs["grad_norm"] = run.grad_norm.item()
        state.log_history.append({**logs, "step": state.global_step})
        for reporter in run.reporters:
            reporter.on_log(logs, state)
        run.window.total.zero_()  # folded just before: nothing is pending
        state.logging_loss_steps = 0

    def _evaluate_on_start(self, run: _Run, ignore_keys: list[str] | None) -> None:
        """eval_on_start: the untrained model scored and logged (console, TensorBoard), as in Transformers. Not an
        evaluation of the run's: no best model, no early stopping, nothing a search prunes on."""
        if self.task.eval_dataset is None:
            raise ConfigError(f"`eval_on_start` is true, but task {self.task.name!r} has no eval_dataset")
        metrics = {**self._evaluate(self.task.eval_dataset, ignore_keys, "eval"), "epoch": 0.0}
        run.state.log_history.append({**metrics, "step": 0})
        for reporter in run.reporters:
            reporter.on_log(metrics, run.state)

    def _evaluate_and_track(self, run: _Run, ignore_keys: list[str] | None) -> dict[str, float]:
        """The eval set's metrics (with the epoch), after tracking the best and early stopping with them."""
        metrics = self._evaluate(self.task.eval_dataset, ignore_keys, "eval")
        metrics["epoch"] = run.state.epoch
        self._track_best(run.args, run.state, run.control, metrics)
        if isinstance(run.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):  # as Transformers steps it
            run.scheduler.step(metrics[run.args.objective_metric])
        return metrics

    def _save(self, run: _Run, window_sum: float) -> Path | None:
        """A checkpoint of this step (the best's path recorded in it), then rotation, which keeps the best.

        `window_sum` is the loss summed since the last log line (the mean over processes). Several processes: the
        main one writes the checkpoint, with every process's RNG states; the others return None."""
        args, state = run.args, run.state
        state.logging_loss_sum = window_sum
        if state.best_global_step == state.global_step:
            state.best_model_checkpoint = str(ckpt.checkpoint_path(args.output_dir, state.global_step))
        rng_states = None
        if self._distributed:
            from accelerate.utils import gather_object

            rng_states = gather_object([ckpt.rng_state()])  # by process index
        if not self.accelerator.is_main_process:
            return None
        saved = ckpt.save_checkpoint(
            args.output_dir,
            model=self.accelerator.unwrap_model(self.model),  # not run.model: torch.compile's wrapper, if it is one
            optimizer=run.optimizer,
            scheduler=run.scheduler,
            scaler=run.scaler,
            state=state,
            params=self.params,
            args=args.to_dict(),
            rng_states=rng_states,
        )
        ckpt.rotate_checkpoints(args.output_dir, limit=args.save_total_limit, keep=state.best_model_checkpoint)
        return saved

    def _wind_down(self, run: _Run) -> TrainOutput:
        """The best model back (load_best_model_at_end), the final metrics to the reporters; this call's output."""
        state = run.state
        if run.args.load_best_model_at_end and state.best_model_checkpoint:
            self.accelerator.wait_for_everyone()  # the main process may still be writing it
            ckpt.load_weights(self.accelerator.unwrap_model(self.model), state.best_model_checkpoint)
            logger.info("loaded the best model from %s", state.best_model_checkpoint)
        training_loss = _training_loss(run, self._mean_over_processes(run.window.fold()))
        metrics = self._final_metrics(run, training_loss)
        for reporter in run.reporters:
            reporter.on_train_end(metrics, state)
        if run.control.exception is not None:
            raise run.control.exception
        return TrainOutput(state.global_step, training_loss, metrics)

    def _final_metrics(self, run: _Run, training_loss: float) -> dict[str, float]:
        """train_* of this call's work, the epoch, the last evaluation's eval_*, the best, why the run stopped."""
        state = run.state
        steps_done = state.global_step - run.start_step
        samples_seen = run.samples_seen * state.num_processes  # each process saw its share of every global batch
        runtime = time.perf_counter() - run.start_time
        compiling = None
        if run.compile_seconds_at_start is not None:  # torch_compile: compiling is reported apart from the training
            compiling = max(0.0, _compile_seconds() - run.compile_seconds_at_start)
            runtime = max(0.0, runtime - compiling)
        metrics: dict[str, Any] = {"train_runtime": round(runtime, 4)}
        if compiling is not None:
            metrics["train_compile_seconds"] = round(compiling, 4)
        metrics.update(
            train_samples=samples_seen,
            train_samples_per_second=round(samples_seen / runtime, 3) if runtime else 0.0,
            train_steps_per_second=round(steps_done / runtime, 3) if runtime else 0.0,
            epoch=state.epoch,
            num_processes=state.num_processes,
        )
        if steps_done:  # none when a resumed run's budget was already spent: no loss to report (not NaN)
            metrics["train_loss"] = training_loss
        metrics.update(self._last_eval_metrics(state))
        if state.best_metric is not None:
            metrics["best_metric"] = state.best_metric
            metrics["best_global_step"] = state.best_global_step
        if run.control.reason:
            metrics["stopped"] = run.control.reason
        return metrics

    def _track_best(
        self, args: TrainingArguments, state: ckpt.TrainerState, control: TrainerControl, metrics: dict[str, float]
    ) -> None:
        name = args.objective_metric
        if name not in metrics:
            available = ", ".join(sorted(k for k in metrics if k.startswith("eval_")))
            raise ConfigError(
                f"`metric_for_best_model` is {args.metric_for_best_model!r}, but the evaluation returned only "
                f"{available}"
            )
        value = float(metrics[name])
        state.num_evaluations += 1
        state.log_history.append({**metrics, "step": state.global_step})
        best = state.best_metric
        improved = math.isfinite(value) and (best is None or (value > best if args.greater_is_better else value < best))
        if improved:
            state.best_metric = value
            state.best_global_step = state.global_step
            state.evaluations_without_improvement = 0
        else:
            state.evaluations_without_improvement += 1
            patience = args.early_stopping_patience
            if patience is not None and state.evaluations_without_improvement >= patience:
                control.stop("early_stopping")

    def _evaluate(self, dataset: Any, ignore_keys: list[str] | None, prefix: str) -> dict[str, float]:
        """Loss and compute_metrics over a whole split, in eval mode without gradients; with `{prefix}_runtime`,
        `{prefix}_samples_per_second` and `{prefix}_num_parameters` (the model's trainable parameters), which a search
        can trade accuracy against."""
        metrics = self._prediction_loop(dataset, ignore_keys, prefix, False)[0]
        metrics[f"{prefix}_num_parameters"] = num_parameters(self.model)
        return metrics

    def _prediction_loop(
        self, dataset: Any, ignore_keys: list[str] | None, prefix: str, keep: bool
    ) -> tuple[dict[str, float], Any, Any]:
        """(metrics, predictions, labels) over a whole split, in eval mode without gradients. Predictions and
        labels are gathered when `keep` or for compute_metrics (else None); the loss needs labels or a model that
        returns one."""
        model = self.model
        if self._distributed:
            # the model itself, not its DistributedDataParallel wrapper: the wrapper's forward broadcasts buffers,
            # a collective that a process with no share of the evaluation would never join (the weights are the
            # same in every process anyway)
            model = self.accelerator.unwrap_model(model)
        was_training = model.training
        model.eval()
        dataset, collate_fn = batched(self._model_columns(dataset), self.task.collate_fn)
        loader = DataLoader(
            dataset,
            batch_size=self.run_args.per_device_eval_batch_size,
            sampler=SequentialSampler(dataset),
            collate_fn=collate_fn,
            num_workers=self.run_args.dataloader_num_workers,
            generator=torch.Generator().manual_seed(0),  # not the global RNG: evaluating must not shift training
        )
        if self._distributed:  # each process scores its share; the sums and what is kept are gathered at the end
            loader = self._shard(loader, even_batches=False)
        start = time.perf_counter()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.accelerator.device)
        count = scored = 0
        gather = keep or self.task.compute_metrics is not None
        gathered = Gathered()
        preprocess = self.task.preprocess_logits_for_metrics
        with torch.no_grad():
            for batch in loader:
                batch = self._to_device(batch)
                inputs, labels = _split_batch(batch, self.run_args.label_names)
                outputs = _call_model(model, inputs, labels)
                size = _batch_size(labels if labels is not None else inputs)
                count += size
                if labels is not None or _returned_loss(outputs) is not None:
                    loss_sum += self._compute_loss(outputs, labels).double() * size
                    scored += size
                if gather:
                    logits = _predictions(outputs, ignore_keys)
                    gathered.add(preprocess(logits, labels) if preprocess is not None else logits, labels)
        if was_training:
            model.train()
        if self._distributed:
            loss_sum, count, scored, gathered = self._from_every_process(loss_sum, count, scored, gathered, gather)
        metrics = {f"{prefix}_loss": loss_sum.item() / scored} if scored else {}
        predictions, labels = gathered.result()
        if self.task.compute_metrics is not None and labels is not None:
            computed = call_compute_metrics(self.task.compute_metrics, predictions, labels)
            for key, value in computed.items():
                metrics[key if key.startswith(f"{prefix}_") else f"{prefix}_{key}"] = float(value)
        runtime = time.perf_counter() - start
        metrics[f"{prefix}_runtime"] = round(runtime, 4)
        metrics[f"{prefix}_samples_per_second"] = round(count / runtime, 3) if runtime else 0.0
        return metrics, predictions, labels

    # ------------------------------------------------------------------ setup helpers

    def _resolve_params(self, trial: Any) -> tuple[dict[str, Any], Any]:
        if trial is None:
            return {}, None
        if isinstance(trial, Mapping):
            params = dict(trial)
            if self.space is not None and not self.space.is_empty:
                params = self.space.validate(params)
            return params, None
        if hasattr(trial, "suggest_float") and hasattr(trial, "report"):
            if self.space is None or self.space.is_empty:
                raise ConfigError("an optuna.Trial was given, but the Trainer has no search space to sample from")
            return self.space.sample(trial), trial
        raise ConfigError(f"`trial` is a {type(trial).__name__}, but must be None, a dict or an optuna.Trial")

    def _args_for(self, params: dict[str, Any]) -> TrainingArguments:
        overrides = {k: v for k, v in params.items() if k in field_names()}
        return self.args.replace(**overrides) if overrides else self.args

    def _resolve_checkpoint(self, resume: str | Path | bool | None, args: TrainingArguments) -> Path | None:
        if resume is None or resume is False:
            return None
        if resume is True:
            if not ckpt.list_checkpoints(args.output_dir):
                raise CheckpointError(f"resume_from_checkpoint=True, but there is no checkpoint in {args.output_dir!r}")
            # a damaged latest falls back to the one before it, with a warning; with none usable (warned too) the
            # run starts over. A checkpoint named explicitly is never swapped for another: damaged, it is an error
            return ckpt.find_latest_usable(args.output_dir)
        return ckpt.check_checkpoint(resume)

    def _make_reporters(self, args: TrainingArguments, optuna_trial: Any) -> list[Reporter]:
        reporters: list[Reporter] = []
        if self.console:
            reporters.append(ConsoleReporter(use_bar=None if args.disable_tqdm is None else not args.disable_tqdm))
        if args.report_to == "tensorboard":
            reporters.append(TensorBoardReporter(args.logging_dir or Path(args.output_dir) / "runs"))
        if optuna_trial is not None:
            reporters.append(OptunaReporter(optuna_trial, args.objective_metric))
        return reporters + self.reporters

    def _setup_accelerator(self, args: TrainingArguments) -> None:
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState

        precision = "fp16" if args.fp16 else "bf16" if args.bf16 else "no"
        current = self.accelerator
        if current is not None and current.mixed_precision == precision:
            return
        # accelerate keeps one global state per process; a process that trains many runs (a search worker)
        # may switch precision between them, so that state is reset first
        if AcceleratorState._shared_state and AcceleratorState().mixed_precision != precision:
            AcceleratorState._reset_state()
        from accelerate.utils import DistributedType

        # several processes on a machine without a GPU (a launcher's WORLD_SIZE): accelerate takes them as
        # data-parallel CPU processes (gloo) only when told the run is on the CPU
        several = int(os.environ.get("WORLD_SIZE", "1")) > 1
        cpu = args.use_cpu or (several and not torch.cuda.is_available())
        self.accelerator = Accelerator(mixed_precision=precision, cpu=cpu)
        self._on_cpu = self.accelerator.device.type == "cpu"
        self._distributed = self.accelerator.num_processes > 1
        # accelerator.backward divides by its own accumulation count and scales fp16 losses; with neither it is
        # a plain loss.backward() (DDP included), called directly to keep the per-step path lean
        plain_types = (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU)
        self._plain_backward = self.accelerator.scaler is None and self.accelerator.distributed_type in plain_types

    def _prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """accelerate's prepare_model where it earns its keep (autocast, several processes); else a plain move.

        note: prepare_model measured 52 ms a call here (its checks), paid by every trial of a search.
        """
        if self.accelerator.mixed_precision == "no" and not self._distributed:
            return model.to(self.accelerator.device)
        return self.accelerator.prepare_model(model)

    def _model_columns(self, dataset: Any) -> Any:
        """remove_unused_columns, as in Transformers: a `datasets.Dataset`'s columns that the model's forward does
        not take (text, ids) dropped, the labels kept; any other dataset as it is."""
        if not self.run_args.remove_unused_columns or not hasattr(dataset, "remove_columns"):
            return dataset
        columns = getattr(dataset, "column_names", None)
        if not isinstance(columns, list):
            return dataset
        model = self.accelerator.unwrap_model(self.model) if self.accelerator is not None else self.model
        parameters = inspect.signature(model.forward).parameters
        named = {name for name, p in parameters.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        labels = {"label", "label_ids", "labels", *(self.run_args.label_names or [])}
        unused = [column for column in columns if column not in named | labels]
        if not unused or all(column in unused or column in labels for column in columns):
            # nothing to drop, or every input would go (a forward that takes **kwargs only): as it is
            return dataset
        return dataset.remove_columns(unused)

    def _build_model(self, model_params: dict[str, Any]) -> torch.nn.Module:
        if self.task.model_init is None:
            raise ConfigError(
                f"task {self.task.name!r} has no model_init and the Trainer was given no model: a search builds a "
                "fresh model for each trial with model_init(params); a single run trains Trainer(..., model=model)"
            )
        model = self.task.model_init(dict(model_params))
        if not isinstance(model, torch.nn.Module):
            raise ConfigError(f"model_init returned a {type(model).__name__}, but must return a torch.nn.Module")
        return model

    def _train_loader(self, batch_size: int, args: TrainingArguments) -> tuple[DataLoader, torch.Generator]:
        # the sampler's generator, reseeded with seed + epoch before each epoch: the batch order is a function of the
        # epoch alone, so a resumed run sees the same order, and the global RNG (dropout) is not drawn from by the
        # loader. The loader's own generator (the base seed a DataLoader draws when it makes an iterator) is another
        # one: with persistent workers it makes one iterator a call, in the first epoch of that call, which is not
        # the same epoch in a resumed run, and the order must not depend on it
        generator = torch.Generator()
        workers = args.dataloader_num_workers > 0
        worker_seeds = torch.Generator().manual_seed(args.seed)
        # a batch of a TensorDataset / ArrowDataset is fetched with one indexing per tensor (same batches)
        dataset, collate_fn = batched(self._model_columns(self.task.train_dataset), self.task.collate_fn)
        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=RandomSampler(dataset, generator=generator),
            collate_fn=collate_fn,
            num_workers=args.dataloader_num_workers,
            pin_memory=self.accelerator.device.type == "cuda",
            persistent_workers=workers,
            generator=worker_seeds,
        )
        if len(loader) == 0:
            raise ConfigError(f"task {self.task.name!r} has an empty train_dataset")
        if self._distributed:
            loader = self._shard(loader)
        return loader, generator

    def _shard(self, loader: DataLoader, *, even_batches: bool = True) -> DataLoader:
        """accelerate's prepared loader for this process: of every N consecutive batches the sampler makes (a global
        batch), the process's own, so N processes step on the batches one process would with an N-times larger one
        (training: the last is completed from the start of the epoch, as accelerate does; an evaluation's is left
        short, so that no example counts twice). The sampler is this loader's: every process reseeds its generator
        alike each epoch, so nothing is broadcast."""
        from accelerate.data_loader import prepare_data_loader

        accelerator = self.accelerator
        return prepare_data_loader(
            loader,
            num_processes=accelerator.num_processes,
            process_index=accelerator.process_index,
            put_on_device=False,  # the loop moves batches itself
            even_batches=even_batches,
        )

    def _from_every_process(
        self, loss_sum: torch.Tensor, count: int, scored: int, gathered: Gathered, gather: bool
    ) -> tuple[torch.Tensor, int, int, Gathered]:
        """An evaluation's sums over every process's share, and (`gather`) what each kept, in the dataset's order."""
        from accelerate.utils import gather_object

        totals = torch.stack([loss_sum, loss_sum.new_tensor(count), loss_sum.new_tensor(scored)])
        loss_sum, count, scored = self.accelerator.reduce(totals, reduction="sum")
        if gather:  # every process, even one whose share was empty: a collective
            gathered = Gathered.interleaved(gather_object([gathered]))
        return loss_sum, int(count.item()), int(scored.item()), gathered

    def _mean_over_processes(self, value: torch.Tensor) -> torch.Tensor:
        """`value`'s mean over the processes of a data-parallel run (a collective); `value` itself in one process."""
        if not self._distributed:
            return value
        return self.accelerator.reduce(value, reduction="mean")

    def _main_decides(self, choose: Any) -> Any:
        """`choose()` in the main process, its result (or the error it raised) in every process."""
        if not self._distributed:
            return choose()
        from accelerate.utils import broadcast_object_list

        outcome: list[Any] = [None]
        if self.accelerator.is_main_process:
            try:
                outcome[0] = choose()
            except Exception as exc:  # raised in every process, not only here (the others would wait for ever)
                outcome[0] = exc
        broadcast_object_list(outcome, from_process=0)
        if isinstance(outcome[0], Exception):
            raise outcome[0]
        return outcome[0]

    def _resume(
        self,
        path: Path,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        scaler: Any,
        fresh: ckpt.TrainerState,
        model_params: dict[str, Any],
    ) -> ckpt.TrainerState:
        saved = ckpt.read_trainer_state(path)
        saved_params = ckpt.read_params(path)
        if saved_params != self.params:
            changed = sorted(
                k for k in set(saved_params) | set(self.params) if saved_params.get(k) != self.params.get(k)
            )
            logger.warning("resuming with params that differ from the checkpoint's (%s): this run's win", changed)
        ckpt.load_weights(self.accelerator.unwrap_model(model), path)
        settings = _hyperparameters(optimizer, scheduler)  # this run's, before the checkpoint's replace them
        ckpt.load_training_state(
            path,
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=scaler,
            device=self.accelerator.device,
            process_index=self.accelerator.process_index,
        )
        previous = ckpt.read_args(path)  # the checkpoint's run's TrainingArguments
        if _optimizer_settings_changed(previous, self.run_args, optimizer, scheduler, settings):
            _retune(optimizer, scheduler, settings, previous_lr=previous.get("learning_rate"))
            logger.debug("resuming with this run's optimizer settings (the checkpoint's differ): %s", settings)
        if saved.train_batch_size != fresh.train_batch_size or saved.steps_per_epoch != fresh.steps_per_epoch:
            logger.warning(
                "resuming with batch size %s (checkpoint: %s): the batch order will differ from the original run",
                fresh.train_batch_size,
                saved.train_batch_size,
            )
        if saved.num_processes != fresh.num_processes:
            logger.warning(
                "resuming on %d process(es) (checkpoint: %d): the global batches, and so the run, differ from the "
                "original run's", fresh.num_processes, saved.num_processes,
            )  # fmt: skip
        saved.max_steps = fresh.max_steps
        saved.steps_per_epoch = fresh.steps_per_epoch
        saved.train_batch_size = fresh.train_batch_size
        saved.num_processes = fresh.num_processes
        logger.info("resuming from %s at step %d", path, saved.global_step)
        return saved

    def _to_device(self, batch: Any) -> Any:
        if self._on_cpu:
            return batch
        return _move(batch, self.accelerator.device)

    def _compute_loss(self, outputs: Any, labels: torch.Tensor | None) -> torch.Tensor:
        if self.task.compute_loss is not None:
            return self.task.compute_loss(outputs, labels)
        smoothing = self.run_args.label_smoothing_factor
        if smoothing and isinstance(labels, torch.Tensor):  # as Transformers: from the logits, whatever loss it returns
            logits = _logits(outputs, None)
            if self._shift_labels:  # a causal LM predicts the next token: its labels are the inputs, shifted
                logits, labels = logits[..., :-1, :], labels[..., 1:]
            flat = logits.reshape(-1, logits.shape[-1]).float()
            return F.cross_entropy(flat, labels.reshape(-1), ignore_index=-100, label_smoothing=smoothing)
        return _default_loss(outputs, labels)

    @staticmethod
    def _last_eval_metrics(state: ckpt.TrainerState) -> dict[str, float]:
        for entry in reversed(state.log_history):
            if entry.get("step") and any(k.startswith("eval_") for k in entry):  # not eval_on_start's (step 0)
                return {k: v for k, v in entry.items() if k.startswith("eval_")}
        return {}


def train(
    task: Task | str,
    args: TrainingArguments | None = None,
    *,
    space: SearchSpace | None = None,
    resume_from_checkpoint: str | Path | bool | None = None,
    trial: Any = None,
    ignore_keys_for_eval: list[str] | None = None,
    reporters: list[Reporter] | None = None,
) -> TrainOutput:
    """One run in one line: `Trainer(task, args, space).train(...)`."""
    trainer = Trainer(task, args, space, reporters=reporters)
    return trainer.train(
        resume_from_checkpoint=resume_from_checkpoint, trial=trial, ignore_keys_for_eval=ignore_keys_for_eval
    )


# ---------------------------------------------------------------------- private helpers


def num_parameters(model: torch.nn.Module) -> int:
    """The trainable parameters of `model` (each shared tensor counted once; a DDP wrapper adds none)."""
    return sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)


def _set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _due(strategy: str, every: int | None, step: int, end_of_epoch: bool) -> bool:
    if strategy == "steps":
        return step % every == 0
    return strategy == "epoch" and end_of_epoch


def _next_step_due(args: TrainingArguments, step: int) -> float:
    """The first step after `step` at which a `steps` strategy logs, evaluates or saves (inf when none is `steps`)."""
    every = [
        interval
        for strategy, interval in (
            (args.logging_strategy, args.logging_steps),
            (args.eval_strategy, args.eval_steps),
            (args.save_strategy, args.save_steps),
        )
        if strategy == "steps"
    ]
    return min((step // interval + 1) * interval for interval in every) if every else math.inf


def _group_size(batch_index: int, num_batches: int, accum: int) -> int:
    """How many micro-batches the accumulation group of this batch has (the last group of an epoch may be short)."""
    group_start = batch_index - batch_index % accum
    return min(accum, num_batches - group_start)


def _skip_batches(loader: DataLoader, num_batches: int) -> DataLoader:
    """The loader without its first batches: their indices are drawn (same order) but no example is loaded."""
    from accelerate import skip_first_batches

    return skip_first_batches(loader, num_batches)


def _make_optimizer(model: torch.nn.Module, args: TrainingArguments) -> torch.optim.Optimizer:
    # no weight decay on biases and norm weights (1-D tensors), as in Transformers and nanoGPT
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ConfigError("the model has no trainable parameters")
    if args.optim == "sgd":
        return torch.optim.SGD(groups, lr=args.learning_rate, momentum=args.momentum)
    betas = (args.adam_beta1, args.adam_beta2)
    if args.optim == "adam":
        return torch.optim.Adam(groups, lr=args.learning_rate, betas=betas, eps=args.adam_epsilon)
    fused = {"fused": True} if args.optim == "adamw_torch_fused" else {}  # adamw is Transformers' adamw_torch
    return torch.optim.AdamW(groups, lr=args.learning_rate, betas=betas, eps=args.adam_epsilon, **fused)


_RETUNED = ("lr", "weight_decay", "betas", "eps", "momentum")  # the optimizer settings a resumed run may change


def _hyperparameters(optimizer: torch.optim.Optimizer, scheduler: Any = None) -> list[dict[str, Any]]:
    """Each param group's settings a resumed run may change; its `lr` is the schedule's base rate (the rate it
    scales) when a schedule is given and has one, else the group's rate now (a fresh optimizer's is its base)."""
    base = getattr(scheduler, "base_lrs", None)
    return [
        {**{k: group[k] for k in _RETUNED if k in group}, **({"lr": base[i]} if base else {})}
        for i, group in enumerate(optimizer.param_groups)
    ]


def _optimizer_settings_changed(
    previous: dict[str, Any],
    args: TrainingArguments,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    settings: list[dict[str, Any]],
) -> bool:
    """Whether this run's optimizer settings differ from those of the checkpoint's run: by its TrainingArguments
    where it saved them (a plain resume never touches the restored optimizer, so it stays bitwise exact), else by
    the restored optimizer's groups."""
    if previous:
        return any(previous.get(name) != getattr(args, name) for name in _OPTIMIZER_FIELDS)
    return _hyperparameters(optimizer, scheduler) != settings


_OPTIMIZER_FIELDS = ("learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "momentum")


def _retune(optimizer: torch.optim.Optimizer, scheduler: Any, fresh: list[dict[str, Any]], *, previous_lr: Any) -> None:
    """Put this run's settings (`fresh`) into an optimizer and schedule restored from a checkpoint of another run
    (PBT's explore step, or params changed by hand). The learning rate keeps the schedule's shape: the group's rate
    is the new base rate times the schedule's factor at this step (warmup and decay go on where they were); under
    ReduceLROnPlateau, which has no base rate, the rate is scaled by new / old learning rate."""
    base_lrs = getattr(scheduler, "base_lrs", None)
    for index, (group, settings) in enumerate(zip(optimizer.param_groups, fresh, strict=True)):
        for key, value in settings.items():
            if key != "lr":
                group[key] = value
        if base_lrs is not None:
            base_lrs[index] = group["initial_lr"] = settings["lr"]
            group["lr"] = settings["lr"] * scheduler.lr_lambdas[index](scheduler.last_epoch)
        elif isinstance(previous_lr, (int, float)) and previous_lr > 0 and previous_lr != settings["lr"]:
            group["lr"] = group["lr"] * settings["lr"] / previous_lr
    if base_lrs is not None:
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]  # what get_last_lr() reports


def _make_scheduler(optimizer: torch.optim.Optimizer, args: TrainingArguments, max_steps: int) -> Any:
    """The learning rate's schedule, as Transformers' `get_scheduler` shapes it (a factor of the initial rate)."""
    warmup = args.warmup_steps or math.ceil(args.warmup_ratio * max_steps)
    kind = args.lr_scheduler_type
    kwargs = args.lr_scheduler_kwargs or {}
    if kind == "reduce_lr_on_plateau":  # stepped with the metric at each evaluation (see _evaluate_and_track)
        plateau = {k: int(v) if k in ("patience", "cooldown") else v for k, v in kwargs.items()}
        mode = "max" if args.greater_is_better else "min"
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, **plateau)

    def factor(step: int) -> float:
        if step < warmup and kind != "constant":
            return step / max(1, warmup)
        if kind in ("constant", "constant_with_warmup"):
            return 1.0
        if kind == "inverse_sqrt":
            timescale = kwargs.get("timescale", warmup or 10_000)
            return 1.0 / math.sqrt((step + timescale - warmup) / timescale)
        progress = min((step - warmup) / max(1, max_steps - warmup), 1.0)
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        if kind == "polynomial":
            lr_end, power = kwargs.get("lr_end", 1e-7), kwargs.get("power", 1.0)
            if args.learning_rate <= lr_end:
                return 1.0
            return ((args.learning_rate - lr_end) * (1.0 - progress) ** power + lr_end) / args.learning_rate
        if kind == "cosine_with_restarts":
            if progress >= 1.0:
                return 0.0
            cycles = kwargs.get("num_cycles", 1.0)
            return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((cycles * progress) % 1.0))))
        cycles = kwargs.get("num_cycles", 0.5)  # Transformers' cosine: half a cycle, from 1 down to 0
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * cycles * 2.0 * progress)))

    return _Schedule(optimizer, factor)


class _Schedule(torch.optim.lr_scheduler.LambdaLR):
    """A LambdaLR whose `step()` sets each group's rate to its base rate times the schedule's factor, as
    LambdaLR's does, without its checks and copies (measured 3.7 us a call on a CPU; this one about 1). Its state,
    and so every checkpoint's scheduler file, is LambdaLR's: the same keys and values after every step."""

    def step(self, epoch: int | None = None) -> None:
        if epoch is not None or self._step_count == 0:  # LambdaLR's deprecated form, and its initial step: its own
            super().step(epoch)
            return
        self._step_count += 1
        self.last_epoch += 1
        factor = self.lr_lambdas[0](self.last_epoch)  # every group's: _make_scheduler gives them one schedule
        rates = [base * factor for base in self.base_lrs]
        for group, rate in zip(self.optimizer.param_groups, rates, strict=True):
            group["lr"] = rate
        self._last_lr = rates  # what get_last_lr() reports


def _split_batch(batch: Any, label_names: list[str] | None = None) -> tuple[Any, Any]:
    """(inputs, labels) of a batch: a dict's `labels` (or its `label_names`: one tensor, or a tuple of them), or
    the second of an (inputs, labels) pair."""
    if type(batch) in (tuple, list) and len(batch) == 2:  # the usual pair, told apart without an ABC's isinstance
        return batch[0], batch[1]
    if isinstance(batch, Mapping):
        if not label_names:
            return batch, batch.get("labels")
        missing = [name for name in label_names if name not in batch]
        if missing:
            raise ConfigError(f"`label_names` names {missing}, but a batch has only the keys {sorted(batch)}")
        labels = tuple(batch[name] for name in label_names)
        return batch, labels[0] if len(labels) == 1 else labels
    if isinstance(batch, (list, tuple)) and len(batch) == 2:
        return batch[0], batch[1]
    if isinstance(batch, (list, tuple)) and len(batch) == 1:  # an unlabelled TensorDataset's
        return batch[0], None
    raise ConfigError(
        f"a batch is a {type(batch).__name__}, but must be a dict (with 'labels') or an (inputs, labels) pair"
    )


_ACCEPTS_LABELS: dict[type, bool] = {}


def _call_model(model: torch.nn.Module, inputs: Any, labels: torch.Tensor | None) -> Any:
    if type(inputs) is torch.Tensor or not isinstance(inputs, Mapping):
        return model(inputs)
    if "labels" in inputs and not _accepts_labels(model):
        inputs = {k: v for k, v in inputs.items() if k != "labels"}
    return model(**inputs)


def _accepts_labels(model: torch.nn.Module) -> bool:
    # torch.compile's wrapper's forward, and DistributedDataParallel's, take anything: the model's counts
    model = _uncompiled(model)
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    cls = type(model)
    if cls not in _ACCEPTS_LABELS:
        parameters = inspect.signature(model.forward).parameters
        _ACCEPTS_LABELS[cls] = "labels" in parameters or any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
        )
    return _ACCEPTS_LABELS[cls]


def _compile(model: torch.nn.Module, args: TrainingArguments) -> torch.nn.Module:
    """torch.compile's wrapper of `model` (as accelerate's dynamo plugin makes it, after the model is prepared); the
    model itself is left as it is."""
    return torch.compile(model, backend=args.torch_compile_backend or "inductor", mode=args.torch_compile_mode)


def _uncompiled(model: torch.nn.Module) -> torch.nn.Module:
    """The model that torch.compile's wrapper `model` holds; any other model as it is."""
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")  # torch.compile imports it: no wrapper without it
    if eval_frame is not None and isinstance(model, eval_frame.OptimizedModule):
        return model._orig_mod
    return model


def _compile_seconds() -> float:
    """The seconds torch.compile has spent compiling in this process: dynamo's own count, which is what compiling
    adds to the steps it happens in (tracing and the backend's compile of each graph, at a frame's first call and
    each recompile; a backward graph's at its first backward)."""
    from torch._dynamo.utils import calculate_time_spent

    return calculate_time_spent().get("total_wall_time", 0.0)


def _returned_loss(outputs: Any) -> torch.Tensor | None:
    """The `loss` a model's output holds (a dict's, or a Transformers ModelOutput's), if any."""
    return outputs.get("loss") if isinstance(outputs, Mapping) else getattr(outputs, "loss", None)


def _default_loss(outputs: Any, labels: torch.Tensor | None) -> torch.Tensor:
    if type(outputs) is torch.Tensor and labels is not None:  # logits (a plain tensor holds no loss of its own)
        return F.cross_entropy(outputs, labels)
    loss = _returned_loss(outputs)
    if loss is not None:
        return loss
    if labels is None:
        raise ConfigError("the model returned no `loss` and the batch has no labels: give the task a compute_loss")
    return F.cross_entropy(_logits(outputs, None), labels)


def _is_causal_lm(model: torch.nn.Module) -> bool:
    """Whether `model` is a Transformers causal language model (transformers is not imported for any other)."""
    transformers = sys.modules.get("transformers")
    if transformers is None:
        return False
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return type(model).__name__ in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()


def _predictions(outputs: Any, ignore_keys: list[str] | None) -> Any:
    """What an evaluation gathers of a batch's outputs, as Transformers does: a mapping's (a ModelOutput's) every
    output but the loss and `ignore_keys`, one tensor or a tuple of them (a question answering model's start and end
    logits); any other output as `_logits` takes it."""
    if isinstance(outputs, Mapping):
        kept = [v for k, v in outputs.items() if k != "loss" and k not in (ignore_keys or ()) and v is not None]
        if len(kept) > 1:
            return tuple(kept)
    return _logits(outputs, ignore_keys)


def _logits(outputs: Any, ignore_keys: list[str] | None) -> torch.Tensor:
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, Mapping):
        if "logits" in outputs and "logits" not in (ignore_keys or ()):
            return outputs["logits"]
        rest = [v for k, v in outputs.items() if k != "loss" and k not in (ignore_keys or ())]
        if rest:
            return rest[0]
    if isinstance(outputs, (list, tuple)) and outputs:
        return outputs[0]
    raise ConfigError(f"cannot find predictions in the model's output ({type(outputs).__name__})")


def _batch_size(item: Any) -> int:
    if isinstance(item, torch.Tensor):
        return item.shape[0] if item.ndim else 1
    if isinstance(item, Mapping):
        return _batch_size(next(iter(item.values())))
    if isinstance(item, (list, tuple)) and item:
        return _batch_size(item[0])
    return 1


def _move(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: _move(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_move(v, device) for v in batch)
    return batch


def _finite_window_sum(run: _Run, window_loss: torch.Tensor) -> float:
    """The loss summed since the last log line (`window_loss`: the run's, or its mean over the processes), a device
    sync; NonFiniteLossError when it is NaN or inf."""
    window_sum = window_loss.item()
    step = run.state.global_step
    if not math.isfinite(window_sum):
        first = run.loss_finite_through + 1
        raise NonFiniteLossError(f"the training loss became {window_sum} in steps {first}-{step}; the run stopped")
    run.loss_finite_through = step
    return window_sum


def _warn_of_strategies_that_never_fire(args: TrainingArguments, max_steps: int) -> None:
    """A warning, before training, for each `*_steps` longer than the whole run (an evaluation, a checkpoint or a
    log line it asks for would never come), and for a best model that could then never be chosen."""
    never = [
        (what, f"{name}={getattr(args, name)}")
        for what, strategy, name in (
            ("evaluates", "eval_strategy", "eval_steps"),
            ("saves a checkpoint", "save_strategy", "save_steps"),
            ("logs", "logging_strategy", "logging_steps"),
        )
        if getattr(args, strategy) == "steps" and getattr(args, name) > max_steps
    ]
    for what, setting in never:
        logger.warning("%s, but this run has %d optimizer steps: it never %s", setting, max_steps, what)
    if args.load_best_model_at_end and any(what == "evaluates" for what, _ in never):
        logger.warning("load_best_model_at_end is set, but no evaluation comes: no best model can be chosen")


def _training_loss(run: _Run, window_loss: torch.Tensor) -> float:
    """The mean loss of this call's steps (NaN when it did none), from the logged sums and the window since the last
    log line (`window_loss`: the run's, or its mean over the processes); NonFiniteLossError when it is NaN or inf."""
    steps_done = run.state.global_step - run.start_step
    training_loss = run.counters.total(window_loss) / steps_done if steps_done else float("nan")
    if steps_done and not math.isfinite(training_loss):
        raise NonFiniteLossError(f"the training loss became {training_loss} in this run's last steps")
    return training_loss


class _LossCounters:
    """The training loss of this call, from the sums read at log lines (no extra device syncs)."""

    def __init__(self, carried: float) -> None:
        self.carried = carried  # the checkpoint's partial window: an earlier call's work
        self.logged = 0.0

    def total(self, window_loss: torch.Tensor) -> float:
        return self.logged + window_loss.item() - self.carried


class _LossWindow:
    """The training loss summed since the last log line, on the device: each micro-batch's loss (detached) is
    appended to `pending`, and summed into `total` (one stack and sum) every FOLD_EVERY of them and whenever the
    sum is read (at the steps that log, evaluate or save, and at the end). note: an in-place add into `total` for
    each micro-batch measured 1.2 us on a CPU, a list append 0.02 us. Where the sum is folded is a function of the
    steps since the last log, evaluation or save, so a run resumed from a checkpoint (saved right after a fold)
    sums its losses exactly as the run that wrote it did."""

    FOLD_EVERY = 256

    def __init__(self, start: float, device: torch.device) -> None:
        self.total = torch.tensor(start, device=device)  # float32, as the losses are summed into it
        self.pending: list[torch.Tensor] = []

    def fold(self) -> torch.Tensor:
        """`total`, the pending losses summed into it."""
        if self.pending:
            self.total += torch.stack(self.pending).sum(dtype=self.total.dtype)
            self.pending.clear()
        return self.total
