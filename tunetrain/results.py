"""What a search leaves behind: `results.parquet` (a row per trial) and `history.parquet` (a row per report).

Both search backends feed a `ResultsBook` from the driver process as trials report and finish; it rewrites the two
files (atomically, on a local disk; as single objects, on a pyarrow filesystem) at most every few seconds and at
the end, so a killed search leaves results that are at most that old, and a rerun picks them up again.
`SearchResult` reads them back (`read_results`) and answers what a user asks of a search: the best trial, the
top k, how many ended in each status.
"""

from __future__ import annotations

import json
import math
import os
import posixpath
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
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
    """The trials of a search, as `results.parquet` holds them; `best` is the best finished trial."""

    experiment_dir: str
    metric: str
    mode: str
    trials: list[TrialRecord]

    def __post_init__(self) -> None:
        for trial in self.trials:
            trial._experiment_dir = self.experiment_dir

    @property
    def best(self) -> TrialRecord | None:
        ranked = self.ranked()
        return ranked[0] if ranked else None

    def ranked(self) -> list[TrialRecord]:
        """Trials with a finite metric, best first; errored trials never rank."""
        usable = [t for t in self.trials if t.status != "errored" and _finite(t.best_metric)]
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
        header = ["trial", self.metric, "status", "evals", *(["processes"] if processes else []), *names]
        rows = [
            [
                t.trial_id,
                format_value(t.best_metric),
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
        best = self.best
        best_text = f"best {self.metric}={format_value(best.best_metric)} ({best.trial_id})" if best else "no best yet"
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
        metric: str,
        mode: str,
        filesystem: pyarrow.fs.FileSystem | None = None,
        min_interval_s: float = 2.0,
    ) -> None:
        from pyarrow import fs

        self.experiment_dir = experiment_dir
        self.metric = metric
        self.mode = mode
        self.filesystem = filesystem or fs.LocalFileSystem()
        self.min_interval_s = min_interval_s
        self.trials: dict[str, TrialRecord] = {}
        self.history: list[dict[str, Any]] = []
        self._last_evaluation: dict[str, int] = {}  # trial id -> its latest evaluation in `history`
        self._rows: dict[str, list[dict[str, Any]]] = {}  # trial id -> its rows of `history`
        self._last_write = 0.0
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

    def finish(self, trial_id: str, status: str, *, error: str | None = None, ended_at: float | None = None) -> None:
        if status not in STATUSES:
            raise ValueError(f"status {status!r} is not one of {STATUSES}")
        record = self.trials[trial_id]
        record.status = status
        record.error = error
        record.ended_at = ended_at or time.time()
        self._dirty = True
        self.flush(force=True)

    def result(self) -> SearchResult:
        return SearchResult(self.experiment_dir, self.metric, self.mode, list(self.trials.values()))

    def final_record(self, trial_id: str, status: str, error: str | None = None) -> dict[str, Any]:
        """A trial's record as it ends (`finish` it with the same `ended_at`), and its history rows: what `restore`
        takes back, as plain JSON."""
        record = {**self._row(self.trials[trial_id]), "status": status, "error": error, "ended_at": time.time()}
        return {"record": record, "history": list(self._rows.get(trial_id, []))}

    def restore(self, final: dict[str, Any]) -> None:
        """Put back a trial's `final_record`: a killed driver may not have written its last evaluations or its end."""
        record = _row_record(final["record"], _location(self.filesystem, self.experiment_dir))
        self.trials[record.trial_id] = record
        self._drop_rows(lambda h: h["trial_id"] == record.trial_id)
        for row in final["history"]:
            self._add_row(row)
        self._last_evaluation[record.trial_id] = final["history"][-1]["evaluation"] if final["history"] else 0
        self._dirty = True
        self.flush(force=True)

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

    # ------------------------------------------------------------------ files

    def load(self) -> None:
        """Take up what an earlier run of this search wrote (trials left running stay 'running' until resumed)."""
        existing = read_results(self.experiment_dir, filesystem=self.filesystem, missing_ok=True)
        if existing is not None:
            self.trials = {t.trial_id: t for t in existing.trials}
        self.history = []
        for row in _read_rows(self.filesystem, f"{self.experiment_dir}/{HISTORY_NAME}"):
            self._add_row(row)
            # rows are in the order they were reported: a trial's latest is its last (after a PBT exploit its count
            # may have gone back to the donor's)
            self._last_evaluation[row["trial_id"]] = row["evaluation"]

    def flush(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self._dirty or (not force and now - self._last_write < self.min_interval_s):
            return
        import pyarrow as pa

        results_schema, history_schema = _schemas()
        rows = [self._row(t) for t in sorted(self.trials.values(), key=lambda t: t.number)]
        results = pa.Table.from_pylist(rows, schema=results_schema)
        history = pa.Table.from_pylist(self.history, schema=history_schema)
        metadata = {b"metric": self.metric.encode(), b"mode": self.mode.encode()}
        write_parquet(
            self.filesystem, f"{self.experiment_dir}/{RESULTS_NAME}", results.replace_schema_metadata(metadata)
        )
        write_parquet(self.filesystem, f"{self.experiment_dir}/{HISTORY_NAME}", history)
        self._last_write = now
        self._dirty = False

    def _row(self, record: TrialRecord) -> dict[str, Any]:
        """A record as the files keep it (every record written goes through here): its checkpoint relative to the
        experiment dir when it is inside it, so that the dir can be moved or copied (`read_results` joins it back)."""
        row = _record_row(record)
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
    trials = [_row_record(row, location) for row in _rows(table, path, ("trial_id", "number", "params"))]
    return SearchResult(
        str(experiment_dir), metadata.get(b"metric", b"").decode(), metadata.get(b"mode", b"max").decode(), trials
    )


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
    force: bool = False,
) -> list[Path]:
    """Export the best trial (or `trial_id`, or the best `top_k` side by side as out_dir/rank-N-TRIAL).

    `out_dir` must not be the experiment dir, inside it or around it; one that is not empty is replaced only with
    `force`, and only when it holds an earlier export and nothing else (see `tunetrain.export`).
    """
    if top_k is not None and top_k < 1:
        raise ConfigError(f"`top_k` is {top_k}, but must be >= 1")
    result, experiment = read_experiment(experiment_dir)
    if trial_id is not None:
        chosen = [t for t in result.trials if t.trial_id == trial_id]
        if not chosen:
            known = ", ".join(t.trial_id for t in result.trials[:10])
            raise ConfigError(f"trial {trial_id!r} is not in {str(experiment_dir)!r} (its trials: {known})")
    else:
        chosen = result.ranked()[: top_k or 1]
        if not chosen:
            raise ConfigError(f"experiment {str(experiment_dir)!r} holds no finished trial with a finite metric")
    side_by_side = top_k is not None and trial_id is None
    return write_exports(Path(out_dir), experiment, result, chosen, side_by_side=side_by_side, force=force)


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


def _schemas() -> tuple[Any, Any]:
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


def _record_row(record: TrialRecord) -> dict[str, Any]:
    row = asdict(record)
    row.pop("_experiment_dir")
    row["params"] = json.dumps(record.params, sort_keys=True, default=str)
    row["parent"] = None if record.parent is None else json.dumps(record.parent, sort_keys=True)
    return row


def _row_record(row: dict[str, Any], location: str) -> TrialRecord:
    """A record as the files keep it, read back in the experiment dir at `location` (see `_location`)."""
    row = dict(row)
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
    if local and not is_uri(checkpoint):
        path, base = Path(os.path.abspath(checkpoint)), Path(os.path.abspath(experiment_path))
    elif not local and is_uri(checkpoint):  # a trial's checkpoint in remote storage: `scheme://` + the path in it
        path = PurePosixPath(posixpath.normpath(checkpoint.split("://", 1)[1]))
        base = PurePosixPath(posixpath.normpath(experiment_path))
    else:
        return checkpoint
    return path.relative_to(base).as_posix() if path != base and path.is_relative_to(base) else checkpoint


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
