"""What a search leaves behind: `results.parquet` (a row per trial) and `history.parquet` (a row per report).

Both search backends feed a `ResultsBook` from the driver process as trials report and finish; it rewrites the two
files (atomically, on a local disk; as single objects, on a pyarrow filesystem) at most every few seconds and at
the end, so a killed search leaves results that are at most that old, and a rerun picks them up again. A file is
rewritten whole (Parquet has no append): the writes are spaced so that they take at most ~5% of the driver's time
however many trials the search has, and history rows are converted to Arrow once, as they come.
`SearchResult` reads them back (`read_results`) and answers what a user asks of a search: the best trial, the
top k, how many ended in each status; for a search of several objectives, the Pareto front.

Several objectives: a trial's values (`TrialRecord.objectives`) are those of its best evaluation by the first
metric, the one its best checkpoint holds, so that an exported front trial is the model that scored them. results.
parquet has a column for each objective's metric and a `pareto` flag: the trial is on the front of the finished
trials (completed, or ended by their own early stopping; trials pruned at a rung were judged on a smaller budget).
"""

from __future__ import annotations

import json
import math
import os
import posixpath
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunetrain.errors import ConfigError
from tunetrain.experiment import Experiment, experiment_from_dict
from tunetrain.export import write_exports
from tunetrain.formatting import format_value
from tunetrain.parsing import parse_float
from tunetrain.storage import (
    ExperimentDir,
    experiment_location,
    is_dir,
    is_local,
    is_uri,
    read_json,
    read_parquet,
    uri_for,
    write_parquet,
)
from tunetrain.storage.files import damaged_message
from tunetrain.storage.layout import HISTORY_NAME, RESULTS_NAME, STATE_NAME

if TYPE_CHECKING:
    import pyarrow.fs


# timed_out: still training when the search's time budget ran out (the search then ends, finished)
STATUSES = ("running", "completed", "stopped_early", "pruned", "timed_out", "errored")
# trained to their own end: what a Pareto front is taken over
FINISHED_STATUSES = ("completed", "stopped_early")
# the files are rewritten at most every `min_interval_s`, and no sooner than this many times what the last write
# took: at most ~5% of the driver's time goes to them (Ray spaces its own snapshots so)
WRITE_SPACING = 19
HISTORY_PARTS = 64  # history rows converted to Arrow are kept in parts (one per write), joined past this many


@dataclass
class TrialRecord:
    """One trial of a search: its params, how it ended, its best and last value of the search metric."""

    trial_id: str
    number: int
    params: dict[str, Any]
    status: str = "running"
    best_metric: float | None = None
    last_metric: float | None = None
    evaluations: int = 0
    best_step: int | None = None
    best_checkpoint: str | None = None
    error: str | None = None
    started_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    num_processes: int = 1  # the data-parallel world size the trial trained with
    # PBT: the exploits that made the trial what it is, oldest first: {trial_id: the donor, step: the donor's step
    # copied, evaluation: the trial's evaluations when it happened}; None for a trial never exploited
    parent: list[dict[str, Any]] | None = None
    # several objectives: each one's value at the trial's best evaluation (by the first), and whether the trial is
    # on the front of the finished trials (see the module docstring); None / False for a search of one metric
    objectives: list[float | None] | None = None
    pareto: bool = False
    _experiment_dir: str | None = field(default=None, repr=False, compare=False)

    @property
    def metric(self) -> float | None:
        """The trial's objective: its best evaluation, not its last."""
        return self.best_metric

    @property
    def checkpoint(self) -> str | None:
        return self.best_checkpoint

    def export(self, out_dir: str | Path, *, force: bool = False) -> Path:
        """This trial's best checkpoint as a self-contained folder (see `tunetrain.export`)."""
        if self._experiment_dir is None:
            raise ConfigError(f"trial {self.trial_id!r} was not read from an experiment dir: nothing to export")
        (path,) = export_trials(self._experiment_dir, out_dir, trial_id=self.trial_id, force=force)
        return path


