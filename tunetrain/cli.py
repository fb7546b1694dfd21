"""The `tunetrain` command line.

User errors (bad YAML, bad params, a missing checkpoint, a task that does not import) print one line on stderr
and exit with code 2; a traceback means a bug in tunetrain.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from tunetrain.errors import ConfigError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors: one line, exit 2, as ours
        self.exit(EXIT_USAGE, f"tunetrain: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tunetrain", description="Hyperparameter-search-centric training for PyTorch.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = commands.add_parser("train", help="train one run from an experiment file")
    train.add_argument("experiment", help="the experiment YAML file")
    train.add_argument("--params", help="params as a JSON object, or the path of a JSON file (default: the space's)")
    train.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        metavar="CHECKPOINT",
        help="resume from the latest checkpoint in the output dir, or from CHECKPOINT",
    )
    train.add_argument("--output-dir", help="where checkpoints and logs go (default: train.output_dir or runs/NAME)")
    train.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a key of the experiment file, e.g. --set train.num_train_epochs=5 (repeatable)",
    )  # fmt: skip

    search = commands.add_parser("search", help="search the experiment's space (Ray Tune by default)")
    search.add_argument("experiment", help="the experiment YAML file")
    search.add_argument("--backend", choices=("ray", "optuna"), help="override search.backend")
    search.add_argument("--num-trials", type=int, metavar="N", help="override search.num_trials")
    search.add_argument("--address", help="a Ray cluster to join: auto, HOST:PORT or ray://HOST:PORT")
    search.add_argument("--storage", help="where experiments live: a (shared) directory or a URI such as s3://b/p")
    search.add_argument("--gpus-per-trial", type=float, metavar="F", help="GPUs per trial; fractions share one")
    search.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a key of the experiment file, e.g. --set search.num_trials=8 (repeatable)",
    )  # fmt: skip
    search.add_argument("--restart", action="store_true", help="delete the experiment's results and start over")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging()
    try:
        return _COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"tunetrain: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("tunetrain: interrupted; run the same command with --resume to continue", file=sys.stderr)
        return EXIT_INTERRUPTED


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of each record (tests swap it)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _setup_logging() -> None:
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("tunetrain: %(message)s"))
    root = logging.getLogger("tunetrain")
    if not root.handlers:
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False


def _train(cli: argparse.Namespace) -> int:
    from tunetrain.experiment import load_experiment

    experiment = load_experiment(cli.experiment, cli.overrides)
    params = _params_for(experiment, cli.params)
    overrides = {"output_dir": cli.output_dir} if cli.output_dir else {}
    args = experiment.training_arguments(**overrides)

    from tunetrain.loop import Trainer
    from tunetrain.task import load_task

    task = load_task(experiment.task)
    trainer = Trainer(task, args, experiment.space)
    output = trainer.train(resume_from_checkpoint=cli.resume, trial=params)
    metrics = dict(output.metrics)
    if task.test_dataset is not None:
        # a final fit: the test split is scored once, at the end, never used for selection
        metrics.update(trainer.evaluate(task.test_dataset, metric_key_prefix="test"))
    _save_final(trainer, params, metrics)
    shown = {k: v for k, v in metrics.items() if not k.endswith(("_runtime", "_per_second"))}
    print(json.dumps({"output_dir": trainer.run_args.output_dir, "params": params, "metrics": shown}, default=str))
    return 0


def _params_for(experiment: Any, given: str | None) -> dict[str, Any]:
    if given is None:
        params, how = experiment.space.defaults()
        if params:
            described = ", ".join(f"{k}={v!r} ({how[k]})" for k, v in params.items())
            print(f"tunetrain: no --params given; using the space's {described}", file=sys.stderr)
        return params
    text = given
    if not given.lstrip().startswith("{"):
        path = Path(given)
        if not path.is_file():
            raise ConfigError(f"--params {given!r} is neither a JSON object nor an existing JSON file")
        text = path.read_text(encoding="utf-8")
    try:
        params = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--params is not valid JSON: {exc}") from None
    if not isinstance(params, dict):
        raise ConfigError(f"--params must be a JSON object of param names to values, got {type(params).__name__}")
    if experiment.space.is_empty:
        return params
    defaults, _ = experiment.space.defaults()
    return experiment.space.validate({**_active_defaults(experiment.space, defaults, params), **params})


def _active_defaults(space: Any, defaults: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """Defaults for the params not given, keeping only those whose condition holds with the given values."""
    merged = {**defaults, **given}
    return {k: v for k, v in defaults.items() if k not in given and space.is_active(k, merged)}


def _save_final(trainer: Any, params: dict[str, Any], metrics: dict[str, Any]) -> None:
    """The final model and its metrics beside the checkpoints: `model.safetensors`, `params.json`, `results.json`."""
    from safetensors.torch import save_model

    output_dir = Path(trainer.run_args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    save_model(trainer.accelerator.unwrap_model(trainer.model), str(output_dir / "model.safetensors"))
    (output_dir / "params.json").write_text(json.dumps(params, indent=2, sort_keys=True))
    (output_dir / "results.json").write_text(json.dumps(metrics, indent=2, sort_keys=True, default=str))


def _search(cli: argparse.Namespace) -> int:
    from tunetrain.tuning import search

    try:
        result = search(
            cli.experiment,
            overrides=cli.overrides,
            backend=cli.backend,
            num_trials=cli.num_trials,
            address=cli.address,
            storage=cli.storage,
            gpus_per_trial=cli.gpus_per_trial,
            restart=cli.restart,
        )
    except KeyboardInterrupt:
        print("tunetrain: search interrupted; run the same command again to resume it", file=sys.stderr)
        return EXIT_INTERRUPTED
    best = result.best
    if best is None:
        print("tunetrain: no trial reported a finite metric", file=sys.stderr)
        return 1
    summary = {
        "experiment_dir": result.experiment_dir,
        "best": {"trial_id": best.trial_id, "params": best.params, result.metric: best.metric,
                 "checkpoint": best.checkpoint},
    }  # fmt: skip
    print(json.dumps(summary, default=str))
    return 0


_COMMANDS = {"train": _train, "search": _search}


if __name__ == "__main__":
    raise SystemExit(main())
