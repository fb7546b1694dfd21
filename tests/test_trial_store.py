"""A Ray trial's checkpoints in remote storage (a pyarrow filesystem): copied up as saved, rotated there as locally,
copied back down by a restarted trial, which resumes from them. No Ray session: the store is plain file work."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from pyarrow import fs

from tunetrain import Trainer, TrainingArguments
from tunetrain import checkpoint as ckpt
from tunetrain.reporting import Reporter
from tunetrain.tuning import config as search_config
from tunetrain.tuning import ray as backend


class _Persist(Reporter):
    def __init__(self, store: backend._TrialStore) -> None:
        self.store = store

    def on_evaluate(self, metrics, state, control, checkpoint) -> None:
        self.store.persist(checkpoint)


def _remote_checkpoints(filesystem: fs.FileSystem, path: str) -> dict[str, bool]:
    """checkpoint name -> whether it is complete (its trainer_state.json is there)."""
    found = filesystem.get_file_info(fs.FileSelector(path, allow_not_found=True))
    names = [info.base_name for info in found if ckpt.checkpoint_step(info.base_name) is not None]
    return {
        name: filesystem.get_file_info(f"{path}/{name}/{ckpt.TRAINER_STATE_NAME}").type == fs.FileType.File
        for name in names
    }


def test_checkpoints_on_remote_storage_are_mirrored_and_resumed_from(tmp_path, monkeypatch, tiny_task):
    # a filesystem that is not a LocalFileSystem takes the remote path, as s3:// does
    remote = fs.SubTreeFileSystem(str(tmp_path / "bucket"), fs.LocalFileSystem())
    (tmp_path / "bucket").mkdir()
    monkeypatch.setattr(search_config, "resolve_storage", lambda storage: (remote, "runs"))
    spec = SimpleNamespace(exp_path="runs/exp", local=False, config=SimpleNamespace(storage="s3://bucket/runs"))

    store = backend._TrialStore(spec, "abc123")
    assert store.latest() is None and not store.ended()
    args = TrainingArguments(
        output_dir=store.output_dir, num_train_epochs=2, per_device_train_batch_size=16, eval_strategy="steps",
        eval_steps=5, save_steps=5, save_total_limit=2, metric_for_best_model="accuracy", logging_strategy="no",
        report_to="none", disable_tqdm=True,
    )  # fmt: skip
    first = Trainer(tiny_task, args, reporters=[_Persist(store)], console=False)
    first.train()
    local = sorted(p.name for p in ckpt.list_checkpoints(store.output_dir))
    mirrored = _remote_checkpoints(remote, store.path)
    assert sorted(mirrored) == local and all(mirrored.values())  # the rotation is mirrored, every copy complete
    assert "checkpoint-30" in local
    best = first.state.best_model_checkpoint.rsplit("/", 1)[-1]
    assert store.location(first.state.best_model_checkpoint) == f"s3://runs/exp/trials/abc123/{best}"
    store.close()
    assert not Path(store.output_dir).exists()  # the local scratch copy is gone

    # a checkpoint copied up only in part (no trainer_state.json) is not resumed from
    remote.create_dir(f"{store.path}/checkpoint-35")
    remote.copy_file(f"{store.path}/checkpoint-30/model.safetensors", f"{store.path}/checkpoint-35/model.safetensors")

    restarted = backend._TrialStore(spec, "abc123")
    latest = restarted.latest()
    assert latest is not None and latest.endswith("checkpoint-30") and latest.startswith(restarted.output_dir)
    # every complete checkpoint came down (the best too), so the local rotation sees what the bucket holds
    assert sorted(p.name for p in ckpt.list_checkpoints(restarted.output_dir)) == local
    longer = args.replace(output_dir=restarted.output_dir, num_train_epochs=3)
    second = Trainer(tiny_task, longer, reporters=[_Persist(restarted)], console=False)
    output = second.train(resume_from_checkpoint=latest)
    assert output.global_step == 45 and output.metrics["train_samples"] == 15 * 16  # only the third epoch
    resumed = _remote_checkpoints(remote, restarted.path)
    assert "checkpoint-45" in resumed and all(resumed.values())
    assert Path(second.state.best_model_checkpoint).name in resumed  # the best survived the mirrored rotation
    restarted.close()

    backend._write_ended(remote, restarted.path, "completed")
    assert backend._TrialStore(spec, "abc123").ended()
    assert backend._ended_status(remote, restarted.path) == "completed"
