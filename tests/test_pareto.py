"""The rule that compares trials on several objectives (tunetrain.tuning.pareto), on hand-made fronts; and the Optuna
backend's pruner that applies it (tunetrain.tuning.pareto_pruner) on an in-memory study."""

from __future__ import annotations

import itertools
import math
import random
from types import SimpleNamespace

import optuna
import pytest

from tunetrain.errors import ConfigError
from tunetrain.tuning.pareto import (
    crowding_distances,
    dominates,
    hypervolume,
    nondominated_fronts,
    objective_values,
    pareto_front,
    rank,
    reference_point,
    running_objectives,
    survives_rung,
)
from tunetrain.tuning.pareto_pruner import ParetoHalvingPruner
from tunetrain.tuning.trial import check_objectives

MAX_MIN = ("max", "min")  # accuracy up, parameters down
NAN = math.nan


def test_domination_follows_each_objective_s_direction():
    assert dominates([0.9, 100], [0.8, 200], MAX_MIN)
    assert not dominates([0.9, 300], [0.8, 200], MAX_MIN)  # a trade-off
    assert not dominates([0.9, 100], [0.9, 100], MAX_MIN)  # equal: neither
    assert dominates([0.9, 100], [0.9, 200], MAX_MIN)  # as good in one, better in the other


def test_fronts_are_layers_of_non_domination():
    vectors = [[0.9, 500], [0.8, 100], [0.85, 400], [0.7, 600], [0.6, 50], [0.75, 450]]
    # 0, 1, 4 trade off; 2 is dominated by 0 only (0.9 > 0.85 with more params: no, 500 > 400), so check by hand:
    # 0 (0.9, 500): nobody better on both. 1 (0.8, 100): nobody. 4 (0.6, 50): nobody. 2 (0.85, 400): nobody has
    # >= 0.85 with <= 400 params -> front 1. 3 (0.7, 600): dominated by 0, 1, 2. 5 (0.75, 450): dominated by 2.
    fronts = nondominated_fronts(vectors, MAX_MIN)
    assert fronts == [[0, 1, 2, 4], [5], [3]]
    assert pareto_front(vectors, MAX_MIN) == [0, 1, 2, 4]


def test_unusable_vectors_rank_last_and_are_never_on_the_front():
    vectors = [[NAN, 10], [0.5, 100], [0.9, math.inf], [0.4, None], [0.3, 200]]
    assert pareto_front(vectors, MAX_MIN) == [1]
    assert rank(vectors, MAX_MIN) == [1, 4, 0, 2, 3]  # the unusable ones after, in arrival order
    assert not survives_rung(0, vectors[:1], MAX_MIN, 3)  # a NaN never goes on, even alone at a rung


def test_a_rung_keeps_the_top_third_by_front_then_crowding():
    # nine trials at a rung, reduction factor 3: three go on
    vectors = [[0.90, 900], [0.50, 10], [0.70, 200], [0.60, 300], [0.65, 150], [0.40, 800], [0.80, 400],
               [0.30, 50], [0.55, 120]]  # fmt: skip
    order = rank(vectors, MAX_MIN)
    # front: 0 (0.9, 900), 1 (0.5, 10), 2 (0.7, 200), 4 (0.65, 150), 6 (0.8, 400), 8 (0.55, 120); extremes 0 and 1
    # have an infinite crowding distance and come first, in arrival order
    assert order[:2] == [0, 1]
    assert set(order[:6]) == {0, 1, 2, 4, 6, 8}
    kept = [i for i in range(9) if survives_rung(i, vectors, MAX_MIN, 3)]
    assert kept == sorted(order[:3]) and len(kept) == 3
    assert 5 not in kept and 3 not in kept  # dominated trials never beat a front one


def test_the_first_trial_at_a_rung_goes_on_and_the_keep_never_drops_to_zero():
    assert survives_rung(0, [[0.1, 1e6]], MAX_MIN, 3)
    two = [[0.5, 100], [0.4, 200]]  # 2 // 3 = 0 -> keep 1: the dominating one
    assert survives_rung(0, two, MAX_MIN, 3) and not survives_rung(1, two, MAX_MIN, 3)


