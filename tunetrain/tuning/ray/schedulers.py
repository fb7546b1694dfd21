"""Ray Tune schedulers of ours (built by name in `tunetrain.tuning.components`)."""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import ASHAScheduler

from tunetrain.tuning.ray.protocol import EVALUATION, values_of
from tunetrain.tuning.ray.search_state import SearchState


class EarlyStopRecordingASHA(ASHAScheduler):
    """ASHA that records which trials it stopped before their budget (max_t) in the search's state."""

    def __init__(self, search_state: SearchState, **asha: Any) -> None:
        super().__init__(**asha)
        self.search_state = search_state

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if values_of(result).get("error"):  # the trial's last report, ending it: no rung for it
            return self.CONTINUE
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == self.STOP and result.get(EVALUATION, 0) < self._max_t:
            self.search_state.stopped_early.add(trial.trial_id)
        return decision
