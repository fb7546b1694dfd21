"""`tunetrain report`: what a search did, as a top-k table on the console and a self-contained `report.html`.

The report reads only `results.parquet` and `history.parquet`, so it works on a finished search, on one still
running and on one that was killed (its trials left 'running' are drawn and labelled as such). It writes three
PNGs next to the html (`learning_curves.png`, `params.png`, `best_so_far.png`), and a fourth, `population.png`,
when trials exploited others (Population Based Training), and embeds them in it as data URIs: the html can be
mailed or attached alone, it loads nothing from the network.

A search of several objectives has a Pareto front, not one best trial: its report draws the front
(`pareto.png`: the first two objectives of every trial) and the hypervolume against the evaluations spent
(`hypervolume.png`) in place of `best_so_far.png`, and highlights the front trials where a search of one metric
highlights its best.

Figures are built as `matplotlib.figure.Figure` objects and never touch pyplot: that renders with Agg without
calling `matplotlib.use` (which would switch the backend of a notebook that imports us) and leaves no figure
behind in pyplot's global registry to close.
"""

from __future__ import annotations

import base64
import html
import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from tunetrain.errors import ConfigError
from tunetrain.formatting import format_value
from tunetrain.results import STATUSES, read_history, read_results
from tunetrain.storage import experiment_location, is_file, is_uri, write_local_file
from tunetrain.storage.layout import (
    BEST_SO_FAR_PNG,
    CURVES_PNG,
    HYPERVOLUME_PNG,
    PARAMS_PNG,
    PARETO_PNG,
    POPULATION_PNG,
    REPORT_NAME,
    RESULTS_NAME,
)
from tunetrain.tuning.pareto import hypervolume, pareto_front, reference_point, running_objectives, usable

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from tunetrain.results import SearchResult, TrialRecord

DPI = 100

# how a trial's curve is drawn, by what happened to it; stopped trials are lighter and end in an 'x'
STYLE_OF_STATUS = {
    "completed": "completed",
    "pruned": "stopped",
    "stopped_early": "stopped",
    "timed_out": "stopped",
    "errored": "errored",
    "running": "running",
}
_LINE_STYLES: dict[str, dict[str, Any]] = {
    "completed": {"color": "#1f77b4", "alpha": 1.0, "linewidth": 1.4, "linestyle": "-"},
    "stopped": {"color": "#ff7f0e", "alpha": 0.45, "linewidth": 1.1, "linestyle": "-"},
    "errored": {"color": "#d62728", "alpha": 1.0, "linewidth": 1.4, "linestyle": "--"},
    "running": {"color": "#2ca02c", "alpha": 1.0, "linewidth": 1.4, "linestyle": "-"},
}
_LEGEND_LABELS = {
    "completed": "completed",
    "stopped": "pruned, stopped_early or timed_out (x: its last evaluation)",
    "errored": "errored",
    "running": "running (>: latest evaluation)",
}
_BEST_COLOR = "#000000"
# pareto.png: the front on top in the best trial's black, the others in their status's color, lighter
_POINT_STYLES: dict[str, dict[str, Any]] = {
    "stopped": {"color": "#ff7f0e", "alpha": 0.4, "marker": "x", "s": 30},
    "dominated": {"color": "#1f77b4", "alpha": 0.55, "marker": "o", "s": 30, "edgecolors": "none"},
    "running": {"color": "#2ca02c", "alpha": 0.9, "marker": ">", "s": 45, "edgecolors": "none"},
    "front": {"color": _BEST_COLOR, "marker": "o", "s": 55, "zorder": 5},
}
_POINT_LABELS = {
    "stopped": "pruned or timed_out (judged on a smaller budget)",
    "dominated": "finished, dominated",
    "running": "running (its values so far)",
    "front": "on the Pareto front",
}
_MAX_NAMED = 12  # the front trials are named in the figures when there are at most this many
# the population figure's lineages: the ones most trials carry at the end get a color each, the rest share grey
_LINEAGE_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")
_OTHER_LINEAGES_COLOR = "#b0b0b0"
# an exploit: a thin dashed line from the donor's point copied to the receiver's next one, and a diamond
_CONNECTOR: dict[str, Any] = {"linewidth": 0.8, "linestyle": "--", "alpha": 0.8}
_EXPLOIT_MARKER: dict[str, Any] = {"marker": "D", "markersize": 6, "markeredgecolor": "black"}


class Curve(NamedTuple):
    """One trial's learning curve: evaluation numbers, metric values, and its style (a key of `_LINE_STYLES`)."""

    x: list[int]
    y: list[float]
    style: str


class Segment(NamedTuple):
    """A stretch of one trial's curve on weights of one lineage: training steps, metric values, and the lineage (the
    id of the trial that trained those weights from step 0)."""

    trial_id: str
    lineage: str
    x: list[int]
    y: list[float]


class Exploit(NamedTuple):
    """One trial (the receiver) taking another's (the donor's) checkpoint, as PBT's exploit does.

    `lineage` is the donor's as of `donor_step`: what the receiver carries on. `donor_value` is the donor's metric
    at its latest evaluation at or before `donor_step` (NaN when it had none); `step` and `value` are the
    receiver's first evaluation after the exploit.
    """

    receiver: str
    donor: str
    lineage: str
    donor_step: int
    donor_value: float
    step: int
    value: float


