"""What crosses between a trial (in a Ray worker) and the driver: the keys of a report, and `ended.json`.

A report carries three numbers Ray acts on and one JSON string: Ray keeps running statistics of every numeric key of
every trial in the driver's memory, so everything else of an evaluation travels as text.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from tunetrain.errors import ConfigError
from tunetrain.storage import read_json, write_json
from tunetrain.storage.layout import ENDED_NAME

if TYPE_CHECKING:
    from pyarrow.fs import FileSystem

logger = logging.getLogger(__name__)

OBJECTIVE = "objective"  # the trial's best value of the search metric so far: what ASHA and Optuna compare
EVALUATION = "evaluation"  # evaluations since the trial began (a resumed trial continues the count): ASHA's time
CURRENT = "current"  # the search metric at this evaluation: what PBT ranks the population by
METRICS = "metrics"  # everything else of an evaluation, as one JSON string


def objective_keys(count: int) -> tuple[str, ...]:
    """The report keys of a search's objectives: `objective` for the first, `objective_2`, ... for the others (each
    the trial's value at its best evaluation by the first, see `tunetrain.tuning.pareto.objective_values`)."""
    return (OBJECTIVE, *(f"{OBJECTIVE}_{k}" for k in range(2, count + 1)))


# ended for good (ended.json); an errored trial may run again (resume_errored), unless it ended itself (diverged)
FINAL_STATUSES = ("completed", "stopped_early", "pruned")


def values_of(result: dict | None) -> dict[str, Any]:
    """What a trial reported of one evaluation (see `worker.TuneReporter`), or {} for no report."""
    if not result or METRICS not in result:
        return {}
    return json.loads(result[METRICS])


def read_ended(filesystem: FileSystem, trial_path: str) -> dict[str, Any] | None:
    """What a trial ended with (its final record and history rows, see `ResultsBook.final_record`), or None while
    it has not ended (or errored: it may be resumed).

    One that cannot be read (damaged, or not in this form) is taken as not there, with a warning naming it: the
    trial then resumes from its latest checkpoint and ends again, which writes it anew."""
    path = f"{trial_path}/{ENDED_NAME}"
    try:
        ended = read_json(filesystem, path)
        if ended is None:
            return None
        return ended if ended["record"]["status"] else None
    except ConfigError as exc:  # damaged: read_json's one line names it
        reason = str(exc)
    except (KeyError, TypeError) as exc:
        reason = f"{path!r} is not what tunetrain writes there ({type(exc).__name__}: {exc})"
    except OSError as exc:
        reason = f"{path!r} cannot be read ({exc})"
    logger.warning("%s; the trial is taken as not ended: it resumes from its latest checkpoint", reason)
    return None


def write_ended(filesystem: FileSystem, trial_path: str, final: dict[str, Any]) -> None:
    write_json(filesystem, f"{trial_path}/{ENDED_NAME}", final)