@dataclass
class SearchResult:
    """The trials of a search, as `results.parquet` holds them; `best` is the best finished trial, `pareto` the front
    of a search of several objectives (`metrics`, `modes`: the first is `metric`, `mode`)."""

    experiment_dir: str
    metric: str
    mode: str
    trials: list[TrialRecord]
    metrics: tuple[str, ...] = ()
    modes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.metrics = tuple(self.metrics) or (self.metric,)
        self.modes = tuple(self.modes) or (self.mode,)
        for trial in self.trials:
            trial._experiment_dir = self.experiment_dir

    @property
    def multi_objective(self) -> bool:
        return len(self.metrics) > 1

    @property
    def best(self) -> TrialRecord | None:
        """The best trial; a ConfigError for a search of several objectives, which has a front, not one best."""
        if self.multi_objective:
            raise ConfigError(
                f"the search has {len(self.metrics)} objectives ({', '.join(self.metrics)}), so no one best trial: "
                "name one (--trial ID), take the Pareto front (--pareto / SearchResult.pareto), or pick on it by one "
                f"metric (--by {self.metrics[0].removeprefix('eval_')} / SearchResult.best_by)"
            )
        ranked = self.ranked()
        return ranked[0] if ranked else None

    @property
    def pareto(self) -> list[TrialRecord]:
        """The trials on the Pareto front of the finished ones (flagged `pareto`), best ranked first ([] for a search
        of one metric), the front's extremes first (crowding distance)."""
        from tunetrain.tuning.pareto import rank

        front = [t for t in self.trials if t.pareto]
        return [front[i] for i in rank([t.objectives for t in front], self.modes)]

    def trial(self, trial_id: str) -> TrialRecord:
        """The trial of that id; a ConfigError naming the experiment and some of its trials where it has none."""
        found = next((t for t in self.trials if t.trial_id == trial_id), None)
        if found is None:
            known = ", ".join(t.trial_id for t in self.trials[:10])
            raise ConfigError(f"trial {trial_id!r} is not in {self.experiment_dir!r} (its trials: {known})")
        return found

    def best_by(self, metric: str) -> TrialRecord | None:
        """The front trial with the best value of `metric` (one of `metrics`, eval_ prefix optional); for a search of
        one metric, `best`."""
        if not self.multi_objective:
            return self.best
        name = metric if metric in self.metrics else f"eval_{metric}"
        if name not in self.metrics:
            raise ConfigError(f"`--by` is {metric!r}, but the search's objectives are {', '.join(self.metrics)}")
        k = self.metrics.index(name)
        front = self.pareto
        if not front:
            return None
        return sorted(front, key=lambda t: t.objectives[k], reverse=self.modes[k] == "max")[0]

    def ranked(self) -> list[TrialRecord]:
        """Trials with a finite metric, best first; errored trials never rank. Several objectives: the front (`pareto`)
        first, then the other trials with every value finite, ranked by Pareto front, then crowding distance (see
        `tunetrain.tuning.pareto.rank`; a pruned or running trial may be non-dominated too, but judged on less)."""
        usable = [t for t in self.trials if t.status != "errored" and _finite(t.best_metric)]
        if self.multi_objective:
            from tunetrain.tuning.pareto import rank

            rest = [t for t in usable if not t.pareto and t.objectives and all(map(_finite, t.objectives))]
            return self.pareto + [rest[i] for i in rank([t.objectives for t in rest], self.modes)]
        return sorted(usable, key=lambda t: t.best_metric, reverse=self.mode == "max")

    def counts(self) -> dict[str, int]:
        return {status: sum(t.status == status for t in self.trials) for status in STATUSES}

    def table(self, k: int = 5) -> str:
        """The top-k trials as a plain-text table."""
        top = self.ranked()[:k]
        if not top:
            return "no trial has reported a finite metric"
        names = sorted({name for t in top for name in t.params})
        processes = any(t.num_processes > 1 for t in top)  # a column only where trials trained data-parallel
        if self.multi_objective:
            objectives = [*self.metrics, "pareto"]
            values = {t.trial_id: [*map(format_value, t.objectives), "yes" if t.pareto else "-"] for t in top}
        else:
            objectives, values = [self.metric], {t.trial_id: [format_value(t.best_metric)] for t in top}
        header = ["trial", *objectives, "status", "evals", *(["processes"] if processes else []), *names]
        rows = [
            [
                t.trial_id,
                *values[t.trial_id],
                t.status,
                str(t.evaluations),
                *([str(t.num_processes)] if processes else []),
                *(format_value(t.params.get(n, "-")) for n in names),
            ]
            for t in top
        ]
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in [header, *rows]]
        return "\n".join(lines)

    def summary_line(self, total: int | None = None, *, paused: int = 0) -> str:
        """ "N/total done (by status), M running; best ...": `paused` of the running trials wait, paused."""
        counts = self.counts()
        finished = len(self.trials) - counts["running"]
        done = f"{finished}/{total}" if total else str(finished)
        if self.multi_objective:
            front = [t.trial_id for t in self.pareto]
            more = f", +{len(front) - 3}" if len(front) > 3 else ""
            best_text = f"Pareto front: {len(front)} ({', '.join(front[:3])}{more})" if front else "no front yet"
        else:
            best = self.best
            best_text = (
                f"best {self.metric}={format_value(best.best_metric)} ({best.trial_id})" if best else "no best yet"
            )
        # each status by its own name, as the table and the report show it
        ended = ", ".join(f"{counts[status]} {status}" for status in STATUSES if status != "running" and counts[status])
        running = f"{counts['running']} running" + (f" ({paused} of them paused)" if paused else "")
        return f"{done} done{f' ({ended})' if ended else ''}, {running}; {best_text}"