class ObjectivePoint(NamedTuple):
    """One trial in `pareto.png`: its values of the first two objectives and its kind: 'front' (on the Pareto front
    of the finished trials), 'dominated' (finished, off it), 'stopped' (pruned or timed_out: judged on a smaller
    budget) or 'running' (its values so far)."""

    trial_id: str
    x: float
    y: float
    kind: str


class Population(NamedTuple):
    """What `population.png` draws: every trial's segments (trial order, then time), the exploits in the order
    they happened, and the lineages' roots, the one most trials carry at the end first."""

    segments: list[Segment]
    exploits: list[Exploit]
    lineages: list[str]


# ---------------------------------------------------------------------- public API


def summary_text(experiment_dir: str | Path, top_k: int = 10) -> str:
    """A one-line header (trials per status, metric, best) and the top-k table, as `tunetrain report` prints."""
    _check_top_k(top_k)
    result, _ = _load(experiment_dir)
    return f"{_header_line(result)}\n{result.table(top_k)}"


def write_report(experiment_dir: str | Path, *, out_dir: str | Path | None = None, top_k: int = 10) -> Path:
    """Write `report.html` and its PNGs into `out_dir` (default: the experiment dir); return the html path.

    The PNGs: learning curves, params and best so far, and the population when some trial exploited another (PBT).
    A search of several objectives gets the Pareto front and the hypervolume in place of best so far.

    Raises `ConfigError` when the experiment dir does not exist, holds no `results.parquet`, or has no trial
    with a finite value of the search metric yet, or `top_k` is below 1.
    """
    _check_top_k(top_k)
    result, history = _load(experiment_dir)
    if out_dir is None and is_uri(str(experiment_dir)):
        raise ConfigError(f"experiment dir {str(experiment_dir)!r} is in remote storage: give --out, a local dir")
    out = Path(out_dir) if out_dir is not None else Path(experiment_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = {}
    if result.multi_objective:  # the front first: it is what such a search found
        images[PARETO_PNG] = _save(_pareto_figure(result), out / PARETO_PNG)
    images[CURVES_PNG] = _save(_curves_figure(result, history), out / CURVES_PNG)
    if has_exploits(result, history):
        images[POPULATION_PNG] = _save(_population_figure(result, history), out / POPULATION_PNG)
    images[PARAMS_PNG] = _save(_params_figure(result, _log_params(experiment_dir)), out / PARAMS_PNG)
    if result.multi_objective:
        images[HYPERVOLUME_PNG] = _save(_hypervolume_figure(result, history), out / HYPERVOLUME_PNG)
    else:
        images[BEST_SO_FAR_PNG] = _save(_best_so_far_figure(result, history), out / BEST_SO_FAR_PNG)
    page = _html_page(result, images, top_k=top_k, as_of=_results_time(experiment_dir))
    path = out / REPORT_NAME
    # written whole: a browser reloading the report of a running search never sees half a page
    write_local_file(path, page.encode("utf-8"))
    return path


# ---------------------------------------------------------------------- data the figures draw


def learning_curve_data(result: SearchResult, history: list[dict[str, Any]]) -> dict[str, Curve]:
    """Every trial's metric against its evaluation number, keyed by trial id, in trial order.

    A stopped trial's curve ends at the evaluation it was stopped after (its rung); a trial that has not
    reported yet has no curve. A missing metric value is NaN (a gap in the line).
    """
    rows: dict[str, list[tuple[int, float]]] = {}
    for row in history:
        value = row.get("metric")
        rows.setdefault(row["trial_id"], []).append((int(row["evaluation"]), math.nan if value is None else value))
    curves = {}
    for trial in sorted(result.trials, key=lambda t: t.number):
        points = sorted(rows.get(trial.trial_id, []))
        if points:
            curves[trial.trial_id] = Curve([p[0] for p in points], [p[1] for p in points], _style(trial))
    return curves


def param_scale(values: list[Any], *, log: bool = False) -> str:
    """How a param's axis is drawn: 'category' (any non-number), 'log' (a param the space samples on a log scale,
    or positive values over > 2 decades) or 'linear'."""
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
        return "category"
    low, high = min(values), max(values)
    if low > 0 and (log or high / low > 100):
        return "log"
    return "linear"


def _log_params(experiment_dir: str | Path) -> set[str]:
    """The params the experiment's space samples on a log scale (`log: true`); none when search.json cannot say."""
    from tunetrain.results import read_experiment

    try:
        _, experiment = read_experiment(experiment_dir)
    except ConfigError:  # a results dir without its search.json: the values decide the axes
        return set()
    return {param.name for param in experiment.space.params if getattr(param, "log", False)}


def best_so_far_data(result: SearchResult, history: list[dict[str, Any]]) -> tuple[list[int], list[float]]:
    """The best metric after each evaluation of the whole search, evaluations taken in the order they finished.

    x counts evaluations across all trials (the compute spent); an errored trial's evaluations count as compute
    but never as a best, as in `SearchResult.ranked`. y is NaN until the first finite value.
    """
    status = {t.trial_id: t.status for t in result.trials}
    best, ys = math.nan, []
    for row in _in_order(result, history):
        value = row["metric"]
        usable = status[row["trial_id"]] != "errored" and value is not None and math.isfinite(value)
        if usable and (math.isnan(best) or _better(value, best, result.mode)):
            best = value
        ys.append(best)
    return list(range(1, len(ys) + 1)), ys


def pareto_points(result: SearchResult) -> list[ObjectivePoint]:
    """Every trial's values of the first two objectives (`TrialRecord.objectives`: at its best evaluation by the
    first), in trial order. Errored trials, and trials without a finite value of both, are left out."""
    points = []
    for trial in sorted(result.trials, key=lambda t: t.number):
        if trial.status == "errored" or not trial.objectives or not usable(trial.objectives[:2]):
            continue
        if trial.status == "running":
            kind = "running"
        elif trial.status in ("pruned", "timed_out"):
            kind = "stopped"
        else:
            kind = "front" if trial.pareto else "dominated"
        points.append(ObjectivePoint(trial.trial_id, trial.objectives[0], trial.objectives[1], kind))
    return points


def front_staircase(points: list[ObjectivePoint], modes: tuple[str, ...]) -> tuple[list[float], list[float]]:
    """The attainment staircase of `points` (the front): the edge of what they dominate on the first two objectives
    (`modes`), from the point best in the first objective to the one best in the second, each step going along the
    first objective, then the second. A point another dominates on these two (a front of three or more objectives,
    seen on two) is left out."""
    vectors = [(p.x, p.y) for p in points]
    on_plane = sorted(
        (vectors[i] for i in pareto_front(vectors, modes[:2])), key=lambda v: -v[0] if modes[0] == "max" else v[0]
    )
    xs, ys = [], []
    for i, (x, y) in enumerate(on_plane):
        if i:
            xs.append(x)  # the corner: this point's first objective, the one before's second
            ys.append(on_plane[i - 1][1])
        xs.append(x)
        ys.append(y)
    return xs, ys


def hypervolume_data(result: SearchResult, history: list[dict[str, Any]]) -> tuple[list[int], list[float]]:
    """The hypervolume of the front of every value found so far, after each evaluation of the whole search, on all
    the objectives; evaluations taken in the order they finished (started_at + time_s, as `best_so_far_data`).

    What a trial has found after an evaluation is its values then, as it tracks them (`running_objectives`: those
    of its best evaluation by the first metric so far), counted whatever became of the trial later (a trial pruned
    afterwards, one still running). A value found stays counted when the trial's best moves on, and the reference
    point (`reference_point` over every value counted) is fixed for the whole curve: it never goes down. As in
    `best_so_far_data`, an errored trial's evaluations count as compute, never as values. y is 0 until the first
    finite vector, and NaN throughout when there is none.
    """
    status = {t.trial_id: t.status for t in result.trials}
    rows = _in_order(result, history)
    entries: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        entries.setdefault(row["trial_id"], []).append(json.loads(row.get("metrics") or "{}"))
    running = {
        trial_id: iter(running_objectives(trial_entries, result.metrics, result.modes))
        for trial_id, trial_entries in entries.items()
    }
    found = []  # after each evaluation: its trial's values then, None where they do not count
    for row in rows:
        vector = next(running[row["trial_id"]])
        found.append(vector if status[row["trial_id"]] != "errored" and usable(vector) else None)
    xs = list(range(1, len(rows) + 1))
    counted = [vector for vector in found if vector is not None]
    if not counted:
        return xs, [math.nan] * len(rows)
    reference = reference_point(counted, result.modes)
    front: list[list[float]] = []
    volume, ys = 0.0, []
    for vector in found:
        if vector is not None and vector not in front:
            candidates = [*front, vector]
            on_front = pareto_front(candidates, result.modes)
            if len(front) in on_front:  # the new values are on the front: it grows (and may drop some it dominates)
                front = [candidates[i] for i in on_front]
                volume = hypervolume(front, result.modes, reference)
        ys.append(volume)
    return xs, ys


def has_exploits(result: SearchResult, history: list[dict[str, Any]]) -> bool:
    """Whether some trial took another's checkpoint (PBT): a trial's `parent` list or a history row's `parent`."""
    return any(t.parent for t in result.trials) or any(row.get("parent") for row in history)


def population_data(result: SearchResult, history: list[dict[str, Any]]) -> Population:
    """Every trial's metric against its training step, cut into segments by the lineage of the weights it carries.

    A trial carries its own lineage until its first exploit; from an exploit on, the donor's lineage as of the
    step it copied (a donor that had itself exploited passes on what it took). Evaluations are taken in the order
    they finished, so a donor's lineage is known when a trial takes its checkpoint. A missing metric is NaN.
    """
    carried: dict[str, list[tuple[int, str, float]]] = {}  # trial id -> (step, lineage, metric) of its evaluations
    segments: dict[str, list[Segment]] = {}
    exploits = []
    for row in _in_order(result, history):
        trial_id, step, value = row["trial_id"], int(row["step"] or 0), _metric(row)
        so_far = carried.setdefault(trial_id, [])
        exploit = _exploit(row, carried) if row.get("parent") else None
        if exploit is not None:
            exploits.append(exploit)
        lineage = exploit.lineage if exploit else (so_far[-1][1] if so_far else trial_id)
        so_far.append((step, lineage, value))
        trial_segments = segments.setdefault(trial_id, [])
        if exploit is not None or not trial_segments:
            trial_segments.append(Segment(trial_id, lineage, [], []))
        trial_segments[-1].x.append(step)
        trial_segments[-1].y.append(value)
    ordered = [s for t in sorted(result.trials, key=lambda t: t.number) for s in segments.get(t.trial_id, [])]
    return Population(ordered, exploits, _lineages_by_carriers(result, carried))


def _exploit(row: dict[str, Any], carried: dict[str, list[tuple[int, str, float]]]) -> Exploit:
    """The exploit a trial's first evaluation after it (`row`) records, its donor's evaluations so far in `carried`."""
    donor, donor_step = row["parent"], row.get("parent_step")
    at = _latest_at_or_before(carried.get(donor, []), donor_step)
    lineage, donor_value = (at[1], at[2]) if at else (donor, math.nan)  # a donor not seen yet: its own weights
    if donor_step is None:
        donor_step = at[0] if at else int(row["step"] or 0)
    return Exploit(row["trial_id"], donor, lineage, int(donor_step), donor_value, int(row["step"] or 0), _metric(row))


def _latest_at_or_before(evaluations: list[tuple[int, str, float]], step: int | None) -> tuple[int, str, float] | None:
    """The latest of a trial's evaluations at or before `step` (any step when None): the weights a copy took."""
    return next((e for e in reversed(evaluations) if step is None or e[0] <= step), None)


def _lineages_by_carriers(result: SearchResult, carried: dict[str, list[tuple[int, str, float]]]) -> list[str]:
    """The lineages' roots, the one carried by most trials' latest evaluation first, then in trial order."""
    number = {t.trial_id: t.number for t in result.trials}
    latest = [evaluations[-1][1] for evaluations in carried.values() if evaluations]
    roots = {lineage for evaluations in carried.values() for _, lineage, _ in evaluations}
    return sorted(roots, key=lambda root: (-latest.count(root), number.get(root, math.inf), root))


def lineage_colors(lineages: list[str]) -> dict[str, str]:
    """A color per lineage root: the first ones in `lineages` a color each, all after them one grey."""
    return {
        root: _LINEAGE_COLORS[i] if i < len(_LINEAGE_COLORS) else _OTHER_LINEAGES_COLOR
        for i, root in enumerate(lineages)
    }


# ---------------------------------------------------------------------- loading


def _load(experiment_dir: str | Path) -> tuple[SearchResult, list[dict[str, Any]]]:
    from pyarrow import fs

    filesystem, path = experiment_location(experiment_dir)  # a local path or a URI (s3://...)
    kind = filesystem.get_file_info(path).type
    if kind == fs.FileType.NotFound:
        raise ConfigError(f"experiment dir {str(experiment_dir)!r} does not exist")
    if kind != fs.FileType.Directory:
        raise ConfigError(f"experiment dir {str(experiment_dir)!r} is not a directory")
    if not is_file(filesystem, f"{path}/{RESULTS_NAME}"):
        raise ConfigError(f"experiment dir {str(experiment_dir)!r} holds no search results (no {RESULTS_NAME})")
    result = read_results(experiment_dir)
    if not result.ranked():
        raise ConfigError(
            f"experiment dir {str(experiment_dir)!r} has no trial with a finished evaluation yet{_errored_hint(result)}"
        )
    history = read_history(path, filesystem=filesystem)
    return result, history


def _check_top_k(top_k: int) -> None:
    if top_k < 1:
        raise ConfigError(f"`top_k` is {top_k}, but must be >= 1")


def _errored_hint(result: SearchResult) -> str:
    """' (3 trial(s) errored, the first with: ...)' so a search that only failed says why, in one line.

    The last line of the first error: for a traceback, the exception and its message.
    """
    errored = [t for t in result.trials if t.status == "errored"]
    if not errored:
        return ""
    first = (errored[0].error or "no message").strip().splitlines() or ["no message"]
    return f" ({len(errored)} trial(s) errored, the first with: {first[-1][:200]})"


def _results_time(experiment_dir: str | Path) -> str:
    filesystem, path = experiment_location(experiment_dir)
    mtime = filesystem.get_file_info(f"{path}/{RESULTS_NAME}").mtime
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(mtime.timestamp())) if mtime else "unknown"


