"""Ranking on several objectives: non-dominated sorting, crowding distance, the rung rule of multi-objective
successive halving, and hypervolume; and a trial's values on them (`objective_values`, `running_objectives`).
Plain Python on lists of numbers, no imports beyond `math`.

One rule for every place that compares trials on several objectives: the Ray scheduler and the Optuna pruner at a
rung (`survives_rung`), the results' `pareto` flag and order (`pareto_front`, `rank`), and the report and the
benchmark's hypervolume (`hypervolume`, `reference_point`).

- A vector is one value per objective; `modes` says for each whether it is maximized (`max`) or minimized (`min`).
- A vector with a value that is not a finite number (NaN, an infinity, None) is *unusable*: it ranks after every
  usable one, is never on the front, and never goes on at a rung.
- `rank`: by front (Deb's non-dominated sorting: the front of vectors nothing dominates, then the front of those
  only the first dominates, ...), within a front by crowding distance, larger first (a front's extremes have an
  infinite one, so both ends of the trade-off go on), and then by arrival (the index: the earlier first). Equal
  vectors do not dominate each other: they share a front. An objective that is constant across a front adds nothing
  to the crowding distance, so one constant objective ranks as the other alone does.
- `survives_rung`: of the n vectors that reached a rung, the one just arrived goes on if fewer than
  max(1, floor(n / reduction_factor)) rank strictly ahead of it (Syne Tune's MO-ASHA; a tie goes to the newcomer;
  one objective gives ASHA's rule).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

Vector = Sequence[float | None]


def usable(vector: Vector) -> bool:
    """Every value a finite number."""
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in vector)


def _minimized(vector: Vector, modes: Sequence[str]) -> tuple[float, ...]:
    return tuple(-float(v) if mode == "max" else float(v) for v, mode in zip(vector, modes, strict=True))


def dominates(a: Vector, b: Vector, modes: Sequence[str]) -> bool:
    """`a` is at least as good as `b` in every objective and better in one (both usable)."""
    x, y = _minimized(a, modes), _minimized(b, modes)
    return all(p <= q for p, q in zip(x, y, strict=True)) and x != y


def nondominated_fronts(vectors: Sequence[Vector], modes: Sequence[str]) -> list[list[int]]:
    """The usable vectors' indices in fronts, best front first, each in index order (Deb's fast non-dominated sort,
    O(k n^2)). Unusable vectors are left out."""
    points = {i: _minimized(v, modes) for i, v in enumerate(vectors) if usable(v)}
    indices = list(points)
    dominated_by_count = dict.fromkeys(indices, 0)
    dominating: dict[int, list[int]] = {i: [] for i in indices}
    for position, i in enumerate(indices):
        for j in indices[position + 1 :]:
            p, q = points[i], points[j]
            if p == q:
                continue
            if all(a <= b for a, b in zip(p, q, strict=True)):
                dominating[i].append(j)
                dominated_by_count[j] += 1
            elif all(b <= a for a, b in zip(p, q, strict=True)):
                dominating[j].append(i)
                dominated_by_count[i] += 1
    fronts = []
    current = [i for i in indices if dominated_by_count[i] == 0]
    while current:
        fronts.append(current)
        following = []
        for i in current:
            for j in dominating[i]:
                dominated_by_count[j] -= 1
                if dominated_by_count[j] == 0:
                    following.append(j)
        current = sorted(following)
    return fronts


def crowding_distances(vectors: Sequence[Vector], modes: Sequence[str]) -> list[float]:
    """The crowding distance of each vector of one front (all usable): per objective, the gap between its two
    neighbours in that objective over the front's range; the two extremes get infinity. An objective with no range
    (constant) adds nothing."""
    n = len(vectors)
    distances = [0.0] * n
    if n <= 2:
        return [math.inf] * n
    points = [_minimized(v, modes) for v in vectors]
    for k in range(len(modes)):
        order = sorted(range(n), key=lambda i: (points[i][k], i))
        low, high = points[order[0]][k], points[order[-1]][k]
        if high == low:
            continue
        distances[order[0]] = distances[order[-1]] = math.inf
        for before, i, after in zip(order, order[1:], order[2:], strict=False):
            distances[i] += (points[after][k] - points[before][k]) / (high - low)
    return distances


def rank(vectors: Sequence[Vector], modes: Sequence[str]) -> list[int]:
    """Every index, best first (see the module docstring): front, then crowding distance, then arrival; unusable
    vectors last, in arrival order."""
    keys = _rank_keys(vectors, modes)
    usable_order = sorted(keys, key=lambda i: (*keys[i], i))
    return usable_order + [i for i, vector in enumerate(vectors) if not usable(vector)]


def _rank_keys(vectors: Sequence[Vector], modes: Sequence[str]) -> dict[int, tuple[int, float]]:
    """Each usable vector's (front, -crowding distance): smaller ranks first."""
    keys: dict[int, tuple[int, float]] = {}
    for number, front in enumerate(nondominated_fronts(vectors, modes)):
        distances = crowding_distances([vectors[i] for i in front], modes)
        keys.update({i: (number, -distance) for i, distance in zip(front, distances, strict=True)})
    return keys


