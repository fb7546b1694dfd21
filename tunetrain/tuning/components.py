"""Samplers, pruners and schedulers, built in one place by the names an experiment file uses.

- `SAMPLERS` (`search.sampler`): name -> a builder of the Optuna sampler, used by both backends (the ray backend
  through OptunaSearch).
- `SCHEDULERS` (`search.scheduler.type`): name -> the pair that stops trials early on each backend: an Optuna pruner
  (optuna backend) and a Ray Tune scheduler (ray backend; None for Ray's default FIFO).

A new sampler or scheduler is one entry here plus its code; `SearchConfig` checks names against these keys. Nothing is
imported from optuna or ray until a builder runs.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunetrain.errors import ConfigError

if TYPE_CHECKING:
    from optuna.pruners import BasePruner
    from optuna.samplers import BaseSampler

    from tunetrain.space import SearchSpace
    from tunetrain.storage import ExperimentDir
    from tunetrain.tuning.config import SearchConfig
    from tunetrain.tuning.ray.search_state import SearchState

logger = logging.getLogger(__name__)


# --- samplers ---------------------------------------------------------------------------------------------------


def _tpe(config: SearchConfig, space: SearchSpace) -> BaseSampler:
    import optuna

    with warnings.catch_warnings():
        # `group` is an experimental argument in Optuna 5.0 and warns at every construction
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=config.seed,
            multivariate=True,
            group=any(space[name].when is not None for name in space),
            constant_liar=config.max_concurrent_trials > 1,
        )


def _nsga2(config: SearchConfig, space: SearchSpace) -> BaseSampler:
    import optuna

    population = nsga2_population(config.num_trials)
    if config.scheduler.type != "none":
        # Optuna's NSGA-II breeds a generation from the completed trials of the one before: pruned ones do not count
        logger.warning(
            "search.sampler is nsga2, whose next generation comes after %d trials of one complete; with "
            "search.scheduler %s stopping most trials early it can stay in its first, random, generation: use "
            "scheduler: none with nsga2, or sampler: tpe", population, config.scheduler.type,
        )  # fmt: skip
    return optuna.samplers.NSGAIISampler(seed=config.seed, population_size=population)


def nsga2_population(num_trials: int) -> int:
    """NSGA-II's generation size: a quarter of the trials (at least 4 generations), between 4 and Optuna's 50."""
    return max(4, min(50, num_trials // 4))


def _random(config: SearchConfig, space: SearchSpace) -> BaseSampler:
    import optuna

    return optuna.samplers.RandomSampler(seed=config.seed)


def _gp(config: SearchConfig, space: SearchSpace) -> BaseSampler:
    import optuna

    return optuna.samplers.GPSampler(seed=config.seed)


def _cmaes(config: SearchConfig, space: SearchSpace) -> BaseSampler:
    import optuna

    return optuna.samplers.CmaEsSampler(seed=config.seed)


def _grid(config: SearchConfig, space: SearchSpace) -> BaseSampler:
    problem = grid_problem(space, "search")
    if problem is not None:
        raise ConfigError(problem)
    return _grid_sampler_class()(space.grid(), seed=config.seed)


SAMPLERS: dict[str, Callable[[SearchConfig, SearchSpace], BaseSampler]] = {
    "tpe": _tpe,
    "nsga2": _nsga2,
    "random": _random,
    "gp": _gp,
    "cmaes": _cmaes,
    "grid": _grid,
}
# Packages a sampler imports lazily that tunetrain does not depend on itself (Optuna would fail only mid-search).
SAMPLER_PACKAGES = {"gp": ("torch", "scipy"), "cmaes": ("cmaes",)}


def make_sampler(config: SearchConfig, space: SearchSpace) -> BaseSampler:
    """The Optuna sampler `config.sampler` names, seeded with `config.seed` (imports optuna).

    - tpe: `TPESampler(multivariate=True)`, with `group=True` when the space has `when:` params (multivariate TPE
      over each set of params that appear together) and `constant_liar` when trials run concurrently (running
      trials count as bad, so concurrent trials spread out).
    - nsga2: `NSGAIISampler` (genetic, for several objectives; one works too), generations of
      `nsga2_population(num_trials)` trials; the first generation is random.
    - random: `RandomSampler`. gp: `GPSampler` (torch, scipy; samples `when:` params at random). cmaes:
      `CmaEsSampler` (the `cmaes` package; samples categorical and `when:` params at random, with a warning).
    - grid: a `GridSampler` over `space.grid()` that only stops the study inside `study.optimize`: Optuna's own
      raises RuntimeError from `study.tell` once the grid is exhausted under ask-and-tell, as Ray's OptunaSearch
      drives it.
    """
    return SAMPLERS[config.sampler](config, space)


def grid_problem(space: SearchSpace, where: str) -> str | None:
    """Why the grid sampler cannot search `space` (a `when:` param, an unbounded float), or None."""
    try:
        space.grid()
    except ConfigError as exc:
        return f"`{where}.sampler` is 'grid', which cannot search this space: {exc}"
    return None


def _make_grid_sampler_class() -> type:
    from optuna.samplers import GridSampler

    class _AskAndTellGridSampler(GridSampler):
        """GridSampler that stops the study only inside `study.optimize`."""

        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            # GridSampler.after_trial does nothing but `study.stop()` once the grid is exhausted, and Study.stop
            # raises outside study.optimize (a private flag; if Optuna drops it, the stock behaviour comes back)
            if getattr(getattr(study, "_thread_local", None), "in_optimize_loop", True):
                super().after_trial(study, trial, state, values)

    _AskAndTellGridSampler.__module__ = __name__
    _AskAndTellGridSampler.__qualname__ = "_AskAndTellGridSampler"
    return _AskAndTellGridSampler


def _grid_sampler_class() -> type:
    # Built on first use (optuna is imported lazily) and kept as a module attribute, so that pickle (Ray checkpoints
    # its searcher) finds it by name, in another process too (through the module's __getattr__).
    if "_AskAndTellGridSampler" not in globals():
        globals()["_AskAndTellGridSampler"] = _make_grid_sampler_class()
    return globals()["_AskAndTellGridSampler"]


def __getattr__(name: str) -> Any:
    if name == "_AskAndTellGridSampler":
        return _grid_sampler_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- schedulers: stopping trials early --------------------------------------------------------------------------


def _successive_halving(config: SearchConfig, max_t: int | None) -> BasePruner:
    import optuna

    if config.multi_objective:  # Optuna's pruners take one objective
        from tunetrain.tuning.pareto_pruner import ParetoHalvingPruner

        if max_t is None:
            raise ValueError("the Pareto pruner needs max_t (the run's budget in evaluations)")
        return ParetoHalvingPruner(
            modes=config.modes, grace_period=config.scheduler.grace_period,
            reduction_factor=config.scheduler.reduction_factor, max_t=max_t,
        )  # fmt: skip

    return optuna.pruners.SuccessiveHalvingPruner(
        min_resource=config.scheduler.grace_period,
        reduction_factor=config.scheduler.reduction_factor,
        min_early_stopping_rate=0,
    )


def _no_pruner(config: SearchConfig, max_t: int | None) -> BasePruner:
    import optuna

    return optuna.pruners.NopPruner()


@dataclass(frozen=True)
class RaySchedulerInputs:
    """What a Ray scheduler may need besides the config: the last rung (`max_t`), the state it shares with the
    searcher and the bookkeeper, the space (PBT perturbs params within it), the experiment dir (PBT copies
    checkpoints between trial dirs) and the number of trials the search runs (a pausing ASHA ends when all have
    started)."""

    max_t: int | None
    search_state: SearchState
    space: SearchSpace | None = None
    exp_dir: ExperimentDir | None = None
    num_samples: int | None = None


def _ray_asha(config: SearchConfig, inputs: RaySchedulerInputs) -> Any:
    from tunetrain.tuning.ray.protocol import EVALUATION, OBJECTIVE
    from tunetrain.tuning.ray.schedulers import EarlyStopRecordingASHA, ParetoASHA, PromotingASHA

    scheduler = config.scheduler
    if config.multi_objective:
        return ParetoASHA(
            inputs.search_state, metrics=config.metrics, modes=config.modes, max_t=inputs.max_t,
            grace_period=scheduler.grace_period, reduction_factor=scheduler.reduction_factor,
        )  # fmt: skip
    common = {"metric": OBJECTIVE, "mode": config.modes[0], "max_t": inputs.max_t,
              "grace_period": scheduler.grace_period, "reduction_factor": scheduler.reduction_factor}  # fmt: skip
    if scheduler.promote:
        return PromotingASHA(inputs.search_state, num_samples=inputs.num_samples, **common)
    # rungs count evaluations, which a resumed trial continues
    return EarlyStopRecordingASHA(inputs.search_state, time_attr=EVALUATION, **common)


def _ray_pbt(config: SearchConfig, inputs: RaySchedulerInputs) -> Any:
    from tunetrain.tuning.explore import pbt_mutations
    from tunetrain.tuning.ray.schedulers import ExactPBT

    scheduler = config.scheduler
    return ExactPBT(
        inputs.search_state,
        space=inputs.space,
        mutations=pbt_mutations(scheduler, inputs.space),
        exp_dir=inputs.exp_dir,
        mode=config.modes[0],
        seed=config.seed,
        perturbation_interval=scheduler.perturbation_interval,
        burn_in_period=scheduler.burn_in_period,
        quantile_fraction=scheduler.quantile_fraction,
        resample_probability=scheduler.resample_probability,
    )


def _ray_fifo(config: SearchConfig, inputs: RaySchedulerInputs) -> Any:
    return None  # Ray's FIFOScheduler: every trial runs its whole budget


def _ray_only(config: SearchConfig, max_t: int | None) -> BasePruner:
    raise ConfigError(  # SearchConfig refuses it first; this is the last word for a config built by hand
        f"`search.scheduler.type` is {config.scheduler.type}, which only the ray backend runs: use backend: ray"
    )


@dataclass(frozen=True)
class Scheduler:
    """One way to stop (or pause, or change) trials, on each backend. `uses_max_t`: it needs the last rung (max_t),
    computed from the run's budget when the file does not set it."""

    optuna_pruner: Callable[[SearchConfig, int | None], BasePruner]
    ray_scheduler: Callable[[SearchConfig, RaySchedulerInputs], Any]
    uses_max_t: bool


