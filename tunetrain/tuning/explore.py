"""PBT's explore step: a donor trial's params, perturbed within the search space.

Each param named in the mutations (and active in the donor's params) is, with `resample_probability`, drawn anew
from its range (log-uniform where the space says `log`), else moved: a number multiplied by one of the
perturbation factors (0.8 or 1.2: a step of the same size on a log scale whatever the value), then put back in its
range and on its step grid; an int rounded; a categorical is always drawn anew (a list of choices has no
neighbours to move to). A param whose `when:` condition the new values make true is drawn; one whose condition
they make false is dropped. Every value comes out inside the space (`SearchSpace.validate` has the last word).
"""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING, Any

from tunetrain.args import CHANGEABLE_ON_RESUME, field_names
from tunetrain.errors import ConfigError
from tunetrain.space import CategoricalParam, IntParam

if TYPE_CHECKING:
    from tunetrain.experiment import Experiment
    from tunetrain.space import Param, SearchSpace
    from tunetrain.tuning.config import SchedulerConfig

PERTURBATION_FACTORS = (1.2, 0.8)  # Ray's PopulationBasedTraining's defaults


def pbt_mutations(scheduler: SchedulerConfig, space: SearchSpace) -> tuple[str, ...]:
    """The params PBT perturbs: `hyperparam_mutations`, or by default the space's params that are optimizer settings
    a resumed run takes (`args.CHANGEABLE_ON_RESUME`), in the space's order."""
    if scheduler.hyperparam_mutations:
        return scheduler.hyperparam_mutations
    return tuple(name for name in space.names if name in CHANGEABLE_ON_RESUME)


def with_dependents(names: tuple[str, ...], space: SearchSpace) -> tuple[str, ...]:
    """`names` and the params whose `when:` names one of them (and theirs, ...): those an explore step may draw or
    drop, which a running trial must be able to take as well. Names not in the space are kept, for the caller to
    report."""
    chosen = list(names)
    for param in space.params:  # parents come first, so one pass follows chains
        if param.name not in chosen and param.when and set(param.when) & set(chosen):
            chosen.append(param.name)
    return tuple(chosen)


def explore(
    params: dict[str, Any],
    space: SearchSpace,
    mutations: tuple[str, ...],
    rng: random.Random,
    *,
    resample_probability: float,
    factors: tuple[float, ...] = PERTURBATION_FACTORS,
) -> tuple[dict[str, Any], dict[str, str]]:
    """New params from `params`, and for each param changed how ("* 1.2", "resample", "drawn": its condition became
    true, "dropped": it became false)."""
    new = dict(params)
    how: dict[str, str] = {}
    for name in mutations:
        if name not in new:  # inactive (its `when:` is false for these params): nothing to perturb
            continue
        param = space[name]
        if isinstance(param, CategoricalParam) or rng.random() < resample_probability:
            new[name], how[name] = draw(param, rng), "resample"
        else:
            new[name], how[name] = _perturbed(param, new[name], rng.choice(factors))
    for param in space.params:  # parents first: a condition is decided before its children are looked at
        active = space.is_active(param.name, new)
        if active and param.name not in new:
            new[param.name], how[param.name] = draw(param, rng), "drawn"
        elif not active and param.name in new:
            del new[param.name]
            how[param.name] = "dropped"
    return space.validate(new, require_all=True, where="explored params"), how


def _perturbed(param: Param, value: Any, factor: float) -> tuple[Any, str]:
    """`value` x `factor`, in the range and on the grid. An int that rounds back to itself moves one step the
    factor's way instead (1 x 1.2 is still 1); a value that cannot move (0, or a bound) says so."""
    moved = param.nearest(value * factor)
    if moved == value and isinstance(param, IntParam):
        moved = param.nearest(value + (param.step if factor > 1 else -param.step))
    return moved, f"* {factor}" if moved != value else f"* {factor} (unchanged: 0, or at its bound)"


def draw(param: Param, rng: random.Random) -> Any:
    """A value of `param` drawn uniformly (log-uniformly where it says `log`), on its step grid."""
    if isinstance(param, CategoricalParam):
        return rng.choice(param.choices)
    if param.log:
        value = math.exp(rng.uniform(math.log(param.low), math.log(param.high)))
    else:
        value = rng.uniform(param.low, param.high)
    return param.nearest(value)  # an IntParam's is an int


def check_mutations_keep_shape(experiment: Experiment, mutations: tuple[str, ...], where: str) -> None:
    """Raise ConfigError for a mutated model param (one that goes to the task's model_init) that changes the shape
    of the model's weights: a checkpoint of one value cannot be loaded into the model of another. Builds the model
    at each end of each such param's range (each choice of a categorical), the others at their defaults."""
    from tunetrain.task import load_task

    space = experiment.space
    model_params = [name for name in with_dependents(mutations, space) if name not in field_names()]
    if not model_params:
        return
    task = load_task(experiment.task)
    defaults, _ = space.defaults()
    for name in model_params:
        param = space[name]
        values = list(param.choices) if isinstance(param, CategoricalParam) else [param.low, param.high]
        shapes = []
        for value in values:
            params = {**defaults, name: value}
            params = {k: v for k, v in params.items() if space.is_active(k, params) and k not in field_names()}
            model = task.model_init(params)
            shapes.append({key: tuple(tensor.shape) for key, tensor in model.state_dict().items()})
        for value, shape in zip(values[1:], shapes[1:], strict=True):
            if shape != shapes[0]:
                key = next((k for k in shapes[0] if shapes[0][k] != shape.get(k)), next(iter(shape), "?"))
                raise ConfigError(
                    f"`{where}` names {name!r}, which changes the model's shape ({key!r} is {shapes[0].get(key)} at "
                    f"{name}={values[0]!r}, {shape.get(key)} at {name}={value!r}): a trial's checkpoint cannot be "
                    "loaded into a model of another shape; leave it out of the mutations"
                )