class ResultsBook:
    """The driver's record of a search, written to `results.parquet` and `history.parquet` as it goes."""

    def __init__(
        self,
        experiment_dir: str,
        *,
        metric: str | tuple[str, ...],
        mode: str | tuple[str, ...],
        filesystem: pyarrow.fs.FileSystem | None = None,
        min_interval_s: float = 2.0,
    ) -> None:
        from pyarrow import fs

        self.experiment_dir = experiment_dir
        self.metrics = metric if isinstance(metric, tuple) else (metric,)  # several: a search of several objectives
        self.modes = mode if isinstance(mode, tuple) else (mode,)
        self.metric, self.mode = self.metrics[0], self.modes[0]
        self.filesystem = filesystem or fs.LocalFileSystem()
        self.min_interval_s = min_interval_s
        self.trials: dict[str, TrialRecord] = {}
        self.history: list[dict[str, Any]] = []
        self._last_evaluation: dict[str, int] = {}  # trial id -> its latest evaluation in `history`
        self._rows: dict[str, list[dict[str, Any]]] = {}  # trial id -> its rows of `history`
        # the first `_converted` rows of `history` as Arrow tables (a write converts only the rows after them)
        self._history_parts: list[Any] = []
        self._converted = 0
        self._last_write = 0.0
        # how long the last two writes took: the shorter one spaces the writes (one slow write, the first, which
        # imports what pyarrow needs, or one on a busy disk, does not)
        self._write_s = (0.0, 0.0)
        self._dirty = False

    # ------------------------------------------------------------------ recording

    def start(self, trial_id: str, number: int, params: dict[str, Any]) -> TrialRecord:
        record = self.trials.get(trial_id)
        if record is None:
            record = self.trials[trial_id] = TrialRecord(trial_id=trial_id, number=number, params=dict(params))
        record.status = "running"  # a trial resumed after a restart runs again
        record.ended_at = None
        self._dirty = True
        return record

    def report(
        self,
        trial_id: str,
        metrics: dict[str, Any],
        *,
        checkpoint: str | None = None,
        params: dict[str, Any] | None = None,
        parent: tuple[str, int] | None = None,
    ) -> None:
        """One evaluation of a trial. `metrics` holds the search metric, `evaluation` and `step`; `params`: those in
        force (PBT changes them), `parent`: (donor, its step) on the first evaluation after an exploit (PBT)."""
        record = self.trials[trial_id]
        value = parse_float(metrics.get(self.metric), strings=True)  # NaN stays: the trial reported it
        evaluation = int(metrics.get("evaluation", record.evaluations + 1))
        # a trial resumed from a checkpoint reports its evaluations after the checkpoint again: keep the newest.
        # After an exploit the trial goes on from the donor's count: the evaluations it trained before stand
        if parent is None and evaluation <= self._last_evaluation.get(trial_id, 0):  # rare: look only then
            parent = self._drop_repeated(trial_id, evaluation)
        self._last_evaluation[trial_id] = evaluation
        self._add_row(
            {
                "trial_id": trial_id,
                "evaluation": evaluation,
                "step": int(metrics.get("step", 0)),
                "epoch": parse_float(metrics.get("epoch"), strings=True),
                "metric": value,
                "time_s": time.time() - record.started_at,
                "metrics": json.dumps({k: v for k, v in metrics.items() if _is_scalar(v)}, default=str),
                "params": None if params is None else json.dumps(params, sort_keys=True, default=str),
                "parent": None if parent is None else parent[0],
                "parent_step": None if parent is None else int(parent[1]),
            }
        )
        record.evaluations = evaluation
        record.last_metric = value
        record.num_processes = int(metrics.get("num_processes") or record.num_processes)
        if _finite(value) and (record.best_metric is None or self._better(value, record.best_metric)):
            record.best_metric = value
            record.best_step = int(metrics.get("step", 0))
            if len(self.metrics) > 1:
                record.objectives = [parse_float(metrics.get(name), strings=True) for name in self.metrics]
            if checkpoint is not None:
                record.best_checkpoint = checkpoint
        self._dirty = True
        self.flush()

    def rebase(
        self,
        trial_id: str,
        *,
        params: dict[str, Any],
        exploits: list[dict[str, Any]],
        best_metric: float | None,
        best_step: int | None,
        best_checkpoint: str | None,
    ) -> None:
        """After an exploit (PBT) the trial carries the donor's lineage: its params are those in force now, and its
        best is that lineage's best (the loop's own tracking, carried in the checkpoint), not the best of the
        evaluations it trained before."""
        record = self.trials[trial_id]
        record.params = dict(params)
        record.parent = [dict(exploit) for exploit in exploits]
        record.best_metric = parse_float(best_metric, strings=True)
        record.best_step = best_step
        record.best_checkpoint = best_checkpoint
        self._dirty = True

    def last_evaluation(self, trial_id: str) -> int:
        """The trial's latest evaluation recorded (0 for none)."""
        return self._last_evaluation.get(trial_id, 0)

    def finish(
        self,
        trial_id: str,
        status: str,
        *,
        error: str | None = None,
        ended_at: float | None = None,
        write_now: bool = True,
    ) -> None:
        """A trial's end. `write_now` (default True) writes the files at once; False leaves it to the next write, at
        most a few seconds later (the Ray driver: each trial's end is in its ended.json first, which a resume reads
        back, and a write per trial would cost the search O(trials^2))."""
        if status not in STATUSES:
            raise ValueError(f"status {status!r} is not one of {STATUSES}")
        record = self.trials[trial_id]
        record.status = status
        record.error = error
        record.ended_at = ended_at or time.time()
        self._dirty = True
        self.flush(force=write_now)

    def result(self) -> SearchResult:
        return SearchResult(
            self.experiment_dir, self.metric, self.mode, list(self.trials.values()), self.metrics, self.modes
        )

    def final_record(self, trial_id: str, status: str, error: str | None = None) -> dict[str, Any]:
        """A trial's record as it ends (`finish` it with the same `ended_at`), and its history rows: what `restore`
        takes back, as plain JSON."""
        record = {**self._row(self.trials[trial_id]), "status": status, "error": error, "ended_at": time.time()}
        return {"record": record, "history": list(self._rows.get(trial_id, []))}

    def restore(self, final: dict[str, Any], *, write_now: bool = True) -> None:
        """Put back a trial's `final_record`: a killed driver may not have written its last evaluations or its end
        (`write_now`: the files written at once, else with the next write)."""
        record = _row_record(final["record"], _location(self.filesystem, self.experiment_dir), self.metrics)
        self.trials[record.trial_id] = record
        self._drop_rows(lambda h: h["trial_id"] == record.trial_id)
        for row in final["history"]:
            self._add_row(row)
        self._last_evaluation[record.trial_id] = final["history"][-1]["evaluation"] if final["history"] else 0
        self._dirty = True
        self.flush(force=write_now)

    def _drop_repeated(self, trial_id: str, evaluation: int) -> tuple[str, int] | None:
        """Drop the trial's rows from `evaluation` on, as a resumed trial reports them again, but only those since
        its latest exploit (PBT): the ones before were trained on other weights and stand. Returns the exploit
        (donor, step) of a dropped row that said where it came from, for the row that replaces it."""
        rows = self._rows.get(trial_id, [])
        since = max((index for index, row in enumerate(rows) if row.get("parent")), default=0)
        doomed = {id(row) for row in rows[since:] if row["evaluation"] >= evaluation}
        carried = next(((row["parent"], row["parent_step"]) for row in rows if id(row) in doomed and row.get("parent")),
                       None)  # fmt: skip
        self._drop_rows(lambda h: id(h) in doomed)
        return carried

    def _add_row(self, row: dict[str, Any]) -> None:
        self.history.append(row)
        self._rows.setdefault(row["trial_id"], []).append(row)

    def _drop_rows(self, drop: Any) -> None:
        self.history = [h for h in self.history if not drop(h)]
        self._rows = {}
        for row in self.history:
            self._rows.setdefault(row["trial_id"], []).append(row)
        self._history_parts, self._converted = [], 0  # rare (a resumed trial, a restored end): converted anew

    # ------------------------------------------------------------------ files

    def load(self) -> None:
        """Take up what an earlier run of this search wrote (trials left running stay 'running' until resumed)."""
        existing = read_results(self.experiment_dir, filesystem=self.filesystem, missing_ok=True)
        if existing is not None:
            self.trials = {t.trial_id: t for t in existing.trials}
        self.history, self._rows = [], {}
        self._history_parts, self._converted = [], 0
        for row in _read_rows(self.filesystem, f"{self.experiment_dir}/{HISTORY_NAME}"):
            self._add_row(row)
            # rows are in the order they were reported: a trial's latest is its last (after a PBT exploit its count
            # may have gone back to the donor's)
            self._last_evaluation[row["trial_id"]] = row["evaluation"]

    def flush(self, force: bool = False) -> None:
        """Write both files, if anything changed: with `force` now, else once `min_interval_s` (or, for a large
        search, WRITE_SPACING times what a write takes) has passed since the last write."""
        now = time.monotonic()
        interval = max(self.min_interval_s, WRITE_SPACING * min(self._write_s))
        if not self._dirty or (not force and now - self._last_write < interval):
            return
        import pyarrow as pa

        self._mark_front()
        results_schema, history_schema = _schemas(self.metrics)
        rows = [self._row(t) for t in sorted(self.trials.values(), key=lambda t: t.number)]
        results = pa.Table.from_pylist(rows, schema=results_schema)
        history = self._history_table(history_schema)
        metadata = {b"metric": self.metric.encode(), b"mode": self.mode.encode()}
        if len(self.metrics) > 1:
            metadata.update({b"metrics": json.dumps(self.metrics).encode(), b"modes": json.dumps(self.modes).encode()})
        write_parquet(
            self.filesystem, f"{self.experiment_dir}/{RESULTS_NAME}", results.replace_schema_metadata(metadata)
        )
        write_parquet(self.filesystem, f"{self.experiment_dir}/{HISTORY_NAME}", history)
        self._last_write = time.monotonic()
        self._write_s = (self._write_s[1], self._last_write - now)
        self._dirty = False

    def _history_table(self, schema: Any) -> Any:
        """`history` as one Arrow table: the rows added since the last write converted, the others as they were."""
        import pyarrow as pa

        if self._converted < len(self.history):
            self._history_parts.append(pa.Table.from_pylist(self.history[self._converted :], schema=schema))
            self._converted = len(self.history)
        if not self._history_parts:
            return schema.empty_table()
        if len(self._history_parts) > HISTORY_PARTS:
            self._history_parts = [pa.concat_tables(self._history_parts).combine_chunks()]
        return pa.concat_tables(self._history_parts)

    def _mark_front(self) -> None:
        """Several objectives: flag the trials on the front of the finished ones (completed, or ended by their own
        early stopping; a trial pruned at a rung was judged on a smaller budget)."""
        if len(self.metrics) == 1:
            return
        from tunetrain.tuning.pareto import pareto_front

        finished = [t for t in self.trials.values() if t.status in FINISHED_STATUSES and t.objectives]
        front = {finished[i].trial_id for i in pareto_front([t.objectives for t in finished], self.modes)}
        for record in self.trials.values():
            record.pareto = record.trial_id in front

    def _row(self, record: TrialRecord) -> dict[str, Any]:
        """A record as the files keep it (every record written goes through here): its checkpoint relative to the
        experiment dir when it is inside it, so that the dir can be moved or copied (`read_results` joins it back)."""
        row = _record_row(record, self.metrics)
        row["best_checkpoint"] = _relative_checkpoint(
            record.best_checkpoint, self.experiment_dir, local=is_local(self.filesystem)
        )
        return row

    def _better(self, value: float, than: float) -> bool:
        return value > than if self.mode == "max" else value < than


