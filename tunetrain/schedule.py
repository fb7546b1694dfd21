"""A run whose params change at given steps: a PBT trial's lineage, replayed.

An experiment file may give, with its fixed `params` (those in force from step 0), a `schedule`:

```yaml
params: {learning_rate: 0.0075, weight_decay: 0.178, hidden_size: 238}
schedule:              # from each step on, these params: the run resumes there from its own checkpoint
  - {step: 330, params: {learning_rate: 0.0060, weight_decay: 0.019, hidden_size: 238}, trial: 8df67e1b}
```

`tunetrain export` writes one for a trial that PBT exploited (its whole chain back to step 0, each segment named by
the trial that trained it). `train_on_schedule` trains it as the search did: each segment a run of its own params
that stops at the next segment's step, the next one resumed from the checkpoint saved there. Resuming is exact, so
with the same seed and thread count the replay reaches the trial's metrics exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunetrain.errors import ConfigError
from tunetrain.formatting import show_value
from tunetrain.parsing import parse_int
from tunetrain.reporting import Reporter
from tunetrain.storage.layout import TRAINER_STATE_NAME

if TYPE_CHECKING:
    from tunetrain.args import TrainingArguments
    from tunetrain.checkpoint import TrainerState
    from tunetrain.loop import Trainer, TrainOutput

_STEP_KEYS = ("step", "params", "trial")


@dataclass(frozen=True)
class ScheduleStep:
    """From `step` on, `params` (all of them, not only those that change); `trial`: the trial that trained it."""

    step: int
    params: dict[str, Any]
    trial: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"step": self.step, "params": dict(self.params)}
        if self.trial is not None:
            out["trial"] = self.trial
        return out


def parse_schedule(raw: Any, where: str, problems: list[str]) -> tuple[ScheduleStep, ...]:
    """The `schedule:` list checked: mappings of step (an int > the step before, the first > 0), params (a mapping)
    and trial (optional text); each problem appended, naming its key path. The params' values are checked by the
    caller, as `params:` is."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        problems.append(f"`{where}` is {show_value(raw)}, but must be a list of {{step: N, params: {{...}}}}")
        return ()
    steps: list[ScheduleStep] = []
    last = 0
    for index, entry in enumerate(raw):
        path = f"{where}[{index}]"
        if not isinstance(entry, Mapping):
            problems.append(f"`{path}` is {show_value(entry)}, but must be a mapping {{step: N, params: {{...}}}}")
            continue
        problems += [
            f"`{path}.{key}` is not a schedule key (step, params, trial)" for key in entry if key not in _STEP_KEYS
        ]
        step, params, trial = parse_int(entry.get("step")), entry.get("params"), entry.get("trial")
        if step is None or step <= last:
            rule = "an integer > 0" if index == 0 else f"an integer > the step before ({last})"
            problems.append(f"`{path}.step` is {show_value(entry.get('step'))}, but must be {rule}")
            continue
        if not isinstance(params, Mapping):
            problems.append(f"`{path}.params` is {show_value(params)}, but must be a mapping of param -> value")
            continue
        if trial is not None and not isinstance(trial, str):
            problems.append(f"`{path}.trial` is {show_value(trial)}, but must be a trial id")
            continue
        steps.append(ScheduleStep(step, dict(params), trial))
        last = step
    return tuple(steps)


class StopAtStep(Reporter):
    """Stops the run once it has trained `step` optimizer steps (after that step's evaluation and checkpoint)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step(self, state: TrainerState) -> None:
        if state.global_step >= self.step:
            self.control.stop(f"the schedule changes the params at step {self.step}")


def train_on_schedule(
    make_trainer: Callable[[TrainingArguments, list[Reporter]], Trainer],
    args: TrainingArguments,
    params: dict[str, Any],
    schedule: tuple[ScheduleStep, ...],
    *,
    resume: str | Path | bool | None = None,
) -> tuple[Trainer, TrainOutput]:
    """Train `params` from step 0, then each step's params from its step on (see the module docstring); the last
    segment's trainer and output. Every segment but the last saves a checkpoint at each evaluation, as the search's
    trials did, so that the next one resumes from the step it starts at. `resume` (True: the latest checkpoint of
    args.output_dir; a path: that one) starts in the segment in force at the checkpoint's step."""
    from tunetrain import checkpoint as ckpt

    starts = [0, *(entry.step for entry in schedule)]
    segments = [params, *(entry.params for entry in schedule)]
    checkpoint = _resolve(resume, args)
    first = 0 if checkpoint is None else _segment_at(starts, ckpt.checkpoint_step(checkpoint) or 0)
    for index in range(first, len(segments) - 1):
        end = starts[index + 1]  # schedule[index].step
        # a checkpoint at every evaluation, as in the search: the one at `end` starts the next segment
        saving = args.replace(save_strategy=args.eval_strategy, save_steps=args.eval_steps)
        output = make_trainer(saving, [StopAtStep(end)]).train(resume_from_checkpoint=checkpoint, trial=segments[index])
        checkpoint = ckpt.checkpoint_path(args.output_dir, end)
        if output.global_step != end or not (checkpoint / TRAINER_STATE_NAME).is_file():
            raise ConfigError(
                f"`schedule[{index}].step` is {end}, but the run saved no checkpoint there (it stopped at step "
                f"{output.global_step}): a schedule's steps are steps at which the run evaluates (eval_strategy "
                f"{args.eval_strategy!r})"
            )
    trainer = make_trainer(args, [])
    return trainer, trainer.train(resume_from_checkpoint=checkpoint, trial=segments[-1])


def _resolve(resume: str | Path | bool | None, args: TrainingArguments) -> Path | None:
    from tunetrain import checkpoint as ckpt

    if resume is True:
        return ckpt.find_latest_usable(args.output_dir)
    return Path(resume) if resume else None


def _segment_at(starts: list[int], step: int) -> int:
    """The segment in force from `step` on: a checkpoint saved where a segment starts resumes with that one."""
    return max(index for index, start in enumerate(starts) if start <= step)
