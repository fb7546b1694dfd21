"""Tests for `tunetrain.report`: the data the figures draw, the PNGs and html it writes, and its errors.

The experiment is made by a `ResultsBook` as a search would make it (no Ray, no training): six trials that
completed, were pruned at evaluation 1 and 3, errored, and one still running. A second one is a population whose
trials took each other's checkpoints, as Population Based Training leaves it; a third, a search of two objectives.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tunetrain.errors import ConfigError
from tunetrain.report import (
    BEST_SO_FAR_PNG,
    CURVES_PNG,
    HYPERVOLUME_PNG,
    PARAMS_PNG,
    PARETO_PNG,
    POPULATION_PNG,
    ObjectivePoint,
    best_so_far_data,
    front_staircase,
    has_exploits,
    hypervolume_data,
    learning_curve_data,
    lineage_colors,
    param_scale,
    pareto_points,
    population_data,
    summary_text,
    write_report,
)
from tunetrain.results import ResultsBook, read_history, read_results
from tunetrain.tuning.pareto import hypervolume, reference_point

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ERROR_MESSAGE = "ValueError: loss is <nan> & the run diverged"
# trial id -> (params, accuracy per evaluation, final status); t1 is the best (0.91 at its evaluation 4); the
# trials report one after another, so the best-so-far curve takes their evaluations in this order
TRIALS = {
    "t0": ({"lr": 1e-4, "layers": 2, "act": "relu"}, [0.50, 0.60, 0.66, 0.70, 0.72], "completed"),
    "t1": ({"lr": 3e-3, "layers": 4, "act": "gelu"}, [0.60, 0.78, 0.86, 0.91, 0.90], "completed"),
    "t2": ({"lr": 1e-5, "layers": 1, "act": "relu"}, [0.20], "pruned"),
    "t3": ({"lr": 2e-2, "layers": 3, "act": "tanh"}, [0.40, 0.45, 0.47], "stopped_early"),
    "t4": ({"lr": 9e-2, "layers": 2, "act": "gelu"}, [0.30, 0.95], "errored"),  # errored trials never rank
    "t5": ({"lr": 1e-3, "layers": 3, "act": "relu"}, [0.55, 0.70], "running"),
}


def _write_experiment(path: Path, trials: dict = TRIALS) -> Path:
    path.mkdir(parents=True, exist_ok=True)  # the search makes the experiment dir before its ResultsBook
    book = ResultsBook(str(path), metric="accuracy", mode="max", min_interval_s=0.0)
    for number, (trial_id, (params, values, status)) in enumerate(trials.items()):
        book.start(trial_id, number, params)
        for evaluation, value in enumerate(values, start=1):
            book.report(trial_id, {"accuracy": value, "evaluation": evaluation, "step": 10 * evaluation})
        if status != "running":
            book.finish(trial_id, status, error=ERROR_MESSAGE if status == "errored" else None)
    book.flush(force=True)
    return path


# a population of four, reporting at steps 10, 20, ... : trial id -> (accuracy per evaluation, its exploits as
# {its first evaluation after one: (donor, the donor's step it copied)}). A takes B's checkpoint of step 20, then
# goes on from it; D takes A's of step 20 (A's own weights, though A has moved on to B's since); C takes A's of
# step 40, which are B's weights
POPULATION = {
    "A": ([0.30, 0.35, 0.62, 0.66], {3: ("B", 20)}),
    "B": ([0.50, 0.60, 0.65, 0.70, 0.72, 0.74], {}),
    "C": ([0.20, 0.25, 0.28, 0.30, 0.73, 0.75], {5: ("A", 40)}),
    "D": ([0.10, 0.15, 0.36, 0.40], {3: ("A", 20)}),
}


def _write_population(path: Path) -> Path:
    """The experiment of `POPULATION`; its history as a PBT search writes it, with `params`, `parent` and
    `parent_step`, and the evaluations of all trials taken in turn (each trial's n-th at about n * 100 s)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.mkdir(parents=True, exist_ok=True)
    book = ResultsBook(str(path), metric="accuracy", mode="max", min_interval_s=0.0)
    rows = []
    for number, (trial_id, (values, exploits)) in enumerate(POPULATION.items()):
        book.start(trial_id, number, {"lr": 1e-3})
        for evaluation, value in enumerate(values, start=1):
            book.report(trial_id, {"accuracy": value, "evaluation": evaluation, "step": 10 * evaluation})
            parent, parent_step = exploits.get(evaluation, (None, None))
            rows.append(
                {"trial_id": trial_id, "evaluation": evaluation, "step": 10 * evaluation, "epoch": None,
                 "metric": value, "time_s": 100.0 * evaluation, "metrics": "{}", "params": json.dumps({"lr": 1e-3}),
                 "parent": parent, "parent_step": parent_step}
            )  # fmt: skip
        book.finish(trial_id, "completed")
    pq.write_table(pa.Table.from_pylist(rows), path / "history.parquet")
    return path


# several objectives: trial id -> (hidden size, accuracy per evaluation, final status); eval_num_parameters is 10 x the
# hidden size at every evaluation. The front of the finished trials: m0 (the most accurate), m2 (at its evaluation 2,
# its best) and m1 (the smallest); m3 is dominated; m5, pruned, is the smallest of all; m7 is still running
OBJECTIVES, MODES = ("eval_accuracy", "eval_num_parameters"), ("max", "min")
MULTI = {
    "m0": (100, [0.50, 0.70, 0.80], "completed"),
    "m1": (10, [0.40, 0.55, 0.60], "completed"),
    "m2": (50, [0.50, 0.65, 0.62], "completed"),
    "m3": (80, [0.45, 0.60, 0.58], "completed"),
    "m4": (20, [0.30], "pruned"),
    "m5": (5, [0.20, 0.35], "pruned"),
    "m6": (30, [0.90], "errored"),
    "m7": (40, [0.66], "running"),
}


def _write_multi(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    book = ResultsBook(str(path), metric=OBJECTIVES, mode=MODES, min_interval_s=0.0)
    for number, (trial_id, (hidden, values, status)) in enumerate(MULTI.items()):
        book.start(trial_id, number, {"hidden_size": hidden})
        for evaluation, value in enumerate(values, start=1):
            metrics = {"eval_accuracy": value, "eval_num_parameters": 10 * hidden}
            book.report(trial_id, {**metrics, "evaluation": evaluation, "step": 10 * evaluation})
        if status != "running":
            book.finish(trial_id, status, error=ERROR_MESSAGE if status == "errored" else None)
    book.flush(force=True)
    return path


@pytest.fixture(scope="module")
def multi(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_multi(tmp_path_factory.mktemp("multi") / "multi_search")


@pytest.fixture(scope="module")
def multi_report(multi: Path) -> Path:
    return write_report(multi)


@pytest.fixture(scope="module")
def population(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_population(tmp_path_factory.mktemp("pbt") / "pbt_search")


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_experiment(tmp_path_factory.mktemp("exp") / "mnist_search")


@pytest.fixture(scope="module")
def report(experiment: Path) -> Path:
    return write_report(experiment, top_k=4)


def _pixels(path: Path) -> np.ndarray:
    from matplotlib.image import imread

    return imread(str(path))[..., :3]  # RGB floats in [0, 1]


def _distinct_colors(pixels: np.ndarray) -> int:
    codes = np.round(pixels * 255).astype(np.int64) @ np.array([1 << 16, 1 << 8, 1])  # np.unique(axis=0) is slow
    return len(np.unique(codes))


def _count_color(pixels: np.ndarray, hex_color: str, tolerance: float = 0.03) -> int:
    """How many pixels are (nearly) this color."""
    rgb = np.array([int(hex_color[i : i + 2], 16) / 255 for i in (1, 3, 5)])
    return int((np.abs(pixels - rgb).max(axis=-1) < tolerance).sum())


# --- data the figures draw -----------------------------------------------------------------------------------------


def test_curves_end_where_each_trial_stopped_and_carry_its_status(experiment: Path) -> None:
    curves = learning_curve_data(read_results(experiment), read_history(experiment))
    assert list(curves) == list(TRIALS)
    for trial_id, (_, values, _) in TRIALS.items():
        assert curves[trial_id].x == list(range(1, len(values) + 1))
        assert curves[trial_id].y == pytest.approx(values)
    assert curves["t2"].x[-1] == 1 and curves["t2"].style == "stopped"  # pruned at its first rung
    assert curves["t3"].x[-1] == 3 and curves["t3"].style == "stopped"
    assert [curves[t].style for t in ("t0", "t4", "t5")] == ["completed", "errored", "running"]


def test_a_trial_that_has_not_reported_has_no_curve(tmp_path: Path) -> None:
    trials = {**TRIALS, "t6": ({"lr": 1e-3, "layers": 1, "act": "relu"}, [], "running")}
    experiment = _write_experiment(tmp_path / "exp", trials)
    curves = learning_curve_data(read_results(experiment), read_history(experiment))
    assert "t6" not in curves and len(curves) == 6


def test_a_param_the_space_samples_on_a_log_scale_gets_a_log_axis(tmp_path: Path) -> None:
    # before: `learning_rate: {log: true}` over less than two decades was drawn on a linear axis
    assert param_scale([1e-3, 5e-2], log=True) == "log"
    assert param_scale([0.0, 5e-2], log=True) == "linear"  # 0 cannot go on a log axis
    from tunetrain.report import _log_params
    from tunetrain.storage import ExperimentDir

    exp = _write_experiment(tmp_path / "exp", {"t0": ({"lr": 1e-3, "layers": 2}, [0.5], "completed")})
    assert _log_params(exp) == set()  # no search.json: the values decide
    space = {"lr": {"type": "float", "low": 1e-3, "high": 5e-2, "log": True}, "layers": {"type": "int", "low": 1,
             "high": 4}}  # fmt: skip
    ExperimentDir.open(str(tmp_path), "exp").write_state(
        {"status": "finished", "experiment": {"name": "exp", "task": "m:t", "space": space}}
    )
    assert _log_params(exp) == {"lr"}


def test_param_scale() -> None:
    assert param_scale([1e-5, 3e-3, 9e-2]) == "log"  # > 2 decades
    assert param_scale([1e-3, 5e-2]) == "linear"  # less than 2 decades
    assert param_scale([0.0, 1e-5, 0.1]) == "linear"  # 0 cannot go on a log axis
    assert param_scale([1, 2, 4]) == "linear"
    assert param_scale(["relu", "gelu"]) == "category"
    assert param_scale([True, False]) == "category"


def test_a_trial_carries_its_donors_lineage_as_of_the_step_it_copied(population: Path) -> None:
    data = population_data(read_results(population), read_history(population))
    assert [(s.trial_id, s.lineage, s.x) for s in data.segments] == [
        ("A", "A", [10, 20]),
        ("A", "B", [30, 40]),
        ("B", "B", [10, 20, 30, 40, 50, 60]),
        ("C", "C", [10, 20, 30, 40]),
        ("C", "B", [50, 60]),  # A's step 40 was B's weights: C's tail is B's lineage, not A's
        ("D", "D", [10, 20]),
        ("D", "A", [30, 40]),  # A's step 20 was still its own
    ]
    assert data.segments[4].y == pytest.approx([0.73, 0.75])
    assert data.lineages == ["B", "A", "C", "D"]  # B is carried by three trials at the end, A by one
    exploits = [(e.receiver, e.donor, e.lineage, e.donor_step, e.step) for e in data.exploits]
    assert exploits == [("A", "B", "B", 20, 30), ("D", "A", "A", 20, 30), ("C", "A", "B", 40, 50)]  # as they happened
    first = data.exploits[0]
    assert (first.donor_value, first.value) == pytest.approx((0.60, 0.62))  # B at step 20, A's next evaluation


def test_exploits_are_found_in_the_results_or_the_history(experiment: Path, population: Path) -> None:
    assert has_exploits(read_results(population), read_history(population))
    result, history = read_results(experiment), read_history(experiment)
    assert not has_exploits(result, history)
    result.trials[0].parent = [{"trial_id": "t1", "step": 20, "evaluation": 2}]  # as `TrialRecord.parent` holds them
    assert has_exploits(result, history)


def test_lineages_past_the_eighth_share_grey() -> None:
    colors = lineage_colors([f"t{i}" for i in range(10)])
    named = [colors[f"t{i}"] for i in range(8)]
    assert len(set(named)) == 8
    assert colors["t8"] == colors["t9"] not in named


def test_best_so_far_counts_every_evaluation_and_never_ranks_errored_ones(experiment: Path) -> None:
    xs, ys = best_so_far_data(read_results(experiment), read_history(experiment))
    evaluations = sum(len(values) for _, values, _ in TRIALS.values())
    assert xs == list(range(1, evaluations + 1))
    t0 = [0.50, 0.60, 0.66, 0.70, 0.72]
    t1 = [0.72, 0.78, 0.86, 0.91, 0.91]
    assert ys == pytest.approx(t0 + t1 + [0.91] * 8)  # t4's 0.95 is compute spent, not a best


def test_best_so_far_for_a_min_metric(tmp_path: Path) -> None:
    book = ResultsBook(str(tmp_path), metric="loss", mode="min", min_interval_s=0.0)
    book.start("a", 0, {"lr": 0.1})
    for evaluation, value in enumerate([3.0, float("nan"), 2.0, 2.5], start=1):
        book.report("a", {"loss": value, "evaluation": evaluation})
    book.finish("a", "completed")
    _, ys = best_so_far_data(read_results(tmp_path), read_history(tmp_path))
    assert ys == [3.0, 3.0, 2.0, 2.0]


def test_pareto_points_show_each_trial_at_its_best_evaluation_by_what_became_of_it(multi: Path) -> None:
    points = {p.trial_id: p for p in pareto_points(read_results(multi))}
    kinds = {trial_id: point.kind for trial_id, point in points.items()}
    assert kinds == {"m0": "front", "m1": "front", "m2": "front", "m3": "dominated", "m4": "stopped",
                     "m5": "stopped", "m7": "running"}  # fmt: skip  # m6 errored: left out
    assert (points["m2"].x, points["m2"].y) == pytest.approx((0.65, 500))  # its evaluation 2, not its last


def test_the_front_staircase_steps_along_the_first_objective_then_the_second(multi: Path) -> None:
    front = [p for p in pareto_points(read_results(multi)) if p.kind == "front"]
    xs, ys = front_staircase(front, MODES)  # from the most accurate to the smallest; corners at the worse of each
    assert xs == pytest.approx([0.80, 0.65, 0.65, 0.60, 0.60])
    assert ys == pytest.approx([1000, 1000, 500, 500, 100])
    points = [ObjectivePoint("a", 2.0, 3.0, "front"), ObjectivePoint("b", 1.0, 1.0, "front")]
    assert front_staircase(points, ("min", "max")) == ([1.0, 2.0, 2.0], [1.0, 1.0, 3.0])
    # a front of three objectives seen on two: a point dominated on the plane is not on the staircase
    points.append(ObjectivePoint("c", 1.5, 0.5, "front"))
    assert front_staircase(points, ("min", "max", "min")) == ([1.0, 2.0, 2.0], [1.0, 1.0, 3.0])


def test_hypervolume_never_goes_down_and_ends_at_the_front_of_every_trials_values(multi: Path) -> None:
    result = read_results(multi)
    xs, ys = hypervolume_data(result, read_history(multi))
    assert xs == list(range(1, sum(len(values) for _, values, _ in MULTI.values()) + 1))  # m6's too: compute spent
    assert ys == sorted(ys)  # never goes down
    seen = [
        (value, 10 * hidden) for hidden, values, status in MULTI.values() if status != "errored" for value in values
    ]
    reference = reference_point(seen, MODES)
    assert ys[0] == pytest.approx(hypervolume([(0.50, 1000)], MODES, reference))  # m0's first evaluation
    # every trial's values, the pruned m5's and the running m7's too; m6's 0.90, errored, never
    counted = [t.objectives for t in result.trials if t.status != "errored"]
    assert ys[-1] == pytest.approx(hypervolume(counted, MODES, reference))
    assert ys[-1] > hypervolume([t.objectives for t in result.pareto], MODES, reference)


def test_a_trials_earlier_values_stay_counted_and_only_its_best_by_the_first_metric_counts(tmp_path: Path) -> None:
    book = ResultsBook(str(tmp_path), metric=("eval_loss", "eval_latency"), mode=("min", "min"), min_interval_s=0.0)
    book.start("a", 0, {"lr": 0.1})
    evaluations = [(1.0, 10.0), (0.5, 30.0), (0.7, 5.0)]  # the last is no better loss: the trial keeps (0.5, 30)
    for evaluation, (loss, latency) in enumerate(evaluations, start=1):
        book.report("a", {"eval_loss": loss, "eval_latency": latency, "evaluation": evaluation})
    book.finish("a", "completed")
    _, ys = hypervolume_data(read_results(tmp_path), read_history(tmp_path))
    modes, found = ("min", "min"), evaluations[:2]
    reference = reference_point(found, modes)
    expected = [hypervolume(found[:1], modes, reference), hypervolume(found, modes, reference)]
    assert ys == pytest.approx([*expected, expected[-1]])
    assert ys[1] > ys[0]  # (1.0, 10) still counts once the trial's best is (0.5, 30)


# --- the files -----------------------------------------------------------------------------------------------------


def test_report_goes_into_the_experiment_dir_by_default(experiment: Path, report: Path) -> None:
    assert report == experiment / "report.html"
    for name in (CURVES_PNG, PARAMS_PNG, BEST_SO_FAR_PNG):
        assert (experiment / name).read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize("name", [CURVES_PNG, PARAMS_PNG, BEST_SO_FAR_PNG])
def test_pngs_are_not_blank(report: Path, name: str) -> None:
    pixels = _pixels(report.parent / name)
    assert _distinct_colors(pixels) > 3
    background = pixels[0, 0]
    assert np.all(background > 0.99)  # white
    changed = (np.abs(pixels - background).max(axis=-1) > 0.1).mean()
    assert changed > 0.02, f"only {changed:.2%} of {name} differs from the background"


def test_learning_curves_draw_every_status_and_the_best_trial(report: Path) -> None:
    pixels = _pixels(report.parent / CURVES_PNG)
    for color in ("#1f77b4", "#d62728", "#2ca02c", "#000000"):  # completed, errored, running, best
        assert _count_color(pixels, color) > 100, color
    # stopped trials: lines in a lighter orange (alpha 0.45 on white), only their 'x' markers in full orange
    lighter, full = "#" + "".join(f"{round(255 - 0.45 * (255 - c)):02x}" for c in (0xFF, 0x7F, 0x0E)), "#ff7f0e"
    assert _count_color(pixels, lighter) > 2 * _count_color(pixels, full) > 0


def test_html_is_self_contained_and_shows_the_search(report: Path) -> None:
    page = report.read_text()
    assert "<title>mnist_search: search report</title>" in page
    assert "metric <b>accuracy</b> (mode max" in page
    assert len(re.findall(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]+"', page)) == 3
    assert not re.search(r"https?://|<script|<link|src=\"(?!data:)", page)
    top = page[page.index('<table class="top">') : page.index("</table>")]
    assert top.index("t1") < top.index("t0") and "0.91" in top  # best first
    assert "t4" not in top
    assert top.count("<tr") == 1 + 4  # header + top_k rows
    for count, status in [(2, "completed"), (1, "pruned"), (1, "stopped_early"), (1, "errored"), (1, "running")]:
        assert f'class="badge {status}">{count} {status}</span>' in page
    assert "still running, or left running" in page


def test_html_escapes_the_error_message(report: Path) -> None:
    page = report.read_text()
    errors = page[page.index('<table class="errors">') :]
    assert "t4" in errors
    assert "loss is &lt;nan&gt; &amp; the run diverged" in errors
    assert "<nan>" not in page


def test_out_dir_and_summary_text(experiment: Path, tmp_path: Path) -> None:
    path = write_report(experiment, out_dir=tmp_path / "out" / "nested", top_k=2)
    assert path == tmp_path / "out" / "nested" / "report.html"
    assert {p.name for p in path.parent.iterdir()} == {"report.html", CURVES_PNG, PARAMS_PNG, BEST_SO_FAR_PNG}
    text = summary_text(experiment, top_k=2)
    header, table_header, first, second = text.splitlines()
    assert header == (
        "mnist_search: 6 trials (1 running, 2 completed, 1 stopped_early, 1 pruned, 1 errored); "
        "accuracy, higher is better"
    )
    assert table_header.split() == ["trial", "accuracy", "status", "evals", "act", "layers", "lr"]
    assert first.split()[:2] == ["t1", "0.91"] and second.split()[0] == "t0"


def test_a_search_without_exploits_has_no_population_figure(report: Path) -> None:
    assert not (report.parent / POPULATION_PNG).exists()
    assert "population" not in report.read_text().lower()


def test_the_population_figure_is_drawn_and_embedded_when_trials_exploited(population: Path) -> None:
    page = write_report(population).read_text()
    assert len(re.findall(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]+"', page)) == 4
    assert f"({POPULATION_PNG})</figcaption>" in page
    assert page.index("<h2>Learning curves") < page.index("<h2>Population") < page.index("<h2>Params")
    pixels = _pixels(population / POPULATION_PNG)
    counts = [_count_color(pixels, color) for color in lineage_colors(["B", "A", "C", "D"]).values()]
    assert counts[0] > max(counts[1:]) and min(counts) > 0, counts  # B's lineage, the most carried, the most drawn


def test_a_search_of_several_objectives_reports_its_front_not_a_best(multi: Path, multi_report: Path) -> None:
    pngs = {p.name for p in multi_report.parent.iterdir() if p.suffix == ".png"}
    assert pngs == {PARETO_PNG, CURVES_PNG, PARAMS_PNG, HYPERVOLUME_PNG}  # no best so far: there is no one best
    for name in (PARETO_PNG, HYPERVOLUME_PNG):
        assert (multi_report.parent / name).read_bytes()[:8] == PNG_MAGIC
    page = multi_report.read_text()
    assert (
        "objectives <b>eval_accuracy</b> (mode max: higher is better), "
        "<b>eval_num_parameters</b> (mode min: lower is better)"
    ) in page
    assert len(re.findall(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]+"', page)) == 4
    assert page.index("<h2>Pareto front") < page.index("<h2>Learning curves") < page.index("<h2>Hypervolume")
    assert BEST_SO_FAR_PNG not in page
    top = page[page.index('<table class="top">') : page.index("</table>")]
    assert "<th>eval_accuracy</th><th>eval_num_parameters</th><th>pareto</th>" in top
    assert sorted(re.findall(r'<tr class="best"><td class="num">\d+</td><td>(\w+)</td>', top)) == ["m0", "m1", "m2"]
    assert "m6" not in top and top.count("<tr") == 1 + 7
    header = summary_text(multi).splitlines()[0]
    assert header == (
        "multi_search: 8 trials (1 running, 4 completed, 2 pruned, 1 errored); "
        "objectives eval_accuracy (higher is better), eval_num_parameters (lower is better)"
    )


def test_a_search_with_only_running_trials_is_reported(tmp_path: Path) -> None:
    running = {k: (p, v, "running") for k, (p, v, _) in TRIALS.items() if k in ("t0", "t1")}
    page = write_report(_write_experiment(tmp_path / "exp", running)).read_text()
    assert 'class="badge running">2 running</span>' in page and "<p>none</p>" in page  # no errored trials


# --- errors --------------------------------------------------------------------------------------------------------


def test_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^experiment dir '.*nope' does not exist$"):
        write_report(tmp_path / "nope")
    with pytest.raises(ConfigError, match="does not exist"):
        summary_text(tmp_path / "nope")


@pytest.mark.parametrize("top_k", [0, -3])
def test_top_k_below_one_is_refused(experiment: Path, tmp_path: Path, top_k: int) -> None:
    with pytest.raises(ConfigError, match=rf"^`top_k` is {top_k}, but must be >= 1$"):
        write_report(experiment, out_dir=tmp_path / "report", top_k=top_k)
    with pytest.raises(ConfigError, match=rf"^`top_k` is {top_k}, but must be >= 1$"):
        summary_text(experiment, top_k)
    assert not (tmp_path / "report").exists()


def test_dir_without_results(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"holds no search results \(no results.parquet\)$"):
        write_report(tmp_path)


@pytest.mark.parametrize(
    ("trials", "hint"),
    [
        ({"a": ({"lr": 0.1}, [], "running")}, ""),
        ({"a": ({"lr": 0.1}, [math.nan, math.inf], "completed")}, ""),
        ({"a": ({"lr": 0.1}, [0.5], "errored")}, r" \(1 trial\(s\) errored, the first with: ValueError: loss is"),
    ],
)
def test_no_finished_evaluation(tmp_path: Path, trials: dict, hint: str) -> None:
    experiment = _write_experiment(tmp_path / "exp", trials)
    with pytest.raises(ConfigError, match=r"has no trial with a finished evaluation yet" + hint):
        write_report(experiment)
    assert not (experiment / "report.html").exists()


# --- in a browser --------------------------------------------------------------------------------------------------


def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.skip("chromium is not installed (apt-get install chromium): the report is not rendered in a browser")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"]
    flags += ["--disable-background-networking", "--disable-component-update", "--disable-sync"]
    command = [binary, *flags, f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)


@pytest.mark.e2e
def test_report_renders_in_headless_chromium(report: Path, tmp_path: Path) -> None:
    shot = tmp_path / "shot.png"
    url = report.resolve().as_uri()
    done = _chromium(f"--screenshot={shot}", "--window-size=1200,2000", url, profile=tmp_path / "profile")
    assert shot.is_file(), done.stderr[-2000:]
    pixels = _pixels(shot)
    assert pixels.shape[:2] == (2000, 1200)
    assert _distinct_colors(pixels) > 50  # text, badges and the embedded plots
    assert _count_color(pixels, "#fff6d5", tolerance=0.01) > 1000  # the best row of the top-k table
    dom = _chromium("--dump-dom", url, profile=tmp_path / "profile2").stdout
    assert '<table class="top">' in dom and "t1" in dom
    assert dom.count('<img src="data:image/png;base64,') == 3


@pytest.mark.e2e
def test_importing_and_reporting_leave_pyplot_alone(experiment: Path, tmp_path: Path) -> None:
    # the module imports no matplotlib, and the report draws on Figure objects: a notebook's backend is untouched
    code = (
        "import sys; import tunetrain.report as r; assert 'matplotlib' not in sys.modules; "
        f"r.write_report({str(experiment)!r}, out_dir={str(tmp_path)!r}); assert 'matplotlib.pyplot' not in sys.modules"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "report.html").is_file()