def read_results(
    experiment_dir: str | Path, *, filesystem: pyarrow.fs.FileSystem | None = None, missing_ok: bool = False
) -> SearchResult | None:
    """The `SearchResult` of an experiment directory (what its `results.parquet` holds): a local path or a URI, or
    a path within `filesystem`. Checkpoints kept relative to the experiment dir come back joined to this one."""
    if filesystem is None:
        filesystem, where = experiment_location(experiment_dir)
        location = uri_for(str(experiment_dir), where)
    else:
        where = str(experiment_dir)
        location = _location(filesystem, where)
    path = ExperimentDir(filesystem, where, where).results_path
    table = read_parquet(filesystem, path)
    if table is None:
        if missing_ok:
            return None
        raise ConfigError(f"experiment {str(experiment_dir)!r} has no {RESULTS_NAME}: no search has run there")
    metadata = table.schema.metadata or {}
    metric, mode = metadata.get(b"metric", b"").decode(), metadata.get(b"mode", b"max").decode()
    metrics = tuple(json.loads(metadata.get(b"metrics", b"[]"))) or (metric,)
    modes = tuple(json.loads(metadata.get(b"modes", b"[]"))) or (mode,)
    trials = [_row_record(row, location, metrics) for row in _rows(table, path, ("trial_id", "number", "params"))]
    return SearchResult(str(experiment_dir), metric, mode, trials, metrics, modes)


