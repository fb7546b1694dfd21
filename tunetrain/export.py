"""Taking a trial out of a search: a self-contained folder, and the model loaded back from it.

An export folder holds:
- `model.safetensors`: the weights of the trial's best checkpoint (by the search metric, not its last one),
- `params.json`: the trial's params,
- `metrics.json`: best and last metric, evaluations run, status, the search metric and mode,
- `experiment.yaml`: the experiment with its space replaced by the fixed params, so that
  `tunetrain train DIR/experiment.yaml` re-trains the same run,
- `README.md`: a short card (task, params, metric, how to load).

`load_model(DIR)` rebuilds the model through the task's factory and loads the weights; nothing is unpickled.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from tunetrain.args import field_names
from tunetrain.errors import ConfigError
from tunetrain.experiment import load_experiment
from tunetrain.storage import copy_down, experiment_location, is_file, is_uri
from tunetrain.storage.layout import CARD_NAME, EXPERIMENT_NAME, METRICS_NAME, PARAMS_NAME, WEIGHTS_NAME
from tunetrain.task import load_task

if TYPE_CHECKING:
    import torch

    from tunetrain.experiment import Experiment
    from tunetrain.results import SearchResult, TrialRecord


def write_export(out_dir: Path, experiment: Experiment, result: SearchResult, trial: TrialRecord) -> Path:
    """One trial's export folder (see the module docstring). The checkpoint may be in remote storage (s3://...)."""
    missing = ConfigError(f"trial {trial.trial_id!r} has no best checkpoint left to export ({trial.best_checkpoint})")
    if not trial.best_checkpoint:
        raise missing
    weights = Path(trial.best_checkpoint) / WEIGHTS_NAME
    if is_uri(trial.best_checkpoint):  # in the experiment's storage: `scheme://` then the path in its filesystem
        filesystem, _ = experiment_location(result.experiment_dir)
        remote = f"{trial.best_checkpoint.split('://', 1)[1]}/{WEIGHTS_NAME}"
        if not is_file(filesystem, remote):
            raise missing
        weights = out_dir / WEIGHTS_NAME
        copy_down(filesystem, remote, weights)
    elif not weights.is_file():
        raise missing
    metrics = {
        "trial_id": trial.trial_id,
        "metric": result.metric,
        "mode": result.mode,
        "best_metric": trial.best_metric,
        "last_metric": trial.last_metric,
        "best_step": trial.best_step,
        "evaluations": trial.evaluations,
        "status": trial.status,
    }
    write_model_dir(out_dir, experiment, trial.params, metrics, weights=weights, source=trial.best_checkpoint)
    return out_dir


def write_model_dir(
    out_dir: Path,
    experiment: Experiment,
    params: dict[str, Any],
    metrics: dict[str, Any],
    *,
    weights: Path,
    source: str,
) -> None:
    """The exportable form of a model: weights, params, metrics, a re-runnable experiment file and a card."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if weights.resolve() != (out_dir / WEIGHTS_NAME).resolve():
        shutil.copyfile(weights, out_dir / WEIGHTS_NAME)
    (out_dir / PARAMS_NAME).write_text(json.dumps(params, indent=2, sort_keys=True, default=str))
    (out_dir / METRICS_NAME).write_text(json.dumps(metrics, indent=2, sort_keys=True, default=str))
    fixed = _fixed_experiment(experiment, params)
    header = f"# tunetrain train {out_dir / EXPERIMENT_NAME}\n# {experiment.name} with fixed params, from {source}\n"
    (out_dir / EXPERIMENT_NAME).write_text(header + yaml.safe_dump(fixed, sort_keys=False))
    (out_dir / CARD_NAME).write_text(_card(experiment, params, metrics, out_dir))


def load_model(model_dir: str | Path) -> torch.nn.Module:
    """The exported model: built by the task's factory with the exported params, weights loaded (no pickle)."""
    from tunetrain import checkpoint as ckpt  # torch

    path = Path(model_dir)
    for name in (WEIGHTS_NAME, PARAMS_NAME, EXPERIMENT_NAME):
        if not (path / name).is_file():
            raise ConfigError(f"{str(path)!r} is not an exported model: it has no {name}")
    experiment = load_experiment(path / EXPERIMENT_NAME)
    params = json.loads((path / PARAMS_NAME).read_text())
    task = load_task(experiment.task)
    model = task.model_init({k: v for k, v in params.items() if k not in field_names()})
    ckpt.load_weights(model, path / WEIGHTS_NAME)
    model.eval()
    return model


def _fixed_experiment(experiment: Experiment, params: dict[str, Any]) -> dict[str, Any]:
    """The experiment as a dict, its space replaced by `params` (TrainingArguments fields go to `train`)."""
    fixed = experiment.to_dict()
    fixed.pop("space", None)
    fixed.pop("search", None)
    fixed["train"] = {**fixed.get("train", {}), **{k: v for k, v in params.items() if k in field_names()}}
    model_params = {k: v for k, v in params.items() if k not in field_names()}
    if model_params:
        fixed["params"] = model_params
    else:
        fixed.pop("params", None)
    return fixed


def empty_dir(path: Path, force: bool) -> Path:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        if not force:
            raise ConfigError(f"export dir {str(path)!r} exists and is not empty (use --force to replace it)")
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _card(experiment: Experiment, params: dict[str, Any], metrics: dict[str, Any], out_dir: Path) -> str:
    rows = "\n".join(f"| `{k}` | `{v}` |" for k, v in sorted(params.items()))
    shown = {k: v for k, v in metrics.items() if v is not None}
    metric_rows = "\n".join(f"| {k} | {v} |" for k, v in shown.items())
    return f"""# {experiment.name}

Task: `{experiment.task}`

## Params
| param | value |
|---|---|
{rows}

## Metrics
| | |
|---|---|
{metric_rows}

## Use
```python
import tunetrain
model = tunetrain.load_model("{out_dir}")   # the task's model with these weights, in eval mode
```
Re-train the same run: `tunetrain train {out_dir / EXPERIMENT_NAME}`; a final fit on train + eval data with a
longer budget: `tunetrain train {out_dir} --full-data --set train.num_train_epochs=N`.
"""