# ---------------------------------------------------------------------- figures


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _save(fig: Figure, path: Path) -> bytes:
    """Write the figure as PNG and return its bytes (for the data URI)."""
    fig.savefig(path, format="png", dpi=DPI, facecolor="white")
    fig.clear()  # nothing holds the figure after this: no pyplot registry, so clearing is all "closing" needs
    return path.read_bytes()


def _curves_figure(result: SearchResult, history: list[dict[str, Any]]) -> Figure:
    fig = _figure(10, 5.6)
    ax = fig.add_subplot()
    curves = learning_curve_data(result, history)
    highlighted = {t.trial_id: t for t in _highlighted(result) if t.trial_id in curves}
    for trial_id, curve in curves.items():
        if trial_id not in highlighted:
            _draw_curve(ax, curve)
    if result.multi_objective:
        _draw_front_curves(ax, {trial_id: curves[trial_id] for trial_id in highlighted})
    else:
        for best in highlighted.values():  # the best trial, when it has a curve
            _draw_best_curve(ax, curves[best.trial_id], best, result.metric)
    _status_legend(ax, {curve.style for curve in curves.values()})
    ax.set_xlabel("evaluation")
    ax.xaxis.set_major_locator(_integer_ticks())
    ax.set_ylabel(result.metric)
    first = f", the first of {len(result.metrics)} objectives" if result.multi_objective else ""
    ax.set_title(f"learning curves of {len(curves)} trials ({_direction(result.mode)}{first})")
    ax.grid(alpha=0.3)
    return fig


