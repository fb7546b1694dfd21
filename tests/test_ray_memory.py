"""What the Ray driver keeps per trial (`tunetrain.tuning.ray.driver`): an ended trial trimmed to what Ray reads
back; the journal mirror looking only at what changed."""

from __future__ import annotations

import json
import pickle

import optuna
import pytest
from ray.train import Checkpoint
from ray.train._internal.session import _TrainingResult
from ray.train._internal.storage import StorageContext
from ray.tune.execution.placement_groups import PlacementGroupFactory
from ray.tune.experiment import Trial

from tunetrain.space import SearchSpace
from tunetrain.tuning.ray.driver import PrunedAwareOptunaSearch, trim_ended
from tunetrain.tuning.ray.search_state import SearchState

SPACE = SearchSpace.from_mapping({"x": {"type": "float", "low": 0.0, "high": 1.0}})


def _ended_trial(tmp_path) -> Trial:
    """A trial as Ray's controller holds it after three reports, a token checkpoint with the last."""
    storage = StorageContext(storage_path=str(tmp_path), experiment_dir_name="exp")
    trial = Trial("run_trial", stub=True, config={"x": 0.5}, storage=storage, trial_id="t0",
                  placement_group_factory=PlacementGroupFactory([{"CPU": 1}]))  # fmt: skip
    trial.create_placement_group_factory()  # as Ray's controller does when it adds the trial
    for evaluation in (1, 2, 3):
        trial.update_last_result({
            "objective": 0.5 + evaluation, "objective_2": 1.0, "current": 0.25, "evaluation": evaluation,
            "metrics": json.dumps({"eval_accuracy": 0.5, "step": evaluation}), "training_iteration": evaluation,
            "time_total_s": 1.5 * evaluation, "time_this_iter_s": 1.5, "timestamp": 100 + evaluation,
            "config": {"x": 0.5}, "date": "2026-11-30", "hostname": "h", "node_ip": "127.0.0.1", "pid": 1,
            "done": evaluation == 3, "trial_id": "t0",
        })  # fmt: skip
    token = tmp_path / "token"
    token.mkdir()
    trial.on_checkpoint(_TrainingResult(Checkpoint.from_directory(str(token)), dict(trial.last_result)))
    return trial


def _restored(trial: Trial) -> Trial:
    """The trial as a restore reads it back from Ray's snapshot of the experiment (`TuneController._restore_trials`)."""
    state, run_metadata = trial.get_json_state()
    restored = Trial.from_json_state(state, stub=True)
    restored.restore_run_metadata(run_metadata)
    return restored


def test_an_ended_trial_keeps_what_ray_reads_back_and_drops_the_rest(tmp_path):
    trial = _ended_trial(tmp_path)
    before = sum(map(len, trial.get_json_state()))  # cached by Ray: trimming must drop that cache
    trial._default_result_or_future = {"pid": 1}  # what the trial's actor said of itself (an ObjectRef until read)
    trim_ended(trial, runs_again=False)
    trial.set_status(Trial.TERMINATED)

    kept = {"objective", "objective_2", "current", "evaluation", "training_iteration", "time_total_s", "timestamp",
            "done", "trial_id"}  # fmt: skip
    assert set(trial.last_result) == kept and trial.last_result["objective"] == 3.5
    assert trial.run_metadata.metric_analysis == {} and trial.run_metadata.metric_n_steps == {}
    assert trial._default_result_or_future is None
    assert set(trial.run_metadata.checkpoint_manager.latest_checkpoint_result.metrics) == kept
    assert sum(map(len, trial.get_json_state())) < before / 2

    restored = _restored(trial)  # what Ray's snapshot holds of it, and a restore needs
    assert (restored.status, restored.trial_id, restored.config) == (Trial.TERMINATED, "t0", {"x": 0.5})
    assert restored.last_result == trial.last_result
    assert restored.checkpoint.path == str(tmp_path / "token")
    assert restored.run_metadata.last_result_time == trial.run_metadata.last_result_time  # the order Ray resumes in


def test_a_trial_that_runs_again_keeps_the_metrics_ray_restores_its_counters_from(tmp_path):
    trial = _ended_trial(tmp_path)
    metrics = dict(trial.run_metadata.checkpoint_manager.latest_checkpoint_result.metrics)
    trim_ended(trial, runs_again=True)  # an errored trial: a resume runs it again from its checkpoint
    trial.set_status(Trial.ERROR)
    assert "metrics" not in trial.last_result and trial.run_metadata.metric_analysis == {}
    restored = _restored(trial)
    assert restored.run_metadata.checkpoint_manager.latest_checkpoint_result.metrics == metrics
    assert restored.checkpoint.path == str(tmp_path / "token")


def _searcher(**options) -> PrunedAwareOptunaSearch:
    return PrunedAwareOptunaSearch(
        SearchState(), space=SPACE.define_by_run, metric="objective", mode="max",
        sampler=optuna.samplers.RandomSampler(seed=0), **options,
    )  # fmt: skip


@pytest.mark.parametrize("restored_from", ["this version", "a version without the open set"])
def test_the_journal_mirror_catches_up_on_every_trial_that_changed(tmp_path, restored_from):
    searcher = _searcher(journal=(str(tmp_path), "mirror"))
    for trial_id in ("a", "b", "c"):
        searcher.suggest(trial_id)
        searcher.on_trial_result(trial_id, {"objective": 0.5, "evaluation": 1})
    searcher.on_trial_complete("a", {"objective": 0.7, "evaluation": 1})
    searcher.mirror(force=True)
    saved = tmp_path / "searcher.pkl"
    searcher.save(str(saved))
    if restored_from != "this version":
        state = pickle.loads(saved.read_bytes())
        del state["_open"]
        saved.write_bytes(pickle.dumps(state))
    searcher = _searcher(journal=(str(tmp_path), "mirror"))
    searcher.restore(str(saved))
    searcher.on_trial_result("b", {"objective": 0.6, "evaluation": 2})
    searcher.on_trial_complete("b", {"objective": 0.6, "evaluation": 2})
    searcher.suggest("d")
    searcher.mirror(force=True)

    from tunetrain.tuning.optuna import journal_storage

    journal = optuna.load_study(study_name="mirror", storage=journal_storage(str(tmp_path))).trials
    study = searcher._ot_study.trials
    assert [(t.state, t.intermediate_values) for t in journal] == [(t.state, t.intermediate_values) for t in study]
    assert [t.state.name for t in journal] == ["COMPLETE", "COMPLETE", "RUNNING", "RUNNING"]
