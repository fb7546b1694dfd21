"""Ray Tune schedulers of ours (built by name in `tunetrain.tuning.components`), all in the driver.

- `EarlyStopRecordingASHA`: Ray's async ASHA, recording which trials it stopped early (Optuna is told PRUNED).
- `PromotingASHA`: successive halving that pauses: a trial waits at each rung, paused (its resources given back),
  and is resumed from its own checkpoint when it ranks in the top 1/reduction_factor of its rung (ASHA's
  promotions, Li et al. 2020). The first trials to reach a rung no longer go on by default.
- `ParetoASHA`: async successive halving on several objectives (MO-ASHA): at each rung a trial goes on if its
  values rank in the top 1/reduction_factor of the rung's by Pareto front and crowding distance
  (`tunetrain.tuning.pareto.survives_rung`, the Optuna backend's `ParetoHalvingPruner` rule too).
- `ExactPBT`: Ray's PopulationBasedTraining deciding when and from whom, with our exact checkpoints: an exploit
  copies the donor's checkpoint into the receiver's dir (`tunetrain.tuning.lineage`) and the explore step stays
  inside the search space (`tunetrain.tuning.explore`).

A scheduler's own state is not in Ray's snapshots (Ray pickles the one it was built with): a restored search
gives it what the experiment dir holds (`PromotingASHA.take_up_history`; PBT reads the trials' lineages).
"""

from __future__ import annotations

import json
import logging
import math
import random
from typing import TYPE_CHECKING, Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining
from ray.tune.schedulers.pbt import _PBTTrialState

from tunetrain.storage import is_dir
from tunetrain.storage.layout import EXPLOIT_DIR
from tunetrain.tuning.explore import explore
from tunetrain.tuning.lineage import commit_exploit, read_lineage
from tunetrain.tuning.pareto import rung_milestones, survives_rung
from tunetrain.tuning.ray.protocol import CURRENT, EVALUATION, OBJECTIVE, objective_keys, values_of
from tunetrain.tuning.ray.search_state import SearchState

if TYPE_CHECKING:
    from tunetrain.space import SearchSpace
    from tunetrain.storage import ExperimentDir

logger = logging.getLogger(__name__)


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


class ParetoASHA(FIFOScheduler):
    """Asynchronous successive halving on several objectives (see the module docstring).

    Rungs at grace_period x reduction_factor^k evaluations, below max_t. A trial reaching a rung for the first time
    has its values there recorded (the report's objective keys: each objective at its best evaluation by the first)
    and goes on if fewer than max(1, floor(n / reduction_factor)) of the n recorded at that rung rank strictly ahead
    of them (`survives_rung`), else it is stopped (pruned). Every trial is stopped at max_t (completed), as Ray's
    ASHA does.
    """

    _supports_buffered_results = False  # a stop must come at the very report that reaches the rung

    def __init__(
        self,
        search_state: SearchState,
        *,
        metrics: tuple[str, ...],
        modes: tuple[str, ...],
        max_t: int,
        grace_period: int,
        reduction_factor: float,
    ) -> None:
        super().__init__()
        self.search_state = search_state
        self.metrics, self.modes = tuple(metrics), tuple(modes)
        self._keys = objective_keys(len(self.modes))
        self._max_t = max_t
        self._eta = reduction_factor
        self.rungs = rung_milestones(grace_period, reduction_factor, max_t)
        self._values: dict[int, dict[str, list[float]]] = {rung: {} for rung in self.rungs}  # rung -> trial -> values

    def __getstate__(self) -> dict[str, Any]:  # Ray pickles the scheduler it was built with: start empty again
        return {**self.__dict__, "_values": {rung: {} for rung in self.rungs}}

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True  # metrics and modes are ours

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        values = values_of(result)
        if values.get("error") or EVALUATION not in result:
            return self.CONTINUE
        evaluation = int(result[EVALUATION])
        if evaluation >= self._max_t:
            return self.STOP
        rung = self._values.get(evaluation)
        if rung is None or trial.trial_id in rung:  # not a rung, or reached again by a resumed trial
            return self.CONTINUE
        rung[trial.trial_id] = [result.get(key) for key in self._keys]
        if values.get("last"):  # it ends here by itself: its values count at the rung, there is nothing to stop
            return self.CONTINUE
        order = list(rung)
        if survives_rung(order.index(trial.trial_id), [rung[t] for t in order], self.modes, self._eta):
            return self.CONTINUE
        self.search_state.stopped_early.add(trial.trial_id)
        logger.debug("trial %s stopped at rung %d (Pareto rank)", trial.trial_id, evaluation)
        return self.STOP

    def debug_string(self) -> str:
        sizes = ", ".join(f"{rung}: {len(values)}" for rung, values in self._values.items())
        return f"ParetoASHA: trials at each rung {{{sizes}}}"

    def take_up_history(self, rows: list[dict[str, Any]]) -> None:
        """A restored search: each trial's values at the rungs, as `rows` (history.parquet's) have them."""
        from tunetrain.tuning.pareto import running_objectives

        self._values = {rung: {} for rung in self.rungs}
        by_trial: dict[str, list[dict[str, Any]]] = {}
        for row in sorted(rows, key=lambda row: row["evaluation"]):
            by_trial.setdefault(row["trial_id"], []).append(row)
        for trial_id, trial_rows in by_trial.items():
            entries = [json.loads(row["metrics"] or "{}") for row in trial_rows]
            for row, vector in zip(trial_rows, running_objectives(entries, self.metrics, self.modes), strict=True):
                if row["evaluation"] in self._values:
                    self._values[row["evaluation"]][trial_id] = vector