def _draw_curve(ax: Axes, curve: Curve) -> None:
    style = _LINE_STYLES[curve.style]
    ax.plot(curve.x, curve.y, **style)
    if curve.style == "stopped":
        ax.plot(curve.x[-1:], curve.y[-1:], marker="x", markersize=8, markeredgewidth=2, color=style["color"])
    elif curve.style == "running":
        ax.plot(curve.x[-1:], curve.y[-1:], marker=">", markersize=7, color=style["color"])


def _draw_best_curve(ax: Axes, curve: Curve, best: TrialRecord, metric: str) -> None:
    label = f"best: {best.trial_id} ({metric}={format_value(best.best_metric)}, {best.status})"
    ax.plot(curve.x, curve.y, color=_BEST_COLOR, linewidth=2.6, zorder=5, label=label)
    at = curve.y.index(best.best_metric) if best.best_metric in curve.y else len(curve.y) - 1
    ax.plot([curve.x[at]], [curve.y[at]], marker="*", markersize=15, color="#ffbf00", markeredgecolor="black", zorder=6)
    ax.annotate(best.trial_id, (curve.x[at], curve.y[at]), xytext=(6, 8), textcoords="offset points", zorder=6)


def _draw_front_curves(ax: Axes, curves: dict[str, Curve]) -> None:
    """The front trials' curves in the best trial's black, one legend entry for all, each named at its end when
    there are few."""
    for i, (trial_id, curve) in enumerate(curves.items()):
        label = f"on the Pareto front ({len(curves)} trials)" if i == 0 else "_nolegend_"
        ax.plot(curve.x, curve.y, color=_BEST_COLOR, linewidth=2.2, zorder=5, label=label)
        if len(curves) <= _MAX_NAMED:
            end = (curve.x[-1], curve.y[-1])
            ax.annotate(trial_id, end, xytext=(5, 0), textcoords="offset points", fontsize=8, va="center", zorder=6)