def test_ties_share_a_front_and_go_to_the_newcomer_at_a_rung():
    vectors = [[0.5, 100], [0.5, 100], [0.5, 100], [0.5, 100]]
    assert nondominated_fronts(vectors, MAX_MIN) == [[0, 1, 2, 3]]
    assert rank(vectors, MAX_MIN) == [0, 1, 2, 3]  # for display, arrival breaks the tie
    # nobody ranks strictly ahead of an equal: each goes on, as a tie goes on under ASHA
    assert [survives_rung(i, vectors, MAX_MIN, 2) for i in range(4)] == [True] * 4
    # the first trial at an end of the front does not shut out a later one holding that end better: both ends have
    # an infinite crowding distance
    assert survives_rung(1, [[0.5, 100], [0.9, 5000]], MAX_MIN, 3)
    assert survives_rung(2, [[0.5, 100], [0.9, 5000], [0.95, 9000]], MAX_MIN, 3)
    assert not survives_rung(2, [[0.5, 100], [0.9, 5000], [0.7, 3000]], MAX_MIN, 3)  # the middle: two ahead


def test_trials_on_one_trade_off_curve_go_on_by_their_spread():
    # sixteen arrivals, none dominated: the ends always go on, a middle one only when few are ahead of it
    curve = [[0.5 + 0.03 * k, 100 * 1.5**k] for k in range(16)]
    order = [5, 12, 0, 15, 8, 3, 10, 1, 14, 6, 9, 2, 13, 4, 11, 7]
    seen, kept = [], []
    for k in order:
        seen.append(curve[k])
        kept.append(survives_rung(len(seen) - 1, seen, MAX_MIN, 3))
    assert kept[:4] == [True, True, True, True]  # each a new end of the front so far
    assert 4 <= sum(kept) < 16


def test_one_constant_objective_ranks_as_the_other_alone():
    # every model the same size: the rung is single-objective ASHA on accuracy
    accuracies = [0.31, 0.72, 0.55, 0.9, 0.12, 0.66]
    vectors = [[a, 5000] for a in accuracies]
    assert rank(vectors, MAX_MIN) == sorted(range(6), key=lambda i: -accuracies[i])
    assert [i for i in range(6) if survives_rung(i, vectors, MAX_MIN, 3)] == [1, 3]
    # a constant objective adds nothing to the crowding distance (no division by its zero range)
    assert crowding_distances([[0.5, 7], [0.6, 7], [0.7, 7]], MAX_MIN) == [math.inf, 1.0, math.inf]


def test_crowding_prefers_the_lonely_point_of_a_front():
    front = [[0.9, 1000], [0.85, 600], [0.84, 590], [0.5, 100]]
    distances = crowding_distances(front, MAX_MIN)
    assert distances[0] == distances[3] == math.inf
    assert distances[1] > 0 and distances[2] > 0
    # 1 and 2 are close to each other: whichever has the wider gap to its neighbours ranks first among the middle
    assert rank(front, MAX_MIN) == [0, 3, 2, 1]  # 2's neighbours (0.85, 600) and (0.5, 100) are far apart


def _inside(x, point, reference, modes) -> bool:
    """x lies in the box between the point and the reference, in every objective's own direction."""
    for k, mode in enumerate(modes):
        low, high = (reference[k], point[k]) if mode == "max" else (point[k], reference[k])
        if not low <= x[k] <= high:
            return False
    return True


def _brute_force_hypervolume(points, reference, modes, samples=4000, seed=0):
    """A Monte Carlo estimate, to check the exact sweep against."""
    rng = random.Random(seed)
    lows = [min(min(p[k] for p in points), reference[k]) for k in range(len(modes))]
    highs = [max(max(p[k] for p in points), reference[k]) for k in range(len(modes))]
    box = math.prod(h - lo for lo, h in zip(lows, highs, strict=True))
    hits = 0
    for _ in range(samples):
        x = [rng.uniform(lo, h) for lo, h in zip(lows, highs, strict=True)]
        hits += any(_inside(x, p, reference, modes) for p in points)
    return box * hits / samples


def test_hypervolume_is_exact_in_two_objectives():
    points = [[0.9, 500], [0.8, 100], [0.5, 50]]
    reference = [0.0, 1000]
    # staircase: (0.9-0)*(1000-500) + (0.8-0)*(500-100) + (0.5-0)*(100-50)
    assert hypervolume(points, MAX_MIN, reference) == pytest.approx(0.9 * 500 + 0.8 * 400 + 0.5 * 50)
    assert hypervolume([*points, [0.4, 600]], MAX_MIN, reference) == pytest.approx(0.9 * 500 + 0.8 * 400 + 0.5 * 50)
    assert hypervolume([[NAN, 1], [0.5, 2000]], MAX_MIN, reference) == 0.0  # unusable, or beyond the reference


