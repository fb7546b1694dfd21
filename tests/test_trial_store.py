"""A Ray trial's checkpoints in remote storage (a pyarrow filesystem): copied up as saved, rotated there as locally,
copied back down by a restarted trial, which resumes from them. No Ray session: the store is plain file work."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
from pyarrow import fs

from tunetrain import Trainer, TrainingArguments
from tunetrain import checkpoint as ckpt
from tunetrain.reporting import Reporter
from tunetrain.results import ResultsBook, read_history, read_results
from tunetrain.storage import ExperimentDir
from tunetrain.storage.layout import TOKEN_NAME
from tunetrain.tuning.ray import protocol, state, worker


class _Persist(Reporter):
    def __init__(self, store: worker.TrialStore) -> None:
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
    monkeypatch.setattr(worker, "resolve_storage", lambda storage: (remote, "runs"))
    spec = SimpleNamespace(exp_path="runs/exp", local=False, config=SimpleNamespace(storage="s3://bucket/runs"))

    store = worker.TrialStore(spec, "abc123")
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

    restarted = worker.TrialStore(spec, "abc123")
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

    final = {"record": {"trial_id": "abc123", "status": "completed"}, "history": []}
    protocol.write_ended(remote, restarted.path, final)
    assert worker.TrialStore(spec, "abc123").ended()
    assert protocol.read_ended(remote, restarted.path) == final


def test_tokens_ray_deleted_before_its_last_snapshot_are_put_back_on_resume(tmp_path):
    remote = fs.SubTreeFileSystem(str(tmp_path / "bucket"), fs.LocalFileSystem())
    (tmp_path / "bucket" / "runs" / "exp").mkdir(parents=True)
    # trial a: tokens 0 and 1 deleted, 2 left (its snapshot may point to 0 or 1); b: nothing missing; c: none yet
    for name in ("trial_a/checkpoint_000002", "trial_b/checkpoint_000000", "trial_c", "trials/a/checkpoint-15"):
        remote.create_dir(f"runs/exp/{name}")
    exp_dir = ExperimentDir(remote, "runs/exp", "s3://runs/exp")

    state.mend_tokens(exp_dir)

    def listing(path: str) -> list[str]:
        return sorted(info.base_name for info in remote.get_file_info(fs.FileSelector(f"runs/exp/{path}")))

    assert listing("trial_a") == ["checkpoint_000000", "checkpoint_000001", "checkpoint_000002"]
    with remote.open_input_stream(f"runs/exp/trial_a/checkpoint_000001/{TOKEN_NAME}") as token:
        assert json.loads(token.read()) == {"trial_dir": "runs/exp/trials/a"}
    assert listing("trial_b") == ["checkpoint_000000"]
    assert listing("trial_c") == []
    assert listing("trials/a") == ["checkpoint-15"]  # the trial's own checkpoints are not Ray's tokens


def test_a_run_resumed_at_its_end_reports_its_last_evaluation_and_the_earlier_ones(monkeypatch):
    # the driver was killed after the trial's last checkpoint was saved, before it heard of the evaluation: the
    # resumed run trains nothing, and would otherwise end without a report (its record stuck at what the driver had)
    reports = []
    monkeypatch.setattr(worker.tune, "report", lambda report, checkpoint=None: reports.append((report, checkpoint)))
    store = SimpleNamespace(path="runs/exp/trials/t1", location=lambda c: f"s3://{c}", persist=lambda c: None)
    reporter = worker.TuneReporter("eval_accuracy", store)
    history = [{"loss": 1.0, "step": 5}] + [
        {"eval_accuracy": 0.1 * n, "eval_loss": 2.0 - n, "epoch": float(n), "step": 15 * n} for n in (1, 2, 3, 4)
    ]
    state = ckpt.TrainerState(global_step=60, max_steps=60, epoch=4.0, num_evaluations=4, log_history=history)
    state.best_metric, state.best_model_checkpoint = 0.4, "runs/exp/trials/t1/checkpoint-60"

    reporter.report_if_silent(state)
    reporter.report_if_silent(state)  # once only

    (report, token), *more = reports
    assert not more and token is not None  # the last report of a run carries Ray's token
    values = json.loads(report[protocol.METRICS])
    assert (report[protocol.EVALUATION], report[protocol.OBJECTIVE]) == (4, 0.4)
    assert (values["evaluation"], values["step"], values["eval_accuracy"]) == (4, 60, 0.4)
    assert values["best_checkpoint"] == "s3://runs/exp/trials/t1/checkpoint-60"
    assert [(e["evaluation"], e["step"], e["eval_loss"]) for e in values["earlier"]] == [(1, 15, 1.0), (2, 30, 0.0),
                                                                                        (3, 45, -1.0)]  # fmt: skip


def test_a_trial_s_final_record_comes_back_whole_through_its_ended_json(tmp_path):
    # the driver that saw the trial end wrote ended.json, then was killed before results.parquet caught up
    (tmp_path / "seen").mkdir()
    seen = ResultsBook(str(tmp_path / "seen"), metric="eval_accuracy", mode="max", min_interval_s=3600)
    seen.start("t1", 0, {"hidden": 8})
    for evaluation, value in enumerate([0.2, float("nan"), 0.5, 0.4], start=1):
        seen.report("t1", {"eval_accuracy": value, "evaluation": evaluation, "step": 15 * evaluation})
    local = fs.LocalFileSystem()
    protocol.write_ended(local, str(tmp_path / "t1"), seen.final_record("t1", "completed"))

    (tmp_path / "stale").mkdir()  # the search makes the experiment dir before its ResultsBook
    stale = ResultsBook(str(tmp_path / "stale"), metric="eval_accuracy", mode="max", min_interval_s=0)
    stale.start("t1", 0, {"hidden": 8})
    stale.report("t1", {"eval_accuracy": 0.2, "evaluation": 1, "step": 15})
    stale.restore(protocol.read_ended(local, str(tmp_path / "t1")))

    (record,) = read_results(tmp_path / "stale").trials
    assert (record.status, record.evaluations, record.best_metric, record.best_step) == ("completed", 4, 0.5, 45)
    assert record.params == {"hidden": 8} and record.ended_at is not None and stale.last_evaluation("t1") == 4
    history = read_history(tmp_path / "stale")
    assert [row["evaluation"] for row in history] == [1, 2, 3, 4] and math.isnan(history[1]["metric"])


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b'{"record": {"status": "comp', "is damaged"), (b'["a list"]', "is not what tunetrain writes there")],
    ids=["cut short", "not ours"],
)
def test_an_ended_json_that_cannot_be_read_is_named_and_the_trial_resumes(tmp_path, caplog, content, reason):
    trial = tmp_path / "trials" / "t1"
    trial.mkdir(parents=True)
    (trial / "ended.json").write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="tunetrain"):
        assert protocol.read_ended(fs.LocalFileSystem(), str(trial)) is None
    assert f"{str(trial / 'ended.json')!r} {reason}" in caplog.text
    assert "the trial is taken as not ended: it resumes from its latest checkpoint" in caplog.text
    assert protocol.read_ended(fs.LocalFileSystem(), str(tmp_path / "trials" / "t2")) is None  # none: no warning
    assert caplog.text.count("taken as not ended") == 1


def test_ends_a_killed_driver_had_not_written_are_taken_up_from_the_trials_dirs(tmp_path):
    """A trial's end goes into the results with the next timed write, after its ended.json: a driver killed in
    between leaves results that show it running, or (started and ended since the last write) not at all. Both come
    back from the trial's dir before a resumed search reads the results; a trial that has not ended stays running."""
    from tunetrain.tuning.ray.driver import take_up_ends_on_disk

    exp_dir = ExperimentDir.open(str(tmp_path), "exp")
    Path(exp_dir.path).mkdir(parents=True)
    local = fs.LocalFileSystem()
    seen = ResultsBook(exp_dir.path, metric="eval_accuracy", mode="max", min_interval_s=3600)
    for number, trial_id in enumerate(["written", "unwritten", "training"]):
        seen.start(trial_id, number, {"hidden": 8 + number})
        seen.report(trial_id, {"eval_accuracy": 0.1 * (number + 1), "evaluation": 1, "step": 15})
        if trial_id == "written":
            seen.flush(force=True)  # the last write: "written" running, the other two not in the files yet
    for trial_id, status in (("written", "completed"), ("unwritten", "pruned")):
        protocol.write_ended(local, exp_dir.trial_path(trial_id), seen.final_record(trial_id, status))
    Path(exp_dir.trial_path("training")).mkdir(parents=True)  # started, no end: its dir has checkpoints only
    assert [(t.trial_id, t.status) for t in read_results(exp_dir.path).trials] == [("written", "running")]

    take_up_ends_on_disk(exp_dir, metric="eval_accuracy", mode="max")

    trials = {t.trial_id: t for t in read_results(exp_dir.path).trials}
    assert {k: t.status for k, t in trials.items()} == {"written": "completed", "unwritten": "pruned"}
    assert trials["unwritten"].params == {"hidden": 9} and trials["unwritten"].best_metric == 0.2
    assert sorted((row["trial_id"], row["evaluation"]) for row in read_history(exp_dir.path)) == [
        ("unwritten", 1),
        ("written", 1),
    ]
    # an ended.json that names another trial (a copied dir) is not taken for this one
    protocol.write_ended(local, exp_dir.trial_path("copy"), seen.final_record("written", "completed"))
    take_up_ends_on_disk(exp_dir, metric="eval_accuracy", mode="max")
    assert "copy" not in {t.trial_id for t in read_results(exp_dir.path).trials}
