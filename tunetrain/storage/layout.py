"""Every file and folder name of an experiment dir, a run's output dir and an export, defined once.

```
storage/NAME/                      an experiment dir (`ExperimentDir`)
  .tunetrain.lock                  who is searching it now (one driver per experiment)
  search.json                      how the search was started, and whether it finished
  results.parquet                  a row per trial
  history.parquet                  a row per evaluation
  optuna.journal                   the study (optuna backend), or a mirror of it (ray backend, local storage)
  trials/<trial id>/               a trial's output dir: its checkpoints, and ended.json once it ended for good;
                                   under PBT lineage.json, and exploit/ while a copied checkpoint waits for it
  tensorboard/<trial id>/          its TensorBoard events
  report.html, *.png               `tunetrain report`'s page and figures
  experiment_state-*.json, ...     Ray's own state of the search (ray backend), and trial_<id>/ its token checkpoints
  ray-state-backup/sealed.json     the last copy of Ray's own state, sealed (a resume restores only that)
  ray-state-backup/set-aside/      Ray's files a resume found at the top that were not that copy
OUTPUT_DIR/checkpoint-<step>/      a checkpoint of one run (see tunetrain.checkpoint), written whole
EXPORT_DIR/                        model.safetensors, params.json, metrics.json, experiment.yaml, README.md,
                                   .tunetrain-export (what the export wrote)
```

The checkpoint's own files are named here too; `tunetrain.checkpoint` is the only module that builds a checkpoint's
path from a step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunetrain.storage.files import exists, read_json, write_json
from tunetrain.storage.location import is_local, resolve_storage, uri_for

if TYPE_CHECKING:
    from pyarrow.fs import FileSystem

# --- an experiment dir
LOCK_NAME = ".tunetrain.lock"  # held by the one driver searching the experiment (see tunetrain.storage.lock)
STATE_NAME = "search.json"
RESULTS_NAME = "results.parquet"
HISTORY_NAME = "history.parquet"
JOURNAL_NAME = "optuna.journal"
TRIALS_DIR = "trials"
TENSORBOARD_DIR = "tensorboard"
ENDED_NAME = "ended.json"  # in a trial's dir, written by the driver when the trial has ended for good
LINEAGE_NAME = "lineage.json"  # in a trial's dir (PBT): the params in force from each step, and who trained them
EXPLOIT_DIR = "exploit"  # in a trial's dir (PBT): checkpoints copied from another trial, not yet taken up
EXPLOIT_NAME = "exploit.json"  # in EXPLOIT_DIR, written last: the copy is whole, and what the trial takes up
REPORT_NAME = "report.html"  # `tunetrain report`'s page and its figures
CURVES_PNG = "learning_curves.png"
PARAMS_PNG = "params.png"
BEST_SO_FAR_PNG = "best_so_far.png"
POPULATION_PNG = "population.png"  # only for a search whose trials exploited others (PBT)
PARETO_PNG = "pareto.png"  # only for a search of several objectives, as HYPERVOLUME_PNG (no BEST_SO_FAR_PNG)
HYPERVOLUME_PNG = "hypervolume.png"
RAY_BACKUP_DIR = "ray-state-backup"
SEALED_NAME = "sealed.json"  # in RAY_BACKUP_DIR: Ray's state, sealed with the user's key (see storage.signing)
SET_ASIDE_DIR = "set-aside"  # in RAY_BACKUP_DIR: files of Ray's a resume moved out of its way, unread
TOKEN_NAME = "tunetrain.json"  # the one file of the token checkpoints a trial reports to Ray
DAMAGED_SUFFIX = ".damaged"  # what cannot be read is moved aside under this suffix, never deleted: a file of Ray's
# state found cut short (before its backup is put back), a checkpoint a resume skips
STORAGE_CHECK_PREFIX = ".storage-check-"  # a marker every Ray node must read before a search on a cluster starts

# --- a checkpoint: `checkpoint-<step>/` in a run's output dir
CHECKPOINT_PREFIX = "checkpoint"
WEIGHTS_NAME = "model.safetensors"
OPTIMIZER_NAME = "optimizer.pt"
SCHEDULER_NAME = "scheduler.pt"
SCALER_NAME = "scaler.pt"
RNG_STATE_NAME = "rng_state.pt"
TRAINER_STATE_NAME = "trainer_state.json"  # written last: what marks a checkpoint complete
PARAMS_NAME = "params.json"
ARGS_NAME = "training_args.json"

# --- an export (and the final model of `tunetrain train`): WEIGHTS_NAME, PARAMS_NAME and these
METRICS_NAME = "metrics.json"
EXPERIMENT_NAME = "experiment.yaml"
CARD_NAME = "README.md"
EXPORT_MARKER = ".tunetrain-export"  # what an export wrote (JSON): the only dir `--force` may empty
FINAL_SUFFIX = "-final"  # `tunetrain train DIR` (an experiment dir or an export) writes beside it: DIR-final


class ExperimentDir:
    """`storage/NAME/` on a local disk, a shared directory, or a pyarrow filesystem (s3://...), and the paths in it.

    `path` is the path within `filesystem`; `uri` is what Ray's storage_path and a user see (the path on a local
    disk, `scheme://path` elsewhere).
    """

    def __init__(self, filesystem: FileSystem, path: str, uri: str) -> None:
        self.filesystem = filesystem
        self.path = path
        self.uri = uri

    @classmethod
    def open(cls, storage: str, name: str) -> ExperimentDir:
        """The experiment `name` under `storage` (a directory or a URI; see `resolve_storage`)."""
        filesystem, base = resolve_storage(storage)
        path = f"{base.rstrip('/')}/{name}"
        return cls(filesystem, path, uri_for(storage, path))

    @property
    def is_local(self) -> bool:
        return is_local(self.filesystem)

    # --- paths within `filesystem`
    @property
    def state_path(self) -> str:
        return f"{self.path}/{STATE_NAME}"

    @property
    def results_path(self) -> str:
        return f"{self.path}/{RESULTS_NAME}"

    @property
    def history_path(self) -> str:
        return f"{self.path}/{HISTORY_NAME}"

    @property
    def journal_path(self) -> str:
        return f"{self.path}/{JOURNAL_NAME}"

    @property
    def ray_backup_path(self) -> str:
        return f"{self.path}/{RAY_BACKUP_DIR}"

    def trial_path(self, trial_id: str) -> str:
        """A trial's output dir: its checkpoints, and ended.json."""
        return f"{self.path}/{TRIALS_DIR}/{trial_id}"

    def ended_path(self, trial_id: str) -> str:
        return f"{self.trial_path(trial_id)}/{ENDED_NAME}"

    def tensorboard_path(self, trial_id: str) -> str:
        return f"{self.path}/{TENSORBOARD_DIR}/{trial_id}"

    def uri_of(self, path: str) -> str:
        """What a user sees for a path inside this experiment's filesystem."""
        return path if self.is_local else f"{self.uri.split('://', 1)[0]}://{path}"

    # --- the state marker
    def exists(self) -> bool:
        return exists(self.filesystem, self.path)

    def read_state(self) -> dict[str, Any] | None:
        """`search.json`: the experiment as first run, and whether its search finished."""
        return read_json(self.filesystem, self.state_path)

    def write_state(self, state: dict[str, Any]) -> None:
        write_json(self.filesystem, self.state_path, state)

    def remove(self) -> None:
        """Delete the experiment dir; its lock stays, if there is one (the driver removing it holds it)."""
        from pyarrow import fs

        if not self.exists():
            return
        entries = self.filesystem.get_file_info(fs.FileSelector(self.path))
        if all(info.base_name != LOCK_NAME for info in entries):
            self.filesystem.delete_dir(self.path)
            return
        for info in entries:
            if info.base_name == LOCK_NAME:
                continue
            if info.type == fs.FileType.Directory:
                self.filesystem.delete_dir(info.path)
            else:
                self.filesystem.delete_file(info.path)