def test_hypervolume_in_three_objectives_matches_sampling():
    modes = ("max", "min", "min")
    rng = random.Random(1)
    points = [[rng.random(), rng.random(), rng.random()] for _ in range(6)]
    reference = [0.0, 1.0, 1.0]
    exact = hypervolume(points, modes, reference)
    assert exact == pytest.approx(_brute_force_hypervolume(points, reference, modes, samples=20000), abs=0.02)
    # permuting the objectives permutes nothing of the volume
    for permutation in itertools.permutations(range(3)):
        permuted = [[p[k] for k in permutation] for p in points]
        assert hypervolume(permuted, [modes[k] for k in permutation], [reference[k] for k in permutation]) == (
            pytest.approx(exact)
        )


def test_reference_point_lies_beyond_the_worst_of_each_objective():
    vectors = [[0.9, 500], [0.5, 100], [NAN, 3]]
    ref = reference_point(vectors, MAX_MIN)
    assert ref[0] < 0.5 and ref[1] > 500
    assert hypervolume(vectors, MAX_MIN, ref) > 0
    assert reference_point([[0.5, 7], [0.5, 7]], MAX_MIN) == (pytest.approx(0.45), pytest.approx(7.7))
    with pytest.raises(ValueError):
        reference_point([[NAN, 1]], MAX_MIN)


def test_a_trial_s_values_are_those_of_its_best_evaluation_by_the_first_metric():
    names = ("eval_accuracy", "eval_runtime")
    entries = [{"eval_accuracy": 0.5, "eval_runtime": 1.0, "step": 10},
               {"eval_accuracy": 0.7, "eval_runtime": 3.0, "step": 20},
               {"eval_accuracy": 0.6, "eval_runtime": 0.5, "step": 30},
               {"eval_accuracy": NAN, "eval_runtime": 0.1, "step": 40}]  # fmt: skip
    assert running_objectives(entries, names, ("max", "min")) == [[0.5, 1.0], [0.7, 3.0], [0.7, 3.0], [0.7, 3.0]]
    state = SimpleNamespace(best_global_step=20, log_history=[{"loss": 1.0, "step": 20}, *entries])
    assert objective_values(entries[2], state, names) == [0.7, 3.0]
    fresh = SimpleNamespace(best_global_step=None, log_history=[])
    values = objective_values({"eval_accuracy": NAN}, fresh, names)
    assert math.isnan(values[0]) and math.isnan(values[1])  # missing: NaN, ranked last


# --- the Optuna backend's pruner ------------------------------------------------------------------------------


def _study(pruner):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(directions=["maximize", "minimize"], pruner=pruner)


def test_the_pruner_applies_the_rung_rule_over_the_study_s_trials():
    pruner = ParetoHalvingPruner(modes=MAX_MIN, grace_period=1, reduction_factor=3, max_t=9)
    assert pruner.rungs == [1, 3]
    study = _study(pruner)
    decisions = []
    for values in ([0.5, 100], [0.4, 200], [0.6, 300], [0.3, 50], [0.45, 150], [0.2, 400]):
        trial = study.ask()
        assert not pruner.report(trial, 2, values)  # not a rung: nothing kept
        assert pruner.report(trial, 1, values)
        decisions.append(pruner.prune(study, trial))
    # the same decisions as the rule over the vectors that had reached the rung when each arrived
    vectors = [[0.5, 100], [0.4, 200], [0.6, 300], [0.3, 50], [0.45, 150], [0.2, 400]]
    expected = [not survives_rung(i, vectors[: i + 1], MAX_MIN, 3) for i in range(6)]
    assert decisions == expected
    assert decisions[0] is False and decisions[1] is True and decisions[5] is True


def test_a_re_run_of_an_interrupted_trial_counts_once_at_a_rung():
    pruner = ParetoHalvingPruner(modes=MAX_MIN, grace_period=1, reduction_factor=2, max_t=4)
    study = _study(pruner)
    first = study.ask()
    first.set_user_attr("trial_id", "trial-0000")
    pruner.report(first, 1, [0.9, 10])
    study.tell(first, state=optuna.trial.TrialState.FAIL)  # interrupted
    rerun = study.ask()
    rerun.set_user_attr("trial_id", "trial-0000")
    pruner.report(rerun, 1, [0.9, 10])
    assert not pruner.prune(study, rerun)  # alone at the rung (its first run does not count against it)
    other = study.ask()
    pruner.report(other, 1, [0.1, 1000])
    assert pruner.prune(study, other)  # 2 at the rung, keep 1: the dominated one stops
    assert pruner.prune(study, study.ask()) is False  # a trial at no rung yet