def read_history(experiment_dir: str | Path, *, filesystem: pyarrow.fs.FileSystem | None = None) -> list[dict]:
    if filesystem is None:
        filesystem, experiment_dir = experiment_location(experiment_dir)
    return _read_rows(filesystem, f"{experiment_dir}/{HISTORY_NAME}")


# ---------------------------------------------------------------------- export


def export_trials(
    experiment_dir: str | Path,
    out_dir: str | Path,
    *,
    trial_id: str | None = None,
    top_k: int | None = None,
    pareto: bool = False,
    by: str | None = None,
    force: bool = False,
) -> list[Path]:
    """Export the best trial (or `trial_id`, or the best `top_k` side by side as out_dir/rank-N-TRIAL, or with
    `pareto` every trial of the Pareto front as out_dir/pareto-N-TRIAL; `by`: the front trial best in that metric).

    A search of several objectives has no one best: it needs `trial_id`, `pareto`, `by` or `top_k` (by Pareto rank).
    `out_dir` must not be the experiment dir, inside it or around it; one that is not empty is replaced only with
    `force`, and only when it holds an earlier export and nothing else (see `tunetrain.export`).
    """
    if top_k is not None and top_k < 1:
        raise ConfigError(f"`top_k` is {top_k}, but must be >= 1")
    chosen_by = [name for name, given in (("trial", trial_id), ("top-k", top_k), ("pareto", pareto), ("by", by))
                 if given not in (None, False)]  # fmt: skip
    if len(chosen_by) > 1:
        raise ConfigError(f"--{' and --'.join(chosen_by)} each choose the trials to export: give one")
    result, experiment = read_experiment(experiment_dir)
    prefix = "rank"
    if trial_id is not None:
        chosen = [result.trial(trial_id)]
    elif pareto:
        if not result.multi_objective:
            raise ConfigError(
                f"--pareto exports the front of a search of several objectives, but {str(experiment_dir)!r} has one "
                f"({result.metric}): use --top-k"
            )
        chosen, prefix = result.pareto, "pareto"
        if not chosen:
            raise ConfigError(f"experiment {str(experiment_dir)!r} has no finished trial on a Pareto front yet")
    else:
        if by is not None:
            best = result.best_by(by)
            chosen = [best] if best is not None else []
        elif top_k is not None:
            chosen = result.ranked()[:top_k]
        else:
            best = result.best  # a ConfigError for several objectives: it says how to choose
            chosen = [best] if best is not None else []
        if not chosen:
            raise ConfigError(f"experiment {str(experiment_dir)!r} holds no finished trial with a finite metric")
    side_by_side = trial_id is None and (top_k is not None or pareto)
    return write_exports(
        Path(out_dir), experiment, result, chosen, side_by_side=side_by_side, force=force, prefix=prefix
    )