SCHEDULERS: dict[str, Scheduler] = {
    "asha": Scheduler(optuna_pruner=_successive_halving, ray_scheduler=_ray_asha, uses_max_t=True),
    "pbt": Scheduler(optuna_pruner=_ray_only, ray_scheduler=_ray_pbt, uses_max_t=False),
    "none": Scheduler(optuna_pruner=_no_pruner, ray_scheduler=_ray_fifo, uses_max_t=False),
}


def make_pruner(config: SearchConfig, max_t: int | None = None) -> BasePruner:
    """The Optuna pruner of `config.scheduler` (optuna backend): asha is `SuccessiveHalvingPruner`, whose rungs count
    evaluations (the loop reports the metric at every evaluation); on several objectives `ParetoHalvingPruner`
    (rungs below `max_t`, the last rung)."""
    return SCHEDULERS[config.scheduler.type].optuna_pruner(config, max_t)


def make_ray_scheduler(
    config: SearchConfig,
    *,
    max_t: int | None,
    search_state: SearchState,
    space: SearchSpace | None = None,
    exp_dir: ExperimentDir | None = None,
    num_samples: int | None = None,
) -> Any:
    """The Ray Tune scheduler of `config.scheduler` (ray backend), or None for Ray's default (FIFO). asha is Ray's
    ASHAScheduler, or with `promote` tunetrain's `PromotingASHA` (trials pause at rungs), or on several objectives
    tunetrain's `ParetoASHA`; pbt is `ExactPBT`
    (which needs the space and the experiment dir)."""
    inputs = RaySchedulerInputs(max_t, search_state, space, exp_dir, num_samples)
    return SCHEDULERS[config.scheduler.type].ray_scheduler(config, inputs)


def pauses_trials(config: SearchConfig) -> bool:
    """Whether the scheduler pauses trials and resumes them later (PBT, a promoting ASHA): a paused trial holds no
    resources, so it must not hold a place among the trials running at once either."""
    return config.scheduler.type == "pbt" or (config.scheduler.type == "asha" and config.scheduler.promote)
