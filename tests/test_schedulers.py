"""The pausing ASHA's decisions, driven by hand with stand-ins for Tune's trials and controller (no Ray started)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from fake_checkpoints import write_checkpoint

pytest.importorskip("ray.tune")

from ray.tune.experiment import Trial

from tunetrain.storage.layout import EXPLOIT_DIR, EXPLOIT_NAME
from tunetrain.tuning.pareto import rung_milestones, survives_rung
from tunetrain.tuning.ray.protocol import EVALUATION, METRICS, OBJECTIVE
from tunetrain.tuning.ray.schedulers import ParetoASHA, PromotingASHA
from tunetrain.tuning.ray.search_state import SearchState


class FakeTrial:
    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id
        self.status = Trial.RUNNING

    def set_status(self, status: str) -> None:
        self.status = status


class FakeController:
    def __init__(self, trials: list[FakeTrial]) -> None:
        self.trials = trials
        self.stopped: list[str] = []

    def get_trials(self) -> list[FakeTrial]:
        return self.trials

    def stop_trial(self, trial: FakeTrial) -> None:
        self.stopped.append(trial.trial_id)
        trial.status = Trial.TERMINATED


def _scheduler(num_samples: int = 4) -> PromotingASHA:
    return PromotingASHA(SearchState(), num_samples=num_samples, metric=OBJECTIVE, mode="max", max_t=9,
                         grace_period=1, reduction_factor=3)  # fmt: skip


def _report(scheduler, controller, trial, evaluation, value, **values):
    decision = scheduler.on_trial_result(
        controller, trial, {EVALUATION: evaluation, OBJECTIVE: value, METRICS: json.dumps(values)}
    )
    if decision == scheduler.PAUSE:
        trial.status = Trial.PAUSED
    return decision


def test_rungs_grow_by_the_reduction_factor_below_max_t():
    assert rung_milestones(1, 3, 9) == [1, 3]
    assert rung_milestones(2, 3, 30) == [2, 6, 18]
    assert rung_milestones(1, 2.5, 10) == [1, 3, 7]  # rounded up, never repeated
    assert rung_milestones(5, 3, 5) == []


def test_the_first_trials_wait_at_a_rung_and_the_best_goes_on_once_the_rung_can_tell():
    trials = [FakeTrial(f"t{i}") for i in range(4)]
    controller = FakeController(trials)
    scheduler = _scheduler()
    # alone at the rung, nobody is in its top third: the first trials pause instead of going on by default
    assert _report(scheduler, controller, trials[0], 1, 0.5) == scheduler.PAUSE
    assert _report(scheduler, controller, trials[1], 1, 0.7) == scheduler.PAUSE
    assert scheduler.search_state.paused == {"t0", "t1"}
    assert scheduler.choose_trial_to_run(controller) is None  # 2 at the rung: floor(2 / 3) = 0 promotable
    # a third arrives, better than both: it is the rung's top third and goes on at once
    assert _report(scheduler, controller, trials[2], 1, 0.9) == scheduler.CONTINUE
    # a fourth: the rung's top third is still one trial (floor(4 / 3)), promoted already
    assert _report(scheduler, controller, trials[3], 1, 0.8) == scheduler.PAUSE
    assert scheduler.choose_trial_to_run(controller) is None


def test_a_paused_trial_is_promoted_when_the_rung_grows_and_resumes_before_any_new_trial():
    trials = [FakeTrial(f"t{i}") for i in range(7)]
    controller = FakeController(trials[:6])
    scheduler = _scheduler(num_samples=7)
    for trial, value in zip(trials[:6], (0.9, 0.5, 0.1, 0.2, 0.3, 0.4), strict=True):
        assert _report(scheduler, controller, trial, 1, value) == scheduler.PAUSE  # never in the top third as it came
    # with 6 at the rung its top two (t0, t1) are promotable. t0 has held its place among the running since it
    # became promotable (3 at the rung): a trial pausing then hands its slot to t0, not to a new trial
    assert scheduler.search_state.paused == {"t1", "t2", "t3", "t4", "t5"}
    pending = trials[6]
    pending.status = Trial.PENDING
    controller.trials.append(pending)
    chosen = scheduler.choose_trial_to_run(controller)
    assert chosen is trials[0]  # the best paused trial of the rung, ahead of the pending new one
    assert "t0" not in scheduler.search_state.paused
    chosen.status = Trial.RUNNING
    assert scheduler.choose_trial_to_run(controller) is trials[1]  # 0.5: the second of floor(6 / 3) = 2
    trials[1].status = Trial.RUNNING
    assert scheduler.choose_trial_to_run(controller) is pending  # nothing else is promotable


def test_at_the_end_the_best_of_the_highest_rung_goes_on_to_max_t_and_the_rest_are_pruned():
    trials = [FakeTrial(f"t{i}") for i in range(3)]
    controller = FakeController(trials)
    scheduler = _scheduler(num_samples=3)
    _report(scheduler, controller, trials[0], 1, 0.5)
    assert scheduler.choose_trial_to_run(controller) is None
    assert controller.stopped == []  # others still run: they may yet change the rung
    _report(scheduler, controller, trials[1], 1, 0.6)
    _report(scheduler, controller, trials[2], 1, 0.4)  # 3 at rung 1: t1 is its top third, and t1 has paused
    assert scheduler.choose_trial_to_run(controller) is trials[1]
    trials[1].status = Trial.RUNNING
    assert _report(scheduler, controller, trials[1], 3, 0.7) == scheduler.PAUSE  # alone at rung 3
    # every trial has started and nothing runs: rung 3's best (the only one) goes on to max_t, rather than nobody
    assert scheduler.choose_trial_to_run(controller) is trials[1]
    trials[1].status = Trial.RUNNING
    assert _report(scheduler, controller, trials[1], 9, 0.8) == scheduler.STOP
    trials[1].status = Trial.TERMINATED
    assert scheduler.choose_trial_to_run(controller) is None
    assert sorted(controller.stopped) == ["t0", "t2"]
    assert scheduler.search_state.stopped_early == {"t0", "t2"}


def test_a_trials_last_report_and_the_last_rung_never_pause_it():
    trial = FakeTrial("t0")
    controller = FakeController([trial])
    scheduler = _scheduler()
    assert _report(scheduler, controller, trial, 1, 0.5, last=True) == scheduler.CONTINUE  # it ends by itself
    assert _report(scheduler, controller, FakeTrial("t1"), 9, 0.5) == scheduler.STOP  # max_t


def test_a_restored_search_takes_its_rungs_up_from_the_history():
    rows = [
        {"trial_id": "a", "evaluation": 1, "metric": 0.9},
        {"trial_id": "a", "evaluation": 2, "metric": 0.95},  # promoted from rung 1
        {"trial_id": "b", "evaluation": 1, "metric": 0.5},  # waits at rung 1
        {"trial_id": "c", "evaluation": 1, "metric": 0.6},  # ended (pruned): not waiting
        {"trial_id": "d", "evaluation": 1, "metric": 0.7},
    ]
    scheduler = _scheduler(num_samples=6)
    scheduler.take_up_history(rows, running={"a", "b", "d"})
    assert scheduler.search_state.paused == {"b", "d"}
    trials = {name: FakeTrial(name) for name in "abcd"}
    controller = FakeController(list(trials.values()))
    for name in "abd":  # Ray restores every unfinished trial as PENDING, and would start them all
        trials[name].status = Trial.PENDING
        scheduler.on_trial_add(controller, trials[name])
    assert [trials[name].status for name in "abd"] == [Trial.PENDING, Trial.PAUSED, Trial.PAUSED]
    trials["a"].status = Trial.RUNNING
    trials["c"].status = Trial.TERMINATED
    # 4 at rung 1: one promotable, and a (0.9) has it already: nobody is resumed
    assert scheduler.choose_trial_to_run(controller) is None
    more = FakeTrial("e")
    controller.trials.append(more)
    _report(scheduler, controller, more, 1, 0.1)  # 5 at the rung: still one
    sixth = FakeTrial("f")
    controller.trials.append(sixth)
    _report(scheduler, controller, sixth, 1, 0.2)  # 6: two; d (0.7) is the next best
    assert scheduler.choose_trial_to_run(controller) is trials["d"]


def test_a_promotion_a_better_arrival_takes_back_holds_no_slot():
    trials = [FakeTrial(f"t{i}") for i in range(4)]
    controller = FakeController(trials)
    scheduler = _scheduler(num_samples=9)
    for trial, value in zip(trials[:3], (0.5, 0.4, 0.3), strict=True):
        _report(scheduler, controller, trial, 1, value)
    assert scheduler.search_state.paused == {"t1", "t2"}  # t0, the rung's best of 3, is to be promoted
    assert _report(scheduler, controller, trials[3], 1, 0.9) == scheduler.CONTINUE  # the best of 4 now: promoted
    assert scheduler.search_state.paused == {"t0", "t1", "t2"}  # t0 waits again, and holds no slot
    assert scheduler.choose_trial_to_run(controller) is None


# --- PBT -----------------------------------------------------------------------------------------------------------


class FakePBTTrial(FakeTrial):
    def __init__(self, trial_id: str, config: dict) -> None:
        super().__init__(trial_id)
        self.config = dict(config)
        self.experiment_tag = trial_id

    def is_finished(self) -> bool:
        return self.status in (Trial.TERMINATED, Trial.ERROR)

    def set_config(self, config: dict) -> None:
        self.config = dict(config)


class FakePBTController(FakeController):
    def get_live_trials(self) -> list[FakeTrial]:
        return [t for t in self.trials if not t.is_finished()]

    def pause_trial(self, trial: FakeTrial, should_checkpoint: bool = True) -> None:
        trial.status = Trial.PAUSED


def _pbt(tmp_path, **options):
    from tunetrain.space import SearchSpace
    from tunetrain.storage import ExperimentDir
    from tunetrain.tuning.ray.schedulers import ExactPBT

    space = SearchSpace.from_mapping({"learning_rate": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True}})
    settings = dict(perturbation_interval=2, burn_in_period=0, quantile_fraction=0.25, resample_probability=0.0)
    settings.update(options)
    exp_dir = ExperimentDir.open(str(tmp_path), "x")
    return ExactPBT(SearchState(), space=space, mutations=("learning_rate",), exp_dir=exp_dir, mode="max", seed=0,
                    **settings)  # fmt: skip


def _pbt_report(scheduler, controller, trial, evaluation, value, **values):
    from tunetrain.tuning.ray.protocol import CURRENT

    result = {EVALUATION: evaluation, OBJECTIVE: value, CURRENT: value, METRICS: json.dumps(values)}
    return scheduler.on_trial_result(controller, trial, result)


def test_pbt_has_the_bottom_trial_take_a_top_trials_checkpoint_with_perturbed_params(tmp_path):
    scheduler = _pbt(tmp_path)
    trials = [FakePBTTrial(f"t{i}", {"learning_rate": 0.01 * (i + 1)}) for i in range(4)]
    controller = FakePBTController(trials)
    for trial in trials:
        scheduler.on_trial_add(controller, trial)
        trial_dir = Path(scheduler.exp_dir.trial_path(trial.trial_id))
        write_checkpoint(trial_dir, 10)
        write_checkpoint(trial_dir, 20, best=10 if trial.trial_id == "t3" else 20)
    for trial, value in zip(trials, (0.2, 0.5, 0.6, 0.9), strict=True):
        assert _pbt_report(scheduler, controller, trial, 2, value) == scheduler.CONTINUE
    # t0 reported first, alone ranked: nothing to compare with; t1..t3 likewise grow the ranking; then t0 again
    assert _pbt_report(scheduler, controller, trials[0], 4, 0.2) == scheduler.NOOP
    assert trials[0].status == Trial.PAUSED
    assert trials[0].config["learning_rate"] in (pytest.approx(0.04 * 1.2), pytest.approx(0.04 * 0.8))
    pending = Path(scheduler.exp_dir.trial_path("t0")) / EXPLOIT_DIR
    decided = json.loads((pending / EXPLOIT_NAME).read_text())
    assert decided["checkpoints"] == ["checkpoint-20", "checkpoint-10"]  # the donor's latest and its best
    assert decided["lineage"]["segments"][-1]["parent"] == "t3"
    assert decided["lineage"]["exploits"] == [{"trial_id": "t3", "step": 20, "evaluation": 4}]
    assert "t0" in scheduler.search_state.paused


def test_pbt_never_perturbs_a_trials_last_report(tmp_path):
    scheduler = _pbt(tmp_path)
    trials = [FakePBTTrial(f"t{i}", {"learning_rate": 0.01}) for i in range(4)]
    controller = FakePBTController(trials)
    for trial, value in zip(trials, (0.2, 0.5, 0.6, 0.9), strict=True):
        scheduler.on_trial_add(controller, trial)
        _pbt_report(scheduler, controller, trial, 2, value)
    assert _pbt_report(scheduler, controller, trials[0], 4, 0.1, last=True) == scheduler.CONTINUE
    assert trials[0].status == Trial.RUNNING and not list(tmp_path.rglob(EXPLOIT_DIR))


# --- ParetoASHA: successive halving on several objectives -----------------------------------------------------


def _pareto_report(scheduler, trial, evaluation, accuracy, parameters, **values):
    result = {EVALUATION: evaluation, OBJECTIVE: accuracy, "objective_2": parameters, METRICS: json.dumps(values)}
    return scheduler.on_trial_result(FakeController([trial]), trial, result)


def _pareto_asha(state: SearchState | None = None) -> ParetoASHA:
    return ParetoASHA(state or SearchState(), metrics=("eval_accuracy", "eval_num_parameters"), modes=("max", "min"),
                      max_t=9, grace_period=1, reduction_factor=3)  # fmt: skip


def test_pareto_asha_stops_at_a_rung_by_the_shared_rule_and_records_it_as_early_stopped():
    state = SearchState()
    scheduler = _pareto_asha(state)
    assert scheduler.rungs == [1, 3]
    arrivals = [(0.5, 100), (0.4, 200), (0.6, 300), (0.3, 50), (0.45, 150), (0.2, 400)]
    decisions = [_pareto_report(scheduler, FakeTrial(f"t{i}"), 1, *values) for i, values in enumerate(arrivals)]
    expected = [
        ParetoASHA.CONTINUE if survives_rung(i, arrivals[: i + 1], ("max", "min"), 3) else ParetoASHA.STOP
        for i in range(len(arrivals))
    ]
    assert decisions == expected  # the Optuna backend's pruner makes the same ones (test_pareto.py)
    assert ParetoASHA.STOP in decisions and decisions[0] == ParetoASHA.CONTINUE
    assert state.stopped_early == {f"t{i}" for i, d in enumerate(decisions) if d == ParetoASHA.STOP}


def test_pareto_asha_judges_a_trial_once_a_rung_ends_every_trial_at_max_t_and_lets_a_last_report_be():
    state = SearchState()
    scheduler = _pareto_asha(state)
    leader, other = FakeTrial("a"), FakeTrial("b")
    assert _pareto_report(scheduler, leader, 1, 0.9, 10) == ParetoASHA.CONTINUE
    assert _pareto_report(scheduler, leader, 1, 0.1, 10_000) == ParetoASHA.CONTINUE  # resumed: judged already
    assert _pareto_report(scheduler, leader, 2, 0.9, 10) == ParetoASHA.CONTINUE  # no rung at 2
    assert _pareto_report(scheduler, other, 1, 0.1, 1000, last=True) == ParetoASHA.CONTINUE  # ends by itself
    assert _pareto_report(scheduler, leader, 9, 0.95, 10) == ParetoASHA.STOP  # max_t: completed, not pruned
    assert state.stopped_early == set()
    error = {EVALUATION: 1, METRICS: json.dumps({"error": "diverged"})}
    assert scheduler.on_trial_result(FakeController([]), FakeTrial("c"), error) == ParetoASHA.CONTINUE


def test_a_restored_pareto_asha_takes_its_rungs_up_from_the_history():
    scheduler = _pareto_asha()
    rows = [
        {"trial_id": "a", "evaluation": 1, "metrics": json.dumps({"eval_accuracy": 0.9, "eval_num_parameters": 10})},
        {"trial_id": "a", "evaluation": 2, "metrics": json.dumps({"eval_accuracy": 0.8, "eval_num_parameters": 10})},
        {"trial_id": "a", "evaluation": 3, "metrics": json.dumps({"eval_accuracy": 0.85, "eval_num_parameters": 10})},
        {"trial_id": "b", "evaluation": 1, "metrics": json.dumps({"eval_accuracy": 0.5, "eval_num_parameters": 5})},
    ]
    scheduler.take_up_history(rows)
    # rung 3 holds a's best so far by accuracy (0.9 at evaluation 1), not its value at evaluation 3
    assert scheduler._values == {1: {"a": [0.9, 10], "b": [0.5, 5]}, 3: {"a": [0.9, 10]}}
    assert _pareto_report(scheduler, FakeTrial("c"), 1, 0.1, 100) == ParetoASHA.STOP  # 3 at the rung: keep 1
    restored = pickle.loads(pickle.dumps(scheduler))
    assert restored._values == {1: {}, 3: {}}  # Ray's pickle starts empty: the backend calls take_up_history