class PromotingASHA(FIFOScheduler):
    """Successive halving with pauses (see the module docstring).

    Rungs at grace_period x reduction_factor^k evaluations, below max_t. A trial reaching a rung goes on at once if
    it is already in the rung's top 1/reduction_factor (by its objective, the best evaluation so far), else it
    pauses. When a slot is free (`choose_trial_to_run`), the best promotable paused trial of the highest rung is
    resumed before any new trial. Once every trial of the search has started and none is running, pending or
    promotable, the best paused trial of the highest rung goes on to max_t if no trial has got there yet, and the
    trials still paused are then stopped: pruned, as ASHA's stopped trials are.
    """

    _supports_buffered_results = False  # a pause must come at the very report that reaches the rung

    def __init__(
        self,
        search_state: SearchState,
        *,
        num_samples: int | None,
        metric: str,
        mode: str,
        max_t: int,
        grace_period: int,
        reduction_factor: float,
    ) -> None:
        super().__init__()
        self.search_state = search_state
        self._metric, self._mode = metric, mode
        self._max_t = max_t
        self._eta = reduction_factor
        self.rungs = rung_milestones(grace_period, reduction_factor, max_t)
        self._num_samples = num_samples
        self._reset()

    def _reset(self) -> None:
        self._values: dict[int, dict[str, float]] = {rung: {} for rung in self.rungs}  # rung -> trial -> objective
        self._promoted: dict[int, set[str]] = {rung: set() for rung in self.rungs}
        self._waiting: dict[str, int] = {}  # paused trial -> the rung it waits at
        self._reached_max_t = False  # some trial has trained to max_t (or is on its way there at the end)

    def __getstate__(self) -> dict[str, Any]:  # Ray pickles the scheduler it was built with: start empty again
        state = dict(self.__dict__)
        state.update(_values={rung: {} for rung in self.rungs}, _promoted={rung: set() for rung in self.rungs},
                     _waiting={}, _reached_max_t=False)  # fmt: skip
        return state

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True  # metric and mode are ours (the objective, the search's mode)

    # --- Tune's hooks

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        # a restored search: Ray makes every unfinished trial PENDING again, and starts every PENDING trial itself;
        # one that waited at a rung waits on (`take_up_history` said which)
        if trial.trial_id in self._waiting and trial.status == Trial.PENDING:
            trial.set_status(Trial.PAUSED)

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        values = values_of(result)
        if values.get("error") or EVALUATION not in result:
            return self.CONTINUE
        evaluation, value = int(result[EVALUATION]), float(result[OBJECTIVE])
        for rung in self.rungs:
            if rung <= evaluation:
                self._values[rung].setdefault(trial.trial_id, value)
        if evaluation >= self._max_t:
            self._reached_max_t = True
            return self.STOP
        if values.get("last"):  # it ends here by itself (its budget, or its own early stopping)
            return self.CONTINUE
        if evaluation not in self._values or trial.trial_id in self._promoted[evaluation]:
            return self.CONTINUE
        if self._promotable(trial.trial_id, evaluation):
            self._promoted[evaluation].add(trial.trial_id)
            self._sync_paused()  # it may have taken the place of the promotion a pause had handed its slot to
            return self.CONTINUE
        self._waiting[trial.trial_id] = evaluation
        self._sync_paused()
        logger.debug("trial %s waits at rung %d", trial.trial_id, evaluation)
        return self.PAUSE

    def choose_trial_to_run(self, tune_controller: Any) -> Trial | None:
        trials = tune_controller.get_trials()
        paused = {t.trial_id: t for t in trials if t.status == Trial.PAUSED and t.trial_id in self._waiting}
        promotion = self._next_promotion(among=paused)
        if promotion is not None:
            rung = self._waiting.pop(promotion)
            self._promoted[rung].add(promotion)
            self._sync_paused()
            logger.debug("trial %s promoted from rung %d", promotion, rung)
            return paused[promotion]
        pending = next((t for t in trials if t.status == Trial.PENDING), None)
        if pending is not None:
            return pending
        active = any(t.status in (Trial.RUNNING, Trial.PENDING) for t in trials)
        if paused and not active and self._num_samples is not None and len(trials) >= self._num_samples:
            # every trial has started and none will come to fill the rungs: the best of the highest rung reached
            # goes on to max_t (as the last bracket of a synchronous halving would), once; the rest are pruned
            if not self._reached_max_t:
                best = next(trial_id for rung in reversed(self.rungs) for trial_id in self._ranked(rung)
                            if self._waiting.get(trial_id) == rung and trial_id in paused)  # fmt: skip
                self._promoted[self._waiting.pop(best)].add(best)
                self._reached_max_t = True  # it will: no other trial goes on for it
                self._sync_paused()
                return paused[best]
            for trial in paused.values():  # the search is over for them: nothing will promote them any more
                self.search_state.stopped_early.add(trial.trial_id)
                tune_controller.stop_trial(trial)
        return None

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict) -> None:
        self._forget(trial)

    def on_trial_error(self, tune_controller: Any, trial: Trial) -> None:
        self._forget(trial)

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        self._forget(trial)

    def debug_string(self) -> str:
        sizes = ", ".join(f"{rung}: {len(values)}" for rung, values in self._values.items())
        return f"PromotingASHA: trials at each rung {{{sizes}}}, {len(self._waiting)} paused"

    # --- the rungs

    def _next_promotion(self, *, among: dict[str, Any] | None = None, exclude: str | None = None) -> str | None:
        """The waiting trial to resume first (of `among`, if given): the best promotable one of the highest rung."""
        for rung in reversed(self.rungs):
            for trial_id in self._ranked(rung):
                if trial_id == exclude or (among is not None and trial_id not in among):
                    continue
                if self._waiting.get(trial_id) == rung and self._promotable(trial_id, rung):
                    return trial_id
        return None

    def _promotable(self, trial_id: str, rung: int) -> bool:
        """In the top floor(n / reduction_factor) of the n trials that reached `rung`, and not promoted from it."""
        top = math.floor(len(self._values[rung]) / self._eta)
        return trial_id not in self._promoted[rung] and trial_id in self._ranked(rung)[:top]

    def _ranked(self, rung: int) -> list[str]:
        values = self._values[rung]
        return sorted(values, key=lambda trial_id: values[trial_id], reverse=self._mode == "max")

    def _forget(self, trial: Trial) -> None:
        self._waiting.pop(trial.trial_id, None)
        self._sync_paused()

    def _sync_paused(self) -> None:
        """The trials the searcher does not count as running: those waiting, but the next to be promoted (the slot a
        pausing trial frees goes to a promotion before a new trial). Recomputed at each change, so a promotion that
        a better arrival took back never keeps a slot."""
        reserved = self._next_promotion()
        paused = self.search_state.paused
        paused.clear()
        paused.update(trial_id for trial_id in self._waiting if trial_id != reserved)

    def take_up_history(self, rows: list[dict[str, Any]], running: set[str]) -> None:
        """A restored search: the rungs as the history has them (`rows`, as history.parquet holds them). A trial of
        `running` (not ended) whose last evaluation is at a rung was paused there."""
        self._reset()
        by_trial: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_trial.setdefault(row["trial_id"], []).append(row)
        sign = 1 if self._mode == "max" else -1
        for trial_id, trial_rows in by_trial.items():
            trial_rows.sort(key=lambda row: row["evaluation"])
            best, last = None, 0
            self._reached_max_t |= trial_rows[-1]["evaluation"] >= self._max_t
            for row in trial_rows:
                value = row["metric"]
                if value is not None and math.isfinite(value) and (best is None or sign * value > sign * best):
                    best = value
                last = row["evaluation"]
                if last in self._values and best is not None:
                    self._values[last][trial_id] = best
            self._promoted.update({rung: self._promoted[rung] | {trial_id} for rung in self.rungs if last > rung})
            if last in self._values and trial_id in running and trial_id not in self._promoted[last]:
                self._waiting[trial_id] = last
        self._sync_paused()