def test_every_objective_must_be_in_the_evaluation():
    metrics = {"eval_accuracy": 0.5, "eval_loss": 1.0, "eval_num_parameters": 10}
    check_objectives(metrics, ("eval_accuracy", "eval_num_parameters"))  # all there: nothing said
    with pytest.raises(ConfigError, match=r"`search.metric` names eval_size, but the evaluation returned only "
                                          r"eval_accuracy, eval_loss, eval_num_parameters"):  # fmt: skip
        check_objectives(metrics, ("eval_accuracy", "eval_size"))


# --- the Optuna backend's wiring: the rung reporter, the replay of a resumed trial ------------------------------


def _evaluated(state, accuracy, parameters, *, step):
    """One evaluation of a run, as the loop leaves it: in the log history, the best by accuracy tracked."""
    metrics = {"eval_accuracy": accuracy, "eval_num_parameters": parameters}
    state.global_step = step
    state.num_evaluations += 1
    state.log_history.append({**metrics, "step": step})
    if state.best_metric is None or accuracy > state.best_metric:
        state.best_metric, state.best_global_step = accuracy, step
    return metrics


def test_the_rung_reporter_records_every_rung_and_stops_a_trial_ranked_out_but_not_at_its_last_evaluation():
    from tunetrain.checkpoint import TrainerState
    from tunetrain.reporting import TrainerControl
    from tunetrain.tuning.optuna import _ParetoRungReporter

    names = ("eval_accuracy", "eval_num_parameters")
    study = _study(ParetoHalvingPruner(modes=MAX_MIN, grace_period=1, reduction_factor=3, max_t=9))

    def run(evaluations, max_steps=90):
        trial = study.ask()
        reporter, state, control = (
            _ParetoRungReporter(trial, names),
            TrainerState(max_steps=max_steps),
            TrainerControl(),
        )
        for step, (accuracy, parameters) in enumerate(evaluations, start=1):
            reporter.on_evaluate(_evaluated(state, accuracy, parameters, step=10 * step), state, control, None)
            if control.should_stop:
                break
        return trial, control

    leader, control = run([(0.5, 100), (0.6, 100), (0.7, 100)])
    assert not control.should_stop
    assert leader.user_attrs == {"rung_1": [0.5, 100], "rung_3": [0.7, 100]}  # 2 is no rung
    loser, control = run([(0.4, 200), (0.9, 200)])
    assert control.reason == "pruned" and isinstance(control.exception, optuna.TrialPruned)
    assert loser.user_attrs == {"rung_1": [0.4, 200]}  # stopped at its first rung
    assert "Pareto rank: eval_accuracy=0.4, eval_num_parameters=200" in str(control.exception)
    # a run whose first evaluation is its last is judged by nobody: it ends there anyway
    last, control = run([(0.1, 900)], max_steps=10)
    assert not control.should_stop and last.user_attrs["rung_1"] == [0.1, 900]
    with pytest.raises(ConfigError, match="names eval_num_parameters, but the evaluation returned only"):
        _ParetoRungReporter(study.ask(), names).on_evaluate(
            {"eval_accuracy": 1.0}, TrainerState(), TrainerControl(), None
        )


def test_a_resumed_trial_replays_its_rungs_values_from_its_checkpoint(tmp_path):
    from tunetrain.checkpoint import TrainerState
    from tunetrain.results import ResultsBook
    from tunetrain.tuning.config import SearchConfig
    from tunetrain.tuning.optuna import _replay_evaluations

    state = TrainerState(max_steps=90)
    for step, (accuracy, parameters) in enumerate([(0.5, 100), (0.7, 100), (0.6, 100)], start=1):
        _evaluated(state, accuracy, parameters, step=10 * step)
    checkpoint = tmp_path / "trial-0000" / "checkpoint-30"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text(state.to_json())
    config = SearchConfig(metric=("eval_accuracy", "eval_num_parameters"), mode=MAX_MIN)
    study = _study(ParetoHalvingPruner(modes=MAX_MIN, grace_period=1, reduction_factor=3, max_t=9))
    trial = study.ask()
    book = ResultsBook(str(tmp_path), metric=config.metric, mode=config.mode)
    book.start("trial-0000", 0, {})
    _replay_evaluations(trial, book, "trial-0000", checkpoint, config)
    # rung 3 holds the best by accuracy so far (evaluation 2's), as the reporter would have recorded it
    assert trial.user_attrs == {"rung_1": [0.5, 100], "rung_3": [0.7, 100]}
    assert book.trials["trial-0000"].objectives == [0.7, 100] and book.last_evaluation("trial-0000") == 3
