"""The `tunetrain` command line.

User errors (bad YAML, bad params, a missing checkpoint, a task that does not import) print one line on stderr
and exit with code 2; a traceback means a bug in tunetrain.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from tunetrain.errors import ConfigError, TunetrainError

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors: one line, exit 2, as ours
        self.exit(EXIT_USAGE, f"tunetrain: error: {message}\n")


def _top_k(text: str) -> int:
    """`--top-k K`: a whole number >= 1 (argparse puts "argument --top-k: " before the message)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"is {text!r}, but must be a whole number >= 1") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"is {value}, but must be a whole number >= 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tunetrain", description="Hyperparameter-search-centric training for PyTorch.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = commands.add_parser("train", help="train one run: an experiment file, an export, or a search's best")
    train.add_argument(
        "experiment", help="an experiment YAML file, an export dir, or an experiment dir (its best trial's params)"
    )
    train.add_argument("--full-data", action="store_true", help="train on the train and eval splits together")
    train.add_argument("--params", help="params as a JSON object, or the path of a JSON file (default: the space's)")
    train.add_argument("--trial", help="with an experiment dir: this trial's params instead of the best trial's")
    train.add_argument(
        "--by", metavar="METRIC",
        help="with an experiment dir of several objectives: the Pareto front's trial best in METRIC",
    )  # fmt: skip
    train.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        metavar="CHECKPOINT",
        help="resume from the latest checkpoint in the output dir, or from CHECKPOINT",
    )
    train.add_argument(
        "--output-dir",
        help="where checkpoints and logs go (default: train.output_dir, else runs/NAME-train; for a DIR, DIR-final)",
    )
    train.add_argument(
        "--overwrite-output-dir", action="store_true",
        help="train from scratch into an output dir that holds another run (its checkpoints and model are removed)",
    )  # fmt: skip
    train.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a key of the experiment file, e.g. --set train.num_train_epochs=5 (repeatable)",
    )  # fmt: skip
    train.add_argument(
        "--nproc", type=_top_k, default=1, metavar="N",
        help="train data-parallel on N processes of this machine (gloo on CPUs, nccl on GPUs: one a GPU)",
    )  # fmt: skip
    train.add_argument(
        "--address", help="train on a Ray cluster (auto or HOST:PORT) through Ray Train; the output dir must be shared"
    )
    train.add_argument("--workers", type=_top_k, metavar="N", help="with --address: Ray Train workers (default 1)")
    train.add_argument(
        "--cpus-per-worker", type=float, default=1.0, metavar="C", help="with --address: CPUs a worker (default 1)"
    )
    train.add_argument(
        "--gpus-per-worker", type=float, default=0.0, metavar="G", help="with --address: GPUs a worker (default 0)"
    )

    search = commands.add_parser("search", help="search the experiment's space (Ray Tune by default)")
    search.add_argument("experiment", help="the experiment YAML file")
    search.add_argument("--backend", choices=("ray", "optuna"), help="override search.backend")
    search.add_argument("--num-trials", type=int, metavar="N", help="override search.num_trials")
    search.add_argument("--address", help="a Ray cluster to join: auto or HOST:PORT (run on a node of the cluster)")
    search.add_argument("--storage", help="where experiments live: a (shared) directory or a URI such as s3://b/p")
    search.add_argument("--gpus-per-trial", type=float, metavar="F", help="GPUs per trial; fractions share one")
    search.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a key of the experiment file, e.g. --set search.num_trials=8 (repeatable)",
    )  # fmt: skip
    search.add_argument("--restart", action="store_true", help="delete the experiment's results and start over")

    export = commands.add_parser("export", help="take trials out of a search as self-contained folders")
    export.add_argument("experiment_dir", help="the experiment dir (storage/NAME)")
    export.add_argument("--out", required=True, help="the export dir (must not exist or be empty)")
    export.add_argument("--trial", help="this trial instead of the best")
    export.add_argument("--top-k", type=_top_k, metavar="K", help="the best K trials side by side")
    export.add_argument(
        "--pareto", action="store_true", help="several objectives: every trial of the Pareto front side by side"
    )
    export.add_argument("--by", metavar="METRIC", help="several objectives: the front's trial best in METRIC")
    export.add_argument("--force", action="store_true", help="replace a non-empty export dir")

    report = commands.add_parser("report", help="the top-k table, report.html and plots of a search")
    report.add_argument("experiment_dir", help="the experiment dir (storage/NAME)")
    report.add_argument("--out", help="where report.html and the PNGs go (default: the experiment dir)")
    report.add_argument("--top-k", type=_top_k, default=10, metavar="K", help="rows of the table (default 10)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging()
    terminated = _TerminateAsInterrupt(enabled=args.command in ("train", "search"))  # the commands that resume
    try:
        with terminated:
            return _COMMANDS[args.command](args)
    except TunetrainError as exc:  # a user error (exit 2), a diverged run or a full disk (exit 1): not bugs to trace
        print(f"tunetrain: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        how = "terminated (SIGTERM)" if terminated.received else "interrupted"
        if args.command == "search":
            print(f"tunetrain: search {how}; run the same command again to resume it", file=sys.stderr)
        else:
            print(f"tunetrain: {how}; run the same command with --resume to continue", file=sys.stderr)
        return EXIT_TERMINATED if terminated.received else EXIT_INTERRUPTED


class _TerminateAsInterrupt:
    """SIGTERM (what SLURM, Kubernetes and `kill` send) handled as Ctrl-C: the run or the search stops the way an
    interrupt stops it (a search's Ray saves its state first), resumable; the exit code says which it was. A second
    SIGTERM kills at once."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self.received = False
        self._previous: Any = None

    def __enter__(self) -> None:
        # signal handlers live in the main thread only (a test may call main() from another)
        if self.enabled and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self.received = True
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if not callable(signal.getsignal(signal.SIGINT)):
            # SIGINT ignored: a command started in the background by a non-interactive shell (`tunetrain train x &`
            # in a script) inherits that, and a SIGINT sent on would do nothing: the run would go on to its end
            raise KeyboardInterrupt
        # SIGINT reaches whoever handles Ctrl-C now: Ray Tune's handler while a search runs (it stops the trials and
        # saves the experiment's state), else Python's, which raises KeyboardInterrupt here
        os.kill(os.getpid(), signal.SIGINT)


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
    _check_launch(cli)
    experiment, params, schedule, default_output = _what_to_train(cli)
    threads = _use_exported_threads(cli.experiment)
    output_dir = cli.output_dir or default_output
    args = experiment.training_arguments(**({"output_dir": output_dir} if output_dir else {}))
    resume = cli.resume
    if cli.address:  # Ray Train's workers run in a directory of their own: every path absolute
        args = args.replace(output_dir=os.path.abspath(args.output_dir))
        resume = os.path.abspath(resume) if isinstance(resume, str) else resume
    _check_output_dir(args.output_dir, resume=cli.resume is not None, overwrite=cli.overwrite_output_dir)
    fit = FinalFit(experiment, params, args, resume=resume, full_data=cli.full_data, schedule=schedule)
    if cli.address:
        shown = _fit_on_ray(cli, fit, threads)
    elif cli.nproc > 1:
        from tunetrain.launch import check_devices, launch

        check_devices(cli.nproc, use_cpu=args.use_cpu)
        shown = launch(final_fit, (fit,), nproc=cli.nproc, threads=threads)
    else:
        shown = final_fit(fit)
    print(json.dumps(shown, default=str))
    return 0


def _check_launch(cli: argparse.Namespace) -> None:
    if cli.address and cli.nproc > 1:
        raise ConfigError("--nproc trains on this machine, --address on a Ray cluster (with --workers): give one")
    if not cli.address and (cli.workers is not None or cli.cpus_per_worker != 1.0 or cli.gpus_per_worker != 0.0):
        raise ConfigError("--workers, --cpus-per-worker and --gpus-per-worker are for a Ray cluster: add --address")


@dataclasses.dataclass(frozen=True)
class FinalFit:
    """What `tunetrain train` trains, the same in each of its processes."""

    experiment: Any
    params: dict[str, Any]
    args: Any  # TrainingArguments
    resume: Any = None  # --resume: None, True, or a checkpoint
    full_data: bool = False
    schedule: tuple[Any, ...] = ()  # `ScheduleStep`s: the params from later steps on (a PBT trial's lineage)


def final_fit(fit: FinalFit) -> dict[str, Any]:
    """The final fit in this process (one of several, data-parallel): train, score the test split once, and (the
    main process) write the exportable model beside the checkpoints; what `tunetrain train` prints."""
    from tunetrain.loop import Trainer
    from tunetrain.task import load_task

    args = fit.args
    task = load_task(fit.experiment.task)
    if fit.full_data:
        task, args = _on_full_data(task, args)
    if fit.schedule:
        from tunetrain.schedule import train_on_schedule

        def make_trainer(run_args: Any, reporters: list[Any]) -> Trainer:
            return Trainer(task, run_args, fit.experiment.space, reporters=reporters)

        trainer, output = train_on_schedule(make_trainer, args, fit.params, fit.schedule, resume=fit.resume)
    else:
        trainer = Trainer(task, args, fit.experiment.space)  # only the main process's reporters (the console) run
        output = trainer.train(resume_from_checkpoint=fit.resume, trial=fit.params)
    finished = (Path(trainer.run_args.output_dir) / "model.safetensors").is_file()
    if fit.resume and "train_loss" not in output.metrics and finished:
        # no step done, and the run's result already written (a run killed after its last checkpoint but before
        # its final model goes on to write that model)
        raise ConfigError(
            f"nothing left to train: the checkpoint is at step {output.global_step}, the end of this run's budget "
            f"({trainer.state.max_steps} steps); raise train.num_train_epochs or train.max_steps (--set) to train on"
        )
    metrics = {**output.metrics, "num_threads": trainer.state.num_threads}  # a re-train of it uses as many
    if task.test_dataset is not None:
        # a final fit: the test split is scored once, at the end, never used for selection
        metrics.update(trainer.evaluate(task.test_dataset, metric_key_prefix="test"))
    params = trainer.params if fit.schedule else fit.params  # a schedule's: its last segment's
    if trainer.accelerator.is_main_process:
        _save_final(trainer, fit, params, metrics)
    shown = {k: v for k, v in metrics.items() if not k.endswith(("_runtime", "_per_second"))}
    return {"output_dir": trainer.run_args.output_dir, "params": params, "metrics": shown}


def _fit_on_ray(cli: argparse.Namespace, fit: FinalFit, threads: int | None) -> dict[str, Any]:
    """The final fit on a Ray cluster's workers (Ray Train); what the main worker's `final_fit` returned."""
    from tunetrain.tuning.config import Resources, SearchConfig
    from tunetrain.tuning.ray import cluster
    from tunetrain.tuning.ray.data_parallel import run_on_workers

    workers = cli.workers or 1
    resources = Resources(cpu=cli.cpus_per_worker, gpu=cli.gpus_per_worker, workers=workers)
    config = SearchConfig(address=cli.address, resources_per_trial=resources)
    started = cluster.start(config, named="--address")
    try:
        cluster.check_workers_fit(workers, resources.cpu, resources.gpu, "--workers asks for")
        shown: list[dict[str, Any]] = []
        run_on_workers(
            _final_fit_worker,
            {"fit": fit, "threads": threads or max(1, int(resources.cpu))},
            workers=workers,
            cpu=resources.cpu,
            gpu=resources.gpu,
            name=f"tunetrain-train-{fit.experiment.name}",
            on_item=shown.append,
        )
    finally:
        cluster.stop(started)
    return shown[-1]


def _final_fit_worker(config: dict[str, Any]) -> None:
    """A Ray Train worker of `tunetrain train --address`: `final_fit` in this process, the main one's output relayed."""
    import ray.train
    import torch

    torch.set_num_threads(config["threads"])
    shown = final_fit(config["fit"])
    if ray.train.get_context().get_world_rank() == 0:
        config["relay"].put(shown)


def _use_exported_threads(source: str) -> int | None:
    """Re-training an export: as many torch threads as its trial trained with (the weights, and so the metric,
    depend on it), unless OMP_NUM_THREADS chooses; returns that count (None: the default)."""
    metrics = Path(source) / "metrics.json"
    if os.environ.get("OMP_NUM_THREADS") or not metrics.is_file():
        return None
    try:
        threads = json.loads(metrics.read_text()).get("num_threads")
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(threads, int) and threads > 0:
        import torch

        torch.set_num_threads(threads)
        print(f"tunetrain: {threads} torch thread(s), as the exported run had (OMP_NUM_THREADS chooses)",
              file=sys.stderr)  # fmt: skip
        return threads
    return None


def _check_output_dir(output_dir: str, *, resume: bool, overwrite: bool) -> None:
    """An output dir holding another run is trained into only to resume it, or with --overwrite-output-dir (which
    removes that run's checkpoints and model first); a search's experiment dir never (before: a second run mixed
    in the first one's checkpoints, and a later --resume took a stale one)."""
    from tunetrain import checkpoint as ckpt
    from tunetrain.storage.layout import STATE_NAME, WEIGHTS_NAME

    path = Path(output_dir)
    if (path / STATE_NAME).is_file():
        raise ConfigError(
            f"output dir {output_dir!r} is a search's experiment dir (it has {STATE_NAME}): give another --output-dir"
        )
    previous = [*ckpt.list_checkpoints(path), *([path / WEIGHTS_NAME] if (path / WEIGHTS_NAME).is_file() else [])]
    if not previous or resume:
        return
    if not overwrite:
        raise ConfigError(
            f"output dir {output_dir!r} holds another run ({previous[0].name}): --resume continues it, "
            "--overwrite-output-dir trains from scratch in its place, or give another --output-dir"
        )
    ckpt.remove_run(path)


def _what_to_train(cli: argparse.Namespace) -> tuple[Any, dict[str, Any], tuple[Any, ...], str | None]:
    """(experiment, params of step 0, schedule of later params, default output dir) from an experiment file, an
    export dir or an experiment dir (its best trial; a trial PBT exploited replays its lineage)."""
    from tunetrain.experiment import apply_overrides, experiment_from_dict, load_experiment
    from tunetrain.export import trial_schedule
    from tunetrain.results import read_experiment
    from tunetrain.storage import is_uri
    from tunetrain.storage.layout import EXPERIMENT_NAME, FINAL_SUFFIX

    path = Path(cli.experiment)
    default_output = None  # an experiment dir in remote storage (s3://...): its experiment's own output_dir
    if not is_uri(cli.experiment):
        if not path.is_dir() or (path / EXPERIMENT_NAME).is_file():
            for flag, value in (("--trial", cli.trial), ("--by", cli.by)):
                if value is not None:
                    raise ConfigError(
                        f"{flag} chooses a trial of a search's experiment dir, but {cli.experiment!r} is an "
                        f"{'export' if path.is_dir() else 'experiment file'}"
                    )
        if not path.is_dir():
            experiment = load_experiment(path, cli.overrides)
            return experiment, _params_for(experiment, cli.params), _schedule_for(experiment, cli), None
        default_output = str(path.resolve().parent / f"{path.resolve().name}{FINAL_SUFFIX}")  # beside it, not in it
        if (path / EXPERIMENT_NAME).is_file():  # an export: its experiment file fixes the params
            experiment = load_experiment(path / EXPERIMENT_NAME, cli.overrides)
            return experiment, _params_for(experiment, cli.params), _schedule_for(experiment, cli), default_output
    result, experiment = read_experiment(cli.experiment)  # an experiment dir: the best trial's params
    experiment = experiment_from_dict(apply_overrides(experiment.to_dict(), cli.overrides))
    if cli.params is not None:
        if cli.trial is not None or cli.by is not None:
            raise ConfigError(
                f"--params and --{'trial' if cli.trial is not None else 'by'} each give the params: give one"
            )
        return experiment, _params_for(experiment, cli.params), (), default_output
    trial, which = _chosen_trial(result, cli)
    if trial is None:
        raise ConfigError(f"experiment {cli.experiment!r} holds no finished trial with a finite metric")
    print(f"tunetrain: training {which} {trial.trial_id} of {cli.experiment}", file=sys.stderr)
    start, schedule = trial_schedule(result, trial)
    return experiment, start, schedule, default_output


def _chosen_trial(result: Any, cli: argparse.Namespace) -> tuple[Any, str]:
    """The trial of an experiment dir to train: --trial, --by (several objectives), else the best."""
    if cli.trial is not None and cli.by is not None:
        raise ConfigError("--trial and --by each choose the trial to train: give one")
    if cli.trial is not None:
        return result.trial(cli.trial), "trial"
    if cli.by is not None:
        return result.best_by(cli.by), f"the Pareto front's best {cli.by} trial"
    return result.best, "the best trial"  # several objectives: a ConfigError saying how to choose


def _schedule_for(experiment: Any, cli: argparse.Namespace) -> tuple[Any, ...]:
    if experiment.schedule and cli.params is not None:
        raise ConfigError(
            "--params gives the params of a whole run, but the experiment's `schedule` changes them at given steps: "
            "drop one (edit the file's params and schedule, or train it as it is)"
        )
    return experiment.schedule


def _on_full_data(task: Any, args: Any) -> tuple[Any, Any]:
    """Train on train + eval: nothing is left to evaluate on, so evaluation and best-model tracking are off."""
    import dataclasses

    from torch.utils.data import ConcatDataset

    if task.eval_dataset is None:
        raise ConfigError("--full-data: the task has no eval_dataset to add to its training data")
    task = dataclasses.replace(task, train_dataset=ConcatDataset([task.train_dataset, task.eval_dataset]))
    task.eval_dataset = None
    args = args.replace(eval_strategy="no", load_best_model_at_end=False, early_stopping_patience=None)
    return task, args


def _params_for(experiment: Any, given: str | None) -> dict[str, Any]:
    if given is None and experiment.params:
        return dict(experiment.params)
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


def _save_final(trainer: Any, fit: FinalFit, params: dict[str, Any], metrics: dict[str, Any]) -> None:
    """The final model in exportable form beside the checkpoints (see `tunetrain.export`); a scheduled run's
    experiment file keeps its schedule."""
    from safetensors.torch import save_model

    from tunetrain.export import write_model_dir
    from tunetrain.storage.layout import WEIGHTS_NAME

    output_dir = Path(trainer.run_args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model = trainer.accelerator.unwrap_model(trainer.model)
    save_model(model, str(output_dir / WEIGHTS_NAME))
    write_model_dir(
        output_dir, fit.experiment, params, metrics, weights=output_dir / WEIGHTS_NAME, source="tunetrain train",
        model=model, start=fit.params, schedule=fit.schedule,
    )  # fmt: skip


def _export(cli: argparse.Namespace) -> int:
    from tunetrain.results import export_trials

    paths = export_trials(
        cli.experiment_dir, cli.out, trial_id=cli.trial, top_k=cli.top_k, pareto=cli.pareto, by=cli.by,
        force=cli.force,
    )  # fmt: skip
    for path in paths:
        print(path)
    return 0


def _report(cli: argparse.Namespace) -> int:
    from tunetrain.report import summary_text, write_report

    html = write_report(cli.experiment_dir, out_dir=cli.out, top_k=cli.top_k)
    print(summary_text(cli.experiment_dir, cli.top_k))
    print(f"report: {html}")
    return 0


def _search(cli: argparse.Namespace) -> int:
    from tunetrain.tuning.driver import search

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
    if result.multi_objective:
        return _print_front(result)
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


def _print_front(result: Any) -> int:
    """A search of several objectives ends with its Pareto front (one JSON line, as a search's best)."""
    front = result.pareto
    if not front:
        if not result.ranked():
            print("tunetrain: no trial reported finite values of every objective", file=sys.stderr)
            return 1
        counts = ", ".join(f"{n} {status}" for status, n in result.counts().items() if n)
        print(
            f"tunetrain: no trial trained to its end ({counts}), so there is no Pareto front (it is taken over "
            "finished trials): see them with tunetrain report, export one with --trial ID",
            file=sys.stderr,
        )
        return 0
    summary = {
        "experiment_dir": result.experiment_dir,
        "pareto": [
            {"trial_id": t.trial_id, "params": t.params, **dict(zip(result.metrics, t.objectives, strict=True)),
             "checkpoint": t.checkpoint}
            for t in front
        ],
    }  # fmt: skip
    print(json.dumps(summary, default=str))
    return 0


_COMMANDS = {"train": _train, "search": _search, "export": _export, "report": _report}


if __name__ == "__main__":
    raise SystemExit(main())