class ExactPBT(PopulationBasedTraining):
    """Ray's PopulationBasedTraining with our checkpoints and our space (see the module docstring).

    Ray's PBT decides: every `perturbation_interval` evaluations a trial's latest evaluation (`CURRENT`) is ranked
    among the population's; one in the bottom quantile exploits one of the top. The exploit is ours: the donor's
    latest checkpoint (its best too) is copied into the receiver's dir, its lineage carried over, and the receiver
    is paused with the explored params as its config; when Ray starts it again it takes the copy up and resumes
    from it exactly. Ray's own checkpoints (a trial's token) are not used; a top trial is not asked to save (its
    checkpoint of that evaluation is already on disk). Ray refuses a searcher with its PBT (the searcher would see
    configs change under it); ours only proposes the population's starting params, and is told the trials'
    values as they go, which are those of the lineages they carry.
    """

    _supports_buffered_results = False

    def __init__(
        self,
        search_state: SearchState,
        *,
        space: SearchSpace,
        mutations: tuple[str, ...],
        exp_dir: ExperimentDir,
        mode: str,
        seed: int,
        perturbation_interval: int,
        burn_in_period: int,
        quantile_fraction: float,
        resample_probability: float,
    ) -> None:
        super().__init__(
            time_attr=EVALUATION,
            metric=CURRENT,
            mode=mode,
            perturbation_interval=perturbation_interval,
            burn_in_period=burn_in_period,
            hyperparam_mutations={name: [] for name in mutations},  # Ray asks for some; ours explores (below)
            quantile_fraction=quantile_fraction,
            resample_probability=resample_probability,
            log_config=False,  # its policy files go next to Ray's state; the lineage is in the trials' dirs
        )
        self.search_state = search_state
        self.space = space
        self.mutations = mutations
        self.exp_dir = exp_dir
        self.rng = random.Random(seed)

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True  # metric (CURRENT) and mode are ours

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        # Ray's own refuses any searcher, and fills absent mutated params into the config (a `when:` param must stay
        # absent while its condition is false)
        self._trial_state[trial] = _PBTTrialState(trial)

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        values = values_of(result)
        if values.get("error") or values.get("last") or CURRENT not in result:
            return self.CONTINUE  # the trial's last report: its budget is spent, an exploit would train it again
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == self.PAUSE or trial.status == Trial.PAUSED:
            self.search_state.paused.add(trial.trial_id)
        return decision

    def choose_trial_to_run(self, tune_controller: Any) -> Trial | None:
        trial = super().choose_trial_to_run(tune_controller)
        if trial is not None:
            self.search_state.paused.discard(trial.trial_id)
        return trial

    def _checkpoint_or_exploit(
        self, trial: Trial, tune_controller: Any, upper_quantile: list[Trial], lower_quantile: list[Trial]
    ) -> None:
        state = self._trial_state[trial]
        # a top trial's checkpoint of this evaluation is in its own dir already: nothing to ask it to save
        state.last_checkpoint = self.exp_dir.trial_path(trial.trial_id) if trial in upper_quantile else None
        if trial in lower_quantile and upper_quantile:
            self._exploit(tune_controller, trial, self.rng.choice(upper_quantile))

    def _exploit(self, tune_controller: Any, trial: Trial, trial_to_clone: Trial) -> None:
        filesystem = self.exp_dir.filesystem
        donor_path = self.exp_dir.trial_path(trial_to_clone.trial_id)
        receiver_path = self.exp_dir.trial_path(trial.trial_id)
        if is_dir(filesystem, f"{donor_path}/{EXPLOIT_DIR}"):  # it has just exploited another: not taken up yet
            logger.info("PBT: trial %s is taking another's checkpoint up: trial %s goes on", trial_to_clone.trial_id,
                        trial.trial_id)  # fmt: skip
            return
        # a trial's params are its lineage's; one never exploited has those it was started with, its config
        donor = read_lineage(filesystem, donor_path)
        donor_params = donor.params if donor is not None else dict(trial_to_clone.config)
        params, how = explore(
            donor_params, self.space, self.mutations, self.rng, resample_probability=self._resample_probability
        )
        exploit = commit_exploit(
            filesystem,
            receiver_path=receiver_path,
            receiver_id=trial.trial_id,
            receiver_params=dict(trial.config),
            donor_path=donor_path,
            donor_id=trial_to_clone.trial_id,
            donor=donor,
            donor_params=dict(trial_to_clone.config),
            params=params,
            evaluation=int(self._trial_state[trial].last_result.get(EVALUATION, 0)),
        )
        if exploit is None:
            logger.info("PBT: trial %s has no checkpoint to give: trial %s goes on", trial_to_clone.trial_id,
                        trial.trial_id)  # fmt: skip
            return
        changes = ", ".join(f"{name} {how[name]} -> {params.get(name)}" for name in how)
        logger.info(
            "PBT: trial %s takes trial %s's checkpoint of step %d and goes on with %s",
            trial.trial_id, trial_to_clone.trial_id, exploit.step, changes or "the same params",
        )  # fmt: skip
        if trial.status != Trial.PAUSED:
            tune_controller.pause_trial(trial, should_checkpoint=False)
            self.search_state.paused.add(trial.trial_id)
        trial.set_config(params)
        self._num_perturbations += 1
        donor_state, receiver_state = self._trial_state[trial_to_clone], self._trial_state[trial]
        receiver_state.last_perturbation_time = donor_state.last_perturbation_time
        receiver_state.last_train_time = donor_state.last_train_time
