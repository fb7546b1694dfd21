"""What both search backends share: the experiment directory, its state marker, a trial's TrainingArguments,
the budget in evaluations, and the console progress a user watches.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow.fs

    from tunetrain.args import TrainingArguments
    from tunetrain.checkpoint import TrainerState
    from tunetrain.experiment import Experiment
    from tunetrain.results import ResultsBook, SearchResult
    from tunetrain.tuning.config import SearchConfig

STATE_NAME = "search.json"


class ExperimentDir:
    """`storage/name/` on a local disk, a shared directory, or a pyarrow filesystem (s3://...)."""

    def __init__(self, filesystem: pyarrow.fs.FileSystem, path: str, uri: str) -> None:
        self.filesystem = filesystem
        self.path = path  # the path within `filesystem`
        self.uri = uri  # what Ray's storage_path / a user sees

    @classmethod
    def for_experiment(cls, experiment: Experiment, config: SearchConfig) -> ExperimentDir:
        from pyarrow import fs

        from tunetrain.tuning.config import resolve_storage

        filesystem, base = resolve_storage(config.storage)
        path = f"{base.rstrip('/')}/{experiment.name}"
        if isinstance(filesystem, fs.LocalFileSystem):
            return cls(filesystem, path, path)
        scheme = config.storage.split("://", 1)[0]
        return cls(filesystem, path, f"{scheme}://{path}")

    @property
    def is_local(self) -> bool:
        from pyarrow import fs

        return isinstance(self.filesystem, fs.LocalFileSystem)

    def exists(self) -> bool:
        from pyarrow import fs

        return self.filesystem.get_file_info(self.path).type != fs.FileType.NotFound

    def read_state(self) -> dict[str, Any] | None:
        """`search.json`: the experiment as first run, and whether its search finished."""
        return read_json(self.filesystem, f"{self.path}/{STATE_NAME}")

    def write_state(self, state: dict[str, Any]) -> None:
        write_json(self.filesystem, f"{self.path}/{STATE_NAME}", state)

    def remove(self) -> None:
        if self.exists():
            self.filesystem.delete_dir(self.path)


def read_json(filesystem: pyarrow.fs.FileSystem, path: str) -> Any:
    """The JSON file at `path` on `filesystem`, or None where there is none."""
    from pyarrow import fs

    if filesystem.get_file_info(path).type == fs.FileType.NotFound:
        return None
    with filesystem.open_input_stream(path) as stream:
        return json.loads(stream.read().decode())


def write_json(filesystem: pyarrow.fs.FileSystem, path: str, value: Any) -> None:
    """Write `value` as JSON whole: on a local disk under a temporary name, then renamed (a kill never leaves half a
    file); an object store replaces an object whole by itself."""
    write_whole(filesystem, path, json.dumps(value, indent=2, sort_keys=True, default=str).encode())


def write_whole(filesystem: pyarrow.fs.FileSystem, path: str, data: bytes) -> None:
    """Write a file whole (see `write_json`)."""
    from pyarrow import fs

    filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
    if isinstance(filesystem, fs.LocalFileSystem):
        tmp = Path(f"{path}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    else:
        with filesystem.open_output_stream(path) as stream:
            stream.write(data)


def trial_arguments(
    experiment: Experiment,
    config: SearchConfig,
    output_dir: str,
    *,
    logging_dir: str | None = None,
    save_total_limit: int = 1,
) -> TrainingArguments:
    """A trial's TrainingArguments: every evaluation is reported, with the checkpoint saved at that evaluation,
    and the loop tracks its best evaluation (the trial's value) by the search's metric and mode."""
    args = experiment.training_arguments(output_dir=output_dir)  # SearchConfig checked it evaluates
    args = args.replace(
        save_strategy=args.eval_strategy,
        save_steps=args.eval_steps,
        save_total_limit=save_total_limit,  # the best counts against it and survives, so does the latest
        load_best_model_at_end=False,
        disable_tqdm=True,
        logging_dir=logging_dir,
    )
    greater_is_better = config.mode == "max"
    if args.objective_metric != config.metric or args.greater_is_better != greater_is_better:
        args = args.replace(metric_for_best_model=config.metric, greater_is_better=greater_is_better)
    return args


def evaluation_report(metrics: dict[str, Any], state: TrainerState) -> dict[str, Any]:
    """What a search records of one evaluation: its numeric metrics, and where in the run it happened."""
    report = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    report.update(evaluation=state.num_evaluations, step=state.global_step, epoch=state.epoch)
    return report


def evaluation_budget(args: TrainingArguments, steps_per_epoch: int | None) -> int:
    """How many evaluations one full run makes (ASHA's max_t by default)."""
    if args.eval_strategy == "epoch" and args.max_steps <= 0:
        return max(1, math.ceil(args.num_train_epochs))
    if steps_per_epoch is None:
        raise ValueError("steps_per_epoch is needed to count the evaluations of this run")
    max_steps = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * steps_per_epoch)
    if args.eval_strategy == "epoch":
        return max(1, math.ceil(max_steps / steps_per_epoch))
    return max(1, max_steps // args.eval_steps)


def steps_per_epoch(experiment: Experiment) -> int:
    """Optimizer steps in one epoch of the experiment's task (loads the task in this process)."""
    from tunetrain.task import load_task

    args = experiment.training_arguments(output_dir="unused")
    batches = math.ceil(len(load_task(experiment.task).train_dataset) / args.per_device_train_batch_size)
    return math.ceil(batches / args.gradient_accumulation_steps)


def budget_for(experiment: Experiment) -> int:
    args = experiment.training_arguments(output_dir="unused")
    needs_data = not (args.eval_strategy == "epoch" and args.max_steps <= 0)
    return evaluation_budget(args, steps_per_epoch(experiment) if needs_data else None)


class Progress:
    """What the user watches: a line when a trial ends (or every `every_s`), and the top-k table at the end."""

    def __init__(self, book: ResultsBook, total: int, *, stream: Any = None, every_s: float = 5.0) -> None:
        self.book = book
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.every_s = every_s
        self._last = 0.0

    def update(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.every_s:
            return
        self._last = now
        line = self.book.result().summary_line(total=self.total)
        print(f"[{time.strftime('%H:%M:%S')}] {line}", file=self.stream, flush=True)

    def final(self, result: SearchResult, k: int = 5) -> None:
        print(f"\n{result.summary_line()}\n\n{result.table(k)}\n", file=self.stream, flush=True)
