"""Checkpoints on their own: save, list, find the latest, rotate, half-written saves, checks, exact loads."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from tunetrain import CheckpointError
from tunetrain import checkpoint as ckpt


def _parts(seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """A tiny model, its AdamW and LR schedule, one step taken (so the optimizer has state to save)."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    model(torch.randn(5, 3)).square().mean().backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return model, optimizer, scheduler


def _save(output_dir: Path, step: int, **state_fields) -> Path:
    model, optimizer, scheduler = _parts()
    return ckpt.save_checkpoint(
        output_dir,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=None,
        state=ckpt.TrainerState(global_step=step, **state_fields),
        params={"hidden": 4},
        args={"seed": 42},
    )


def _names(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


def test_save_list_find_latest_and_rotation_keep_the_best(tmp_path):
    assert ckpt.list_checkpoints(tmp_path / "nowhere") == []
    assert ckpt.find_latest(tmp_path) is None
    for step in (10, 2, 30, 20):  # saved out of order; "checkpoint-10" sorts before "checkpoint-2" as text
        assert _save(tmp_path, step) == ckpt.checkpoint_path(tmp_path, step)
    assert [ckpt.checkpoint_step(p) for p in ckpt.list_checkpoints(tmp_path)] == [2, 10, 20, 30]
    assert ckpt.find_latest(tmp_path) == tmp_path / "checkpoint-30"

    deleted = ckpt.rotate_checkpoints(tmp_path, limit=2, keep=tmp_path / "checkpoint-2")
    assert _names(deleted) == ["checkpoint-10", "checkpoint-20"]
    assert _names(ckpt.list_checkpoints(tmp_path)) == ["checkpoint-2", "checkpoint-30"]  # the best and the latest
    assert ckpt.rotate_checkpoints(tmp_path, limit=None, keep=None) == []  # no limit: nothing deleted


def test_checkpoint_path_is_what_checkpoint_step_reads(tmp_path):
    path = ckpt.checkpoint_path(str(tmp_path), 12)
    assert path == tmp_path / "checkpoint-12"
    assert ckpt.checkpoint_step(path) == 12
    assert ckpt.checkpoint_step(tmp_path / f".tmp-checkpoint-12-{os.getpid()}") is None
    assert ckpt.checkpoint_step(tmp_path / "checkpoint-best") is None


def test_a_half_written_save_is_never_listed_and_is_removed(tmp_path, monkeypatch):
    complete = _save(tmp_path, 6)

    def killed() -> None:
        raise KeyboardInterrupt  # not a storage error: the save is cut short and cleans nothing up, as a kill

    monkeypatch.setattr(ckpt, "rng_state", killed)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path, 12)
    partial = tmp_path / f".tmp-checkpoint-12-{os.getpid()}"
    assert (partial / ckpt.WEIGHTS_NAME).is_file()
    (partial / ckpt.TRAINER_STATE_NAME).write_text("{}")  # even with the file that marks a checkpoint complete
    assert ckpt.list_checkpoints(tmp_path) == [complete]
    assert ckpt.find_latest(tmp_path) == complete

    ckpt.remove_partial_checkpoints(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-6"]
    assert ckpt.check_checkpoint(complete) == complete
    ckpt.remove_partial_checkpoints(tmp_path / "nowhere")  # no output dir yet: nothing to do


def test_check_checkpoint_names_what_is_missing(tmp_path):
    missing = tmp_path / "checkpoint-3"
    with pytest.raises(CheckpointError, match=re.escape(f"checkpoint '{missing}' does not exist")):
        ckpt.check_checkpoint(missing)
    path = _save(tmp_path, 3)
    (path / ckpt.OPTIMIZER_NAME).unlink()
    (path / ckpt.RNG_STATE_NAME).unlink()
    with pytest.raises(CheckpointError, match=re.escape(f"'{path}' is incomplete: missing optimizer.pt, rng_state.pt")):
        ckpt.check_checkpoint(path)


def test_trainer_state_round_trip(tmp_path):
    fields = dict(
        epoch=1.5,
        max_steps=40,
        steps_per_epoch=8,
        train_batch_size=16,
        num_evaluations=2,
        best_metric=0.25,
        best_global_step=8,
        best_model_checkpoint=str(tmp_path / "checkpoint-8"),
        evaluations_without_improvement=1,
        logging_loss_sum=0.75,
        logging_loss_steps=3,
        log_history=[{"loss": 1.5, "step": 4}, {"eval_loss": float("inf"), "epoch": 1.0, "step": 8}],
    )
    path = _save(tmp_path, 12, **fields)
    assert ckpt.read_trainer_state(path) == ckpt.TrainerState(global_step=12, **fields)
    # a field this version does not know (from a newer one) is ignored; a broken file is a CheckpointError
    text = (path / ckpt.TRAINER_STATE_NAME).read_text()
    (path / ckpt.TRAINER_STATE_NAME).write_text(text[:-1] + ', "from_the_future": 1}')
    assert ckpt.read_trainer_state(path).global_step == 12
    (path / ckpt.TRAINER_STATE_NAME).write_text(text[: len(text) // 2])
    with pytest.raises(CheckpointError, match=f"unreadable {ckpt.TRAINER_STATE_NAME}"):
        ckpt.read_trainer_state(path)


def test_weights_only_load_restores_model_optimizer_schedule_and_rngs(tmp_path):
    model, optimizer, scheduler = _parts(seed=0)
    path = ckpt.save_checkpoint(
        tmp_path,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=None,
        state=ckpt.TrainerState(global_step=1),
        params={},
        args={},
    )
    draws = (torch.rand(3), random.random(), np.random.rand())  # what the run draws next after the save
    for name in (ckpt.OPTIMIZER_NAME, ckpt.SCHEDULER_NAME, ckpt.RNG_STATE_NAME):
        torch.load(path / name, weights_only=True)  # no pickled objects

    fresh_model, fresh_optimizer, fresh_scheduler = _parts(seed=1)
    ckpt.load_weights(fresh_model, path)
    ckpt.load_training_state(
        path, optimizer=fresh_optimizer, scheduler=fresh_scheduler, scaler=None, device=torch.device("cpu")
    )
    assert all(torch.equal(v, fresh_model.state_dict()[k]) for k, v in model.state_dict().items())
    saved_moments = optimizer.state_dict()["state"][0]["exp_avg"]
    assert torch.equal(fresh_optimizer.state_dict()["state"][0]["exp_avg"], saved_moments)
    assert fresh_scheduler.state_dict()["last_epoch"] == scheduler.state_dict()["last_epoch"]
    assert torch.equal(torch.rand(3), draws[0])
    assert (random.random(), np.random.rand()) == draws[1:]

    other = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.LayerNorm(5))
    with pytest.raises(CheckpointError, match=r"from a different model: '0\.(weight|bias)' has shape \(4"):
        ckpt.load_weights(other, path)


# --- damaged checkpoints ---------------------------------------------------------------------------------------------


def _cut_in_half(file: Path) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


class _Planted:
    """Unpickled, it opens (so creates) `marker` for writing: what a pickle planted in a checkpoint could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize(
    ("name", "damage", "message"),
    [
        (ckpt.WEIGHTS_NAME, _cut_in_half, r"weights '.*model\.safetensors' cannot be read: .*header"),
        (ckpt.WEIGHTS_NAME, lambda f: f.write_bytes(b"garbage" * 9), r"weights '.*model\.safetensors' cannot be read"),
        (ckpt.OPTIMIZER_NAME, _cut_in_half, r"'.*optimizer\.pt' is damaged"),
        (ckpt.SCHEDULER_NAME, lambda f: f.write_bytes(b""), r"'.*scheduler\.pt' is damaged"),
        (ckpt.RNG_STATE_NAME, lambda f: f.write_bytes(b"garbage"), r"'.*rng_state\.pt' is damaged"),
        (ckpt.TRAINER_STATE_NAME, _cut_in_half, r"unreadable trainer_state\.json"),
        (ckpt.TRAINER_STATE_NAME, lambda f: f.write_text("[1, 2]"), r"unreadable trainer_state\.json"),
        (ckpt.PARAMS_NAME, lambda f: f.write_bytes(b"\xff\xfe{"), r"unreadable params\.json"),
    ],
)
def test_check_checkpoint_reads_every_file_and_names_the_damaged_one(tmp_path, name, damage, message):
    path = _save(tmp_path, 3)
    damage(path / name)
    with pytest.raises(CheckpointError, match=message) as raised:
        ckpt.check_checkpoint(path)
    assert "\n" not in str(raised.value)
    assert "earlier checkpoint" in str(raised.value)  # and what to do about it


def test_the_latest_usable_checkpoint_skips_a_damaged_one_says_so_and_keeps_it(tmp_path, caplog):
    for step in (2, 4, 6):
        _save(tmp_path, step)
    weights = (tmp_path / "checkpoint-6" / ckpt.WEIGHTS_NAME).read_bytes()
    _cut_in_half(tmp_path / "checkpoint-6" / ckpt.WEIGHTS_NAME)
    with caplog.at_level("WARNING", logger="tunetrain.checkpoint"):
        assert ckpt.find_latest_usable(tmp_path) == tmp_path / "checkpoint-4"
    (warning,) = caplog.messages
    assert re.match(
        rf"checkpoint '{tmp_path / 'checkpoint-6'}' cannot be resumed from: weights .* cannot be read: .*; it is "
        rf"kept, as checkpoint-6\.damaged, for you to look at; resuming from '{tmp_path / 'checkpoint-4'}' instead$",
        warning,
    )
    # moved aside whole, never deleted: no longer listed, rotated, or overwritten by a save of step 6
    kept = tmp_path / f"checkpoint-6{ckpt.DAMAGED_SUFFIX}"
    assert len((kept / ckpt.WEIGHTS_NAME).read_bytes()) == len(weights) // 2
    assert _names(ckpt.list_checkpoints(tmp_path)) == ["checkpoint-2", "checkpoint-4"]
    _save(tmp_path, 6)
    assert kept.is_dir() and ckpt.find_latest_usable(tmp_path) == tmp_path / "checkpoint-6"

    # damaged at step 6 again: the second copy is kept beside the first
    _cut_in_half(tmp_path / "checkpoint-6" / ckpt.OPTIMIZER_NAME)
    for path in ckpt.list_checkpoints(tmp_path):
        (path / ckpt.RNG_STATE_NAME).write_bytes(b"")
    caplog.clear()
    with caplog.at_level("WARNING", logger="tunetrain.checkpoint"):
        assert ckpt.find_latest_usable(tmp_path) is None
    assert len(caplog.messages) == 3
    assert all(
        m.endswith(f"no usable checkpoint is left in '{tmp_path}': the run starts from step 0") for m in caplog.messages
    )
    assert (tmp_path / f"checkpoint-6{ckpt.DAMAGED_SUFFIX}-2").is_dir()
    assert ckpt.find_latest_usable(tmp_path / "nowhere") is None


@pytest.mark.parametrize("name", [ckpt.OPTIMIZER_NAME, ckpt.SCHEDULER_NAME, ckpt.RNG_STATE_NAME])
@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_a_pickle_planted_in_a_checkpoint_is_refused_and_never_runs(tmp_path, name, how):
    import pickle

    path = _save(tmp_path, 3)
    marker = tmp_path / "marker"
    if how == "torch.save":  # the zip archive torch.save writes, holding an object that runs code when unpickled
        torch.save({"state": _Planted(marker), "param_groups": []}, path / name)
    else:
        (path / name).write_bytes(pickle.dumps(_Planted(marker)))
    with pytest.raises(CheckpointError) as checked:
        ckpt.check_checkpoint(path)
    _, optimizer, scheduler = _parts(seed=1)
    with pytest.raises(CheckpointError) as loaded:
        ckpt.load_training_state(
            path, optimizer=optimizer, scheduler=scheduler, scaler=None, device=torch.device("cpu")
        )
    assert not marker.exists()  # first: whatever the errors say, the planted object never ran
    refused = "holds objects other than tensors" if how == "torch.save" else "is damaged: not the zip archive"
    for err in (checked, loaded):
        assert f"'{path / name}' {refused}" in str(err.value)


def test_each_process_of_a_data_parallel_run_resumes_its_own_rng_states(tmp_path):
    torch.manual_seed(1)
    first = ckpt.rng_state()
    torch.manual_seed(2)
    second = ckpt.rng_state()
    model, optimizer, scheduler = _parts()
    path = ckpt.save_checkpoint(
        tmp_path, model=model, optimizer=optimizer, scheduler=scheduler, scaler=None,
        state=ckpt.TrainerState(global_step=1, num_processes=2), params={}, args={}, rng_states=[first, second],
    )  # fmt: skip
    assert (path / ckpt.rng_state_name(1)).name == "rng_state_1.pt"
    for index, expected in enumerate((first, second)):
        torch.manual_seed(99)
        ckpt.load_training_state(
            path, optimizer=optimizer, scheduler=scheduler, scaler=None, device=torch.device("cpu"),
            process_index=index,
        )  # fmt: skip
        assert torch.equal(torch.get_rng_state(), expected["torch"])
    # a process the checkpoint has no states of (it was saved by fewer processes) takes the main process's
    torch.manual_seed(99)
    ckpt.load_training_state(
        path, optimizer=optimizer, scheduler=scheduler, scaler=None, device=torch.device("cpu:0"), process_index=2
    )
    assert torch.equal(torch.get_rng_state(), first["torch"])