def _status_legend(ax: Axes, styles: set[str]) -> None:
    """Legend entries per status drawn (not per trial: a search has too many trials) plus the best trial (or the
    front)."""
    from matplotlib.lines import Line2D

    handles, _ = ax.get_legend_handles_labels()
    for style in _LINE_STYLES:
        if style in styles:
            handles.append(Line2D([], [], label=_LEGEND_LABELS[style], **_LINE_STYLES[style]))
    ax.legend(handles=handles, loc="best", fontsize=9)


def _population_figure(result: SearchResult, history: list[dict[str, Any]]) -> Figure:
    fig = _figure(10, 5.6)
    ax = fig.add_subplot()
    population = population_data(result, history)
    colors = lineage_colors(population.lineages)
    for segment in sorted(population.segments, key=lambda s: colors[s.lineage] != _OTHER_LINEAGES_COLOR):
        _draw_segment(ax, segment, colors[segment.lineage])  # grey first: the colored lineages stay on top
    for exploit in population.exploits:
        _draw_exploit(ax, exploit, colors[exploit.lineage])
    _lineage_legend(ax, population.lineages, colors)
    ax.set_xlabel("training step")
    ax.set_ylabel(result.metric)
    ax.set_title(
        f"population: {len(population.lineages)} lineages, {len(population.exploits)} exploits "
        f"({_direction(result.mode)})"
    )
    ax.grid(alpha=0.3)
    return fig


def _draw_segment(ax: Axes, segment: Segment, color: str) -> None:
    # the dots: a segment of one evaluation (a trial stopped right after an exploit) is still drawn
    ax.plot(segment.x, segment.y, color=color, linewidth=1.3, alpha=0.9, marker="o", markersize=2.5)


def _draw_exploit(ax: Axes, exploit: Exploit, color: str) -> None:
    """A diamond at (donor step, the receiver's first metric after it), and a thin dashed line from the donor's
    point it copied to that first evaluation."""
    ax.plot([exploit.donor_step, exploit.step], [exploit.donor_value, exploit.value], color=color, **_CONNECTOR)
    ax.plot([exploit.donor_step], [exploit.value], color=color, linestyle="none", zorder=5, **_EXPLOIT_MARKER)


def _lineage_legend(ax: Axes, lineages: list[str], colors: dict[str, str]) -> None:
    """An entry per colored lineage, named by its root trial; one for the grey rest; and the exploit's marks."""
    from matplotlib.lines import Line2D

    shown = lineages[: len(_LINEAGE_COLORS)]
    handles = [Line2D([], [], color=colors[root], linewidth=1.6, label=f"{root}'s lineage") for root in shown]
    if len(lineages) > len(shown):
        label = f"{len(lineages) - len(shown)} other lineage(s)"
        handles.append(Line2D([], [], color=_OTHER_LINEAGES_COLOR, linewidth=1.6, label=label))
    label = "exploit: a trial takes another's checkpoint"
    handles.append(Line2D([], [], color="#555555", label=label, **_CONNECTOR, **_EXPLOIT_MARKER))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, title="lineage (root trial)")