def read_experiment(experiment_dir: str | Path) -> tuple[SearchResult, Experiment]:
    """The results and the experiment (as the search started it) of an experiment dir: a path or a URI."""
    filesystem, path = experiment_location(experiment_dir)
    shown = str(experiment_dir)
    if not is_dir(filesystem, path):
        raise ConfigError(f"experiment dir {shown!r} does not exist")
    state = read_json(filesystem, ExperimentDir(filesystem, path, shown).state_path)
    if not isinstance(state, dict) or "experiment" not in state:
        raise ConfigError(f"{shown!r} is not an experiment dir: it has no {STATE_NAME}")
    return read_results(experiment_dir), experiment_from_dict(state["experiment"])


# ---------------------------------------------------------------------- private helpers


def _schemas(metrics: tuple[str, ...] = ()) -> tuple[Any, Any]:
    """The two tables' schemas; several objectives add a column for each metric and the `pareto` flag."""
    import pyarrow as pa

    results = pa.schema(
        [
            ("trial_id", pa.string()),
            ("number", pa.int64()),
            ("status", pa.string()),
            ("params", pa.string()),  # JSON: conditional params differ from trial to trial
            ("best_metric", pa.float64()),
            ("last_metric", pa.float64()),
            ("evaluations", pa.int64()),
            ("best_step", pa.int64()),
            ("best_checkpoint", pa.string()),
            ("error", pa.string()),
            ("started_at", pa.float64()),
            ("ended_at", pa.float64()),
            ("num_processes", pa.int64()),
            ("parent", pa.string()),  # JSON: the trial's exploits under PBT (see TrialRecord.parent)
            *([(name, pa.float64()) for name in metrics] + [("pareto", pa.bool_())] if len(metrics) > 1 else []),
        ]
    )
    history = pa.schema(
        [
            ("trial_id", pa.string()),
            ("evaluation", pa.int64()),
            ("step", pa.int64()),
            ("epoch", pa.float64()),
            ("metric", pa.float64()),
            ("time_s", pa.float64()),
            ("metrics", pa.string()),
            ("params", pa.string()),  # JSON: the params in force at this evaluation (PBT changes them)
            ("parent", pa.string()),  # PBT: the donor, on a trial's first evaluation after an exploit
            ("parent_step", pa.int64()),  # and the donor's step it went on from
        ]
    )
    return results, history