def pareto_front(vectors: Sequence[Vector], modes: Sequence[str]) -> list[int]:
    """The indices of the usable vectors no other dominates, in index order."""
    fronts = nondominated_fronts(vectors, modes)
    return fronts[0] if fronts else []


def survives_rung(candidate: int, vectors: Sequence[Vector], modes: Sequence[str], reduction_factor: float) -> bool:
    """Whether `vectors[candidate]` goes on from a rung that `vectors` (itself among them) reached: it is usable and
    fewer than max(1, floor(n / reduction_factor)) vectors rank strictly ahead of it (a better front, or the same
    front and a larger crowding distance). A tie goes to the candidate, as in ASHA (the newcomer at a rung is the one
    judged; the others were judged when they came): both ends of a front have an infinite crowding distance, and
    the first trial at an end must not shut out a later one that holds the same end better."""
    if not usable(vectors[candidate]):
        return False
    keep = max(1, math.floor(len(vectors) / reduction_factor))
    keys = _rank_keys(vectors, modes)
    ahead = sum(key < keys[candidate] for i, key in keys.items() if i != candidate)
    return ahead < keep


def rung_milestones(grace_period: int, reduction_factor: float, max_t: int) -> list[int]:
    """The evaluations at which successive halving judges a trial: grace_period x reduction_factor^k (rounded up),
    below max_t."""
    rungs, k = [], 0
    while (rung := math.ceil(grace_period * reduction_factor**k)) < max_t:
        if not rungs or rung > rungs[-1]:
            rungs.append(rung)
        k += 1
    return rungs


def objective_values(metrics: dict[str, Any], state: Any, names: tuple[str, ...]) -> list[float]:
    """A trial's values so far on several objectives: each of `names` at its best evaluation by the first (the
    evaluation its best checkpoint holds), or at this evaluation (`metrics`) before it has a best. A missing value
    is NaN (the trial then ranks last)."""
    entry = metrics
    if state.best_global_step is not None:
        entry = next(
            (e for e in reversed(state.log_history) if names[0] in e and e.get("step") == state.best_global_step),
            metrics,
        )
    return [_number(entry.get(name)) for name in names]


def running_objectives(
    entries: list[dict[str, Any]], names: tuple[str, ...], modes: tuple[str, ...]
) -> list[list[float]]:
    """`objective_values` after each of a trial's evaluations (`entries`, in order, each with its metrics), as the
    loop tracks the best by the first metric: a finite value strictly better than the best so far."""
    out: list[list[float]] = []
    best: list[float] | None = None
    for entry in entries:
        vector = [_number(entry.get(name)) for name in names]
        value = vector[0]
        if math.isfinite(value) and (best is None or (value > best[0] if modes[0] == "max" else value < best[0])):
            best = vector
        out.append(list(best) if best is not None else vector)
    return out


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def reference_point(vectors: Sequence[Vector], modes: Sequence[str], margin: float = 0.1) -> tuple[float, ...]:
    """A reference point for `hypervolume`: each objective's worst usable value, moved `margin` of its range further
    (of its magnitude, or 1, where the range is 0), so that the worst points still add volume. Raises ValueError
    without a usable vector."""
    points = [_minimized(v, modes) for v in vectors if usable(v)]
    if not points:
        raise ValueError("no usable vector: a reference point needs one")
    worst = []
    for k in range(len(modes)):
        values = [p[k] for p in points]
        span = max(values) - min(values) or abs(max(values)) or 1.0
        worst.append(max(values) + margin * span)
    return tuple(-w if mode == "max" else w for w, mode in zip(worst, modes, strict=True))


def hypervolume(vectors: Sequence[Vector], modes: Sequence[str], reference: Vector) -> float:
    """The volume that the usable vectors dominate, bounded by `reference` (in the objectives' own units and
    directions). Vectors not better than the reference in every objective add nothing. Exact: a sweep in two
    objectives, slices along the first in more."""
    ref = _minimized(reference, modes)
    points = [
        p
        for v in vectors
        if usable(v)
        for p in [_minimized(v, modes)]
        if all(a < r for a, r in zip(p, ref, strict=True))
    ]
    return _volume(points, ref)


def _volume(points: list[tuple[float, ...]], ref: tuple[float, ...]) -> float:
    if not points:
        return 0.0
    if len(ref) == 1:
        return ref[0] - min(p[0] for p in points)
    if len(ref) == 2:
        total, best_y = 0.0, ref[1]
        for x, y in sorted(points):
            if y < best_y:
                total += (ref[0] - x) * (best_y - y)
                best_y = y
        return total
    # slice along the first objective: between consecutive values, the points at or below the slice's start
    xs = sorted({p[0] for p in points})
    total = 0.0
    for start, end in zip(xs, [*xs[1:], ref[0]], strict=True):
        inside = [p[1:] for p in points if p[0] <= start]
        total += (end - start) * _volume(inside, ref[1:])
    return total