def _params_figure(result: SearchResult, log_params: set[str] = frozenset()) -> Figure:
    names = sorted({name for t in result.trials for name in t.params})
    columns = min(3, max(1, len(names)))
    rows = max(1, math.ceil(len(names) / columns))
    fig = _figure(4.4 * columns, 3.6 * rows)
    if not names:
        fig.add_subplot().text(0.5, 0.5, "no searched params", ha="center", va="center")
        return fig
    for i, name in enumerate(names):
        _draw_param(fig.add_subplot(rows, columns, i + 1), result, name, log=name in log_params)
    fig.suptitle(f"best {result.metric} per trial against each param ({_direction(result.mode)})")
    return fig


def _draw_param(ax: Axes, result: SearchResult, name: str, *, log: bool = False) -> None:
    """Best metric per ranked trial against this param's value; the best trial (or each front trial) is a star."""
    trials = [t for t in result.ranked() if name in t.params]
    values = [t.params[name] for t in trials]
    scale = param_scale(values, log=log) if values else "linear"
    xs = _category_positions(ax, values) if scale == "category" else values
    for trial, x in zip(trials, xs, strict=True):
        color = _LINE_STYLES[_style(trial)]["color"]
        ax.scatter([x], [trial.best_metric], color=color, alpha=0.8, s=28, edgecolors="none")
    for star in _highlighted(result):
        if star in trials:
            x = xs[trials.index(star)]
            ax.scatter([x], [star.best_metric], marker="*", s=220, color="#ffbf00", edgecolors="black", zorder=5)
    if scale == "log":
        ax.set_xscale("log")
    elif values and all(isinstance(v, int) for v in values):
        ax.xaxis.set_major_locator(_integer_ticks())  # an int param has no value 1.5
    ax.set_xlabel(f"{name} (log)" if scale == "log" else name)
    ax.set_ylabel(result.metric)
    ax.grid(alpha=0.3)


def _integer_ticks() -> Any:
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def _category_positions(ax: Axes, values: list[Any]) -> list[int]:
    categories = sorted({str(v) for v in values})
    ax.set_xticks(range(len(categories)), categories)
    ax.set_xlim(-0.5, len(categories) - 0.5)
    return [categories.index(str(v)) for v in values]


def _best_so_far_figure(result: SearchResult, history: list[dict[str, Any]]) -> Figure:
    fig = _figure(10, 4.6)
    ax = fig.add_subplot()
    xs, ys = best_so_far_data(result, history)
    ax.step(xs, ys, where="post", color=_BEST_COLOR, linewidth=2, label=f"best {result.metric} so far")
    every = [r["metric"] if r["metric"] is not None else math.nan for r in _in_order(result, history)]
    ax.scatter(xs, every, s=12, color="#7f7f7f", alpha=0.5, label="each evaluation")
    ax.set_xlabel("evaluations run, all trials (compute spent)")
    ax.xaxis.set_major_locator(_integer_ticks())
    ax.set_ylabel(result.metric)
    ax.set_title(f"best so far ({_direction(result.mode)})")
    ax.legend(loc="best", fontsize=9)
    ax.grid(alpha=0.3)
    return fig


def _pareto_figure(result: SearchResult) -> Figure:
    fig = _figure(9, 6)
    ax = fig.add_subplot()
    points = pareto_points(result)
    for kind, style in _POINT_STYLES.items():  # the front last: on top
        group = [p for p in points if p.kind == kind]
        if group:
            label = f"{_POINT_LABELS[kind]}: {len(group)}"
            ax.scatter([p.x for p in group], [p.y for p in group], label=label, **style)
    front = [p for p in points if p.kind == "front"]
    ax.plot(*front_staircase(front, result.modes), color=_BEST_COLOR, linewidth=1.4, zorder=4)
    if len(front) <= _MAX_NAMED:
        for p in front:
            ax.annotate(p.trial_id, (p.x, p.y), xytext=(6, 4), textcoords="offset points", fontsize=8, zorder=6)
    for k, set_scale, set_label in ((0, ax.set_xscale, ax.set_xlabel), (1, ax.set_yscale, ax.set_ylabel)):
        name, values = result.metrics[k], [p.y if k else p.x for p in points]
        log = _log_objective(name, values)
        if log:
            set_scale("log")
        set_label(f"{name} ({_direction(result.modes[k])}{', log' if log else ''})")
    finished = sum(p.kind in ("front", "dominated") for p in points)
    more = f", on the first two of {len(result.metrics)} objectives" if len(result.metrics) > 2 else ""
    ax.set_title(f"Pareto front: {len(front)} of {finished} finished trials{more}")
    ax.legend(loc="best", fontsize=9)
    ax.grid(alpha=0.3)
    return fig


def _log_objective(name: str, values: list[float]) -> bool:
    """A model-size objective (`*num_parameters`) whose positive values span more than 10x goes on a log axis."""
    return name.endswith("num_parameters") and bool(values) and min(values) > 0 and max(values) > 10 * min(values)