_RECORD_FIELDS = tuple(f.name for f in fields(TrialRecord) if f.name != "_experiment_dir")


def _record_row(record: TrialRecord, metrics: tuple[str, ...]) -> dict[str, Any]:
    # the fields as they are (asdict's deep copy costs ~10x, and every write makes a row of every trial)
    row = {name: getattr(record, name) for name in _RECORD_FIELDS}
    row["params"] = json.dumps(record.params, sort_keys=True, default=str)
    row["parent"] = None if record.parent is None else json.dumps(record.parent, sort_keys=True)
    objectives = row.pop("objectives") or [None] * len(metrics)
    if len(metrics) > 1:  # a column for each objective
        row.update(zip(metrics, objectives, strict=True))
    else:
        row.pop("pareto")
    return row


def _row_record(row: dict[str, Any], location: str, metrics: tuple[str, ...] = ()) -> TrialRecord:
    """A record as the files keep it, read back in the experiment dir at `location` (see `_location`)."""
    objectives = [parse_float(row.get(name)) for name in metrics] if len(metrics) > 1 else []
    row = {key: value for key, value in row.items() if key not in metrics}
    if objectives:
        row["objectives"] = None if all(value is None for value in objectives) else objectives
        row["pareto"] = bool(row.get("pareto"))
    row["params"] = json.loads(row["params"] or "{}")
    row["num_processes"] = row.get("num_processes") or 1  # results written before it was recorded
    row["parent"] = json.loads(row["parent"]) if row.get("parent") else None
    row["best_checkpoint"] = _resolved_checkpoint(row.get("best_checkpoint"), location)
    return TrialRecord(**row)


