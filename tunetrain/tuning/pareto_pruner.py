"""`ParetoHalvingPruner`: successive halving on several objectives for an Optuna study (the optuna backend).

Optuna's `Trial.report` and `should_prune` refuse a study of several objectives, so the values a trial reaches at a
rung are kept as a user attr of the trial (`rung_N`: a list, one value per objective; visible in optuna-dashboard),
and the rule is the one the Ray backend's `ParetoASHA` applies: `tunetrain.tuning.pareto.survives_rung` over every
trial of the study that reached the rung. This module imports optuna (`components.make_pruner` imports it lazily).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.pruners import BasePruner

from tunetrain.tuning.pareto import rung_milestones, survives_rung

RUNG_ATTR = "rung_{}"  # the user attr of a trial's values at the rung of that many evaluations


class ParetoHalvingPruner(BasePruner):
    """Rungs at grace_period x reduction_factor^k evaluations, below `max_t`. At each, a trial goes on if fewer than
    max(1, floor(n / reduction_factor)) of the n trials that reached it rank strictly ahead of it, by Pareto front
    and crowding distance (`survives_rung`). The caller records a trial's values with `report` (the backend's
    reporter does, at every evaluation) and asks `prune` right after; a trial re-run after an interruption (the same
    `trial_id` user attr) counts once, as its latest run."""

    def __init__(self, *, modes: Sequence[str], grace_period: int, reduction_factor: float, max_t: int) -> None:
        self.modes = tuple(modes)
        self.reduction_factor = reduction_factor
        self.rungs = rung_milestones(grace_period, reduction_factor, max_t)

    def report(self, trial: optuna.Trial, evaluation: int, values: Sequence[float]) -> bool:
        """Record the trial's values at `evaluation` if it is a rung; whether it is."""
        if evaluation not in self.rungs:
            return False
        # JSON keeps no NaN: a missing or non-finite value is None (the trial then ranks last at the rung)
        trial.set_user_attr(RUNG_ATTR.format(evaluation), [_json_number(v) for v in values])
        return True

    def prune(self, study: optuna.Study, trial: Any) -> bool:
        """Whether the trial stops at the latest rung it reached (False before its first)."""
        reached = [rung for rung in self.rungs if RUNG_ATTR.format(rung) in trial.user_attrs]
        if not reached:
            return False
        key = RUNG_ATTR.format(reached[-1])
        at_rung: dict[Any, list[float | None]] = {}  # trial id -> values, in the order trials began
        for other in study.get_trials(deepcopy=False):
            identity = other.user_attrs.get("trial_id", other.number)
            if other.number == trial.number:
                continue
            if key in other.user_attrs:
                at_rung[identity] = other.user_attrs[key]
            else:
                at_rung.pop(identity, None)  # a later run of the same trial has not got there again yet
        own = trial.user_attrs.get("trial_id", trial.number)
        at_rung.pop(own, None)  # an earlier run of this very trial
        at_rung[own] = trial.user_attrs[key]
        order = list(at_rung)
        return not survives_rung(order.index(own), [at_rung[t] for t in order], self.modes, self.reduction_factor)


def _json_number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None