def _hypervolume_figure(result: SearchResult, history: list[dict[str, Any]]) -> Figure:
    fig = _figure(10, 4.6)
    ax = fig.add_subplot()
    xs, ys = hypervolume_data(result, history)
    ax.step(xs, ys, where="post", color=_BEST_COLOR, linewidth=2)
    ax.set_xlabel("evaluations run, all trials (compute spent)")
    ax.xaxis.set_major_locator(_integer_ticks())
    ax.set_ylabel("hypervolume")
    ax.set_title(f"hypervolume of the front found so far ({', '.join(result.metrics)}; higher is better)")
    ax.grid(alpha=0.3)
    return fig


def _in_order(result: SearchResult, history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """History rows in the order their evaluations finished (the trial's start plus the row's `time_s`): the order
    `best_so_far_data`, `hypervolume_data` and `population_data` take them."""
    started = {t.trial_id: t.started_at for t in result.trials}
    rows = [r for r in history if r["trial_id"] in started]
    return sorted(rows, key=lambda r: (started[r["trial_id"]] + (r["time_s"] or 0.0), r["evaluation"]))


# ---------------------------------------------------------------------- html

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px;
       padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } .sub { color: #555; margin-top: 0; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.92em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.3em 0.7em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.best td { background: #fff6d5; font-weight: 600; }
.badge { display: inline-block; padding: 0.15em 0.6em; margin-right: 0.4em; border-radius: 1em; color: white; }
.badge.zero { opacity: 0.35; }
.completed { background: #1f77b4; } .stopped_early, .pruned, .timed_out { background: #ff7f0e; }
.errored { background: #d62728; } .running { background: #2ca02c; }
.note { background: #eef7ee; border-left: 4px solid #2ca02c; padding: 0.5em 0.8em; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { color: #555; font-size: 0.9em; margin-top: 0.3em; }
pre { white-space: pre-wrap; max-height: 14em; overflow: auto; margin: 0; font-size: 0.85em; }
"""


def _html_page(result: SearchResult, images: dict[str, bytes], *, top_k: int, as_of: str) -> str:
    name = Path(result.experiment_dir).resolve().name
    title = f"{name}: search report"
    parts = [
        f"<h1>{_e(title)}</h1>",
        f'<p class="sub">{_objectives_html(result)} · {len(result.trials)} trials · results as of {_e(as_of)}</p>',
        _counts_html(result),
        f"<p>{_e(result.summary_line())}</p>",
        f"<h2>Top {min(top_k, len(result.ranked()))} trials</h2>",
        _top_table_html(result, top_k),
        *_figures_html(result, images),
        "<h2>Errored trials</h2>",
        _errors_html(result),
    ]
    body = "\n".join(parts)
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{_e(title)}</title>\n'
        f"<style>{_CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def _objectives_html(result: SearchResult) -> str:
    """'metric <b>M</b> (mode max: higher is better)', or for several objectives each one's name and mode."""
    named = [f"<b>{_e(metric)}</b> (mode {_e(mode)}: {_direction(mode)})" for metric, mode in _objectives(result)]
    return f"objectives {', '.join(named)}" if result.multi_objective else f"metric {named[0]}"


def _counts_html(result: SearchResult) -> str:
    counts = result.counts()
    badges = [
        f'<span class="badge {status}{"" if counts[status] else " zero"}">{counts[status]} {_e(status)}</span>'
        for status in STATUSES
    ]
    html_text = f'<p class="counts">{"".join(badges)}</p>'
    if counts["running"]:
        html_text += (
            f'<p class="note">{counts["running"]} trial(s) still running, or left running when the search was '
            "killed: their curves end at their latest evaluation.</p>"
        )
    return html_text


def _top_table_html(result: SearchResult, top_k: int) -> str:
    """The top-k trials (by Pareto rank for several objectives: a column per objective and the pareto flag); the
    best trial's row highlighted, or the front trials' rows."""
    top = result.ranked()[:top_k]
    highlighted = _highlighted(result)
    names = sorted({name for t in top for name in t.params})
    objectives = [*result.metrics, "pareto"] if result.multi_objective else [result.metric]
    header = "".join(f"<th>{_e(h)}</th>" for h in ["#", "trial", *objectives, "status", "evaluations", *names])
    rows = [f"<tr>{header}</tr>"]
    for rank, t in enumerate(top, start=1):
        cells = [f'<td class="num">{rank}</td>', f"<td>{_e(t.trial_id)}</td>"]
        if result.multi_objective:
            cells += [f'<td class="num">{_e(format_value(v))}</td>' for v in t.objectives]
            cells.append(f"<td>{'yes' if t.pareto else '-'}</td>")
        else:
            cells.append(f'<td class="num">{_e(format_value(t.best_metric))}</td>')
        cells += [f"<td>{_e(t.status)}</td>", f'<td class="num">{t.evaluations}</td>']
        cells += [f"<td>{_e(format_value(t.params[n]) if n in t.params else '-')}</td>" for n in names]
        css = ' class="best"' if t in highlighted else ""
        rows.append(f"<tr{css}>{''.join(cells)}</tr>")
    return '<table class="top">\n' + "\n".join(rows) + "\n</table>"


_FIGURE_TITLES = {
    CURVES_PNG: "Learning curves",
    POPULATION_PNG: "Population",
    PARAMS_PNG: "Params",
    BEST_SO_FAR_PNG: "Best so far",
    PARETO_PNG: "Pareto front",
    HYPERVOLUME_PNG: "Hypervolume",
}


def _figures_html(result: SearchResult, images: dict[str, bytes]) -> list[str]:
    """A figure per image, in the order of `images`."""
    if result.multi_objective:
        first = " (the first objective)"
        highlighted = "the trials on the Pareto front are black, named at their end when there are few."
        starred = "Stars are the trials on the Pareto front."
    else:
        first = ""
        highlighted = "the best trial is black, its best point a star."
        starred = "The star is the best trial."
    captions = {
        CURVES_PNG: f"Learning curves: {result.metric}{first} at each evaluation of every trial. Trials pruned, "
        "stopped_early or timed_out are lighter and end in an x at their last evaluation; errored trials are "
        f"dashed; running trials end in a triangle at their latest evaluation; {highlighted}",
        PARAMS_PNG: f"Best {result.metric}{first} of each trial that reported one (errored trials left out) against "
        "each searched param, colored by status as in the learning curves; params the space samples on a log "
        f"scale, and params whose values span more than two decades, are on a log axis. {starred}",
        BEST_SO_FAR_PNG: f"Best {result.metric} found so far against the evaluations run by all trials together, "
        "in the order they finished (the compute spent); grey dots are single evaluations.",
        POPULATION_PNG: f"Population: {result.metric} against the training step of every trial, colored by the "
        "lineage of the weights it carries, named by the trial that trained them from step 0: its own until it "
        "takes another trial's checkpoint (an exploit), then that trial's lineage as of the step it copied. A "
        "diamond marks each exploit at the copied step and the trial's first evaluation after it; a dashed line "
        f"joins the copied point to that evaluation. Lineages past the {len(_LINEAGE_COLORS)} that most trials "
        "carry at the end are grey.",
    }
    if result.multi_objective:
        captions.update(_front_captions(result))
    parts = []
    for file_name in images:
        title = _FIGURE_TITLES[file_name]
        data = base64.b64encode(images[file_name]).decode("ascii")
        parts.append(
            f'<h2>{_e(title)}</h2>\n<figure><img src="data:image/png;base64,{data}" alt="{_e(title)}">'
            f"<figcaption>{_e(captions[file_name])} ({_e(file_name)})</figcaption></figure>"
        )
    return parts


def _front_captions(result: SearchResult) -> dict[str, str]:
    """The captions of the figures only a search of several objectives has."""
    return {
        PARETO_PNG: f"Pareto front: {result.metrics[1]} against {result.metrics[0]} of every trial, at its best "
        f"evaluation by {result.metric}. The front of the finished trials (completed or stopped_early) is black, "
        "joined by the staircase of what it dominates; finished trials off it are lighter; pruned and timed_out "
        "trials, judged on a smaller budget, are lighter still (x); running trials (a triangle) show their values "
        "so far; errored trials are left out. A model-size axis whose values span more than 10x is logarithmic.",
        HYPERVOLUME_PNG: f"Hypervolume of the front of every value found so far ({', '.join(result.metrics)}) "
        "against the evaluations run by all trials together, in the order they finished (the compute spent). A "
        "trial's values count from the evaluation that found them, whatever became of it later (pruned, still "
        "running); errored trials' never. The reference point is each objective's worst value found, moved 10% "
        "of its range further, fixed for the whole curve.",
    }


def _errors_html(result: SearchResult) -> str:
    errored = [t for t in result.trials if t.status == "errored"]
    if not errored:
        return "<p>none</p>"
    rows = ["<tr><th>trial</th><th>evaluations</th><th>params</th><th>error</th></tr>"]
    for t in errored:
        params = ", ".join(f"{k}={format_value(v)}" for k, v in sorted(t.params.items()))
        rows.append(
            f"<tr><td>{_e(t.trial_id)}</td><td class='num'>{t.evaluations}</td><td>{_e(params)}</td>"
            f"<td><pre>{_e(t.error or 'no message')}</pre></td></tr>"
        )
    return '<table class="errors">\n' + "\n".join(rows) + "\n</table>"


# ---------------------------------------------------------------------- small helpers


def _header_line(result: SearchResult) -> str:
    counts = ", ".join(f"{n} {status}" for status, n in result.counts().items() if n)
    name = Path(result.experiment_dir).resolve().name
    if result.multi_objective:
        named = ", ".join(f"{metric} ({_direction(mode)})" for metric, mode in _objectives(result))
        return f"{name}: {len(result.trials)} trials ({counts}); objectives {named}"
    return f"{name}: {len(result.trials)} trials ({counts}); {result.metric}, {_direction(result.mode)}"


def _objectives(result: SearchResult) -> list[tuple[str, str]]:
    return list(zip(result.metrics, result.modes, strict=True))


def _highlighted(result: SearchResult) -> list[TrialRecord]:
    """The trials the figures and the table single out: the best trial (none before there is one), or for several
    objectives, which have no one best, the trials on the Pareto front."""
    if result.multi_objective:
        return result.pareto
    best = result.best
    return [best] if best is not None else []


def _style(trial: TrialRecord) -> str:
    return STYLE_OF_STATUS.get(trial.status, "running")


def _metric(row: dict[str, Any]) -> float:
    """A history row's value of the search metric; NaN where it has none."""
    return math.nan if row["metric"] is None else row["metric"]


def _better(value: float, than: float, mode: str) -> bool:
    return value > than if mode == "max" else value < than


def _direction(mode: str) -> str:
    return "higher is better" if mode == "max" else "lower is better"


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)