def _location(filesystem: pyarrow.fs.FileSystem, path: str) -> str:
    """What a user sees for a path in `filesystem`: the path on a local disk, else a URI of the filesystem's kind
    (`s3://bucket/runs/x` for S3)."""
    return path if is_local(filesystem) else f"{filesystem.type_name}://{path}"


def _relative_checkpoint(checkpoint: str | None, experiment_path: str, *, local: bool) -> str | None:
    """A checkpoint inside the experiment dir (a path in its filesystem) relative to it; any other as it is."""
    if not checkpoint:
        return checkpoint
    # strings, not pathlib (every write makes a row of every trial: pathlib's parsing was most of a write's time)
    if local and not is_uri(checkpoint):
        path, base, separator = os.path.abspath(checkpoint), os.path.abspath(experiment_path), os.sep
    elif not local and is_uri(checkpoint):  # a trial's checkpoint in remote storage: `scheme://` + the path in it
        path, separator = posixpath.normpath(checkpoint.split("://", 1)[1]), "/"
        base = posixpath.normpath(experiment_path)
    else:
        return checkpoint
    prefix = base.rstrip(separator) + separator
    if not os.path.normcase(path).startswith(os.path.normcase(prefix)):
        return checkpoint
    return path[len(prefix) :].replace(separator, "/")


def _resolved_checkpoint(stored: str | None, location: str) -> str | None:
    """A checkpoint as the results keep it, joined to the experiment dir's `location` when it is relative (an
    absolute path or a URI, as results written before were, stays as it is)."""
    if not stored or is_uri(stored) or os.path.isabs(stored) or stored.startswith("/"):
        return stored
    return f"{location.rstrip('/')}/{stored}"


def _read_rows(filesystem: Any, path: str) -> list[dict[str, Any]]:
    table = read_parquet(filesystem, path)
    return [] if table is None else _rows(table, path, ("trial_id", "evaluation"))


def _rows(table: Any, path: str, needed: tuple[str, ...]) -> list[dict[str, Any]]:
    """The rows of a table tunetrain wrote; a ConfigError naming the file where it holds another table."""
    missing = [name for name in needed if name not in table.column_names]
    if missing:
        reason = f"a table without the column(s) {', '.join(missing)} tunetrain writes"
        raise ConfigError(damaged_message(path, reason))
    return table.to_pylist()


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (int, float, str, bool)) or value is None
