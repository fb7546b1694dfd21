"""Data-parallel runs: one function on N processes of this machine, through torch's elastic launcher.

Each process trains the same `train()`: accelerate (in the loop) reads the launcher's RANK / WORLD_SIZE, joins the
process group (gloo on a CPU, nccl on GPUs) and wraps the model and the DataLoader; only the main process logs and
writes. A user error in any process is raised here as the one line it was (the other processes are stopped, not
left waiting on a collective); a process that dies otherwise is a `ProcessFailedError` naming it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunetrain import errors
from tunetrain.errors import ConfigError, ProcessFailedError, TunetrainError


def default_threads(nproc: int) -> int:
    """torch threads a process: OMP_NUM_THREADS, else the machine's cores shared out among the processes."""
    given = os.environ.get("OMP_NUM_THREADS", "")
    if given.isdigit() and int(given) > 0:
        return int(given)
    return max(1, (os.cpu_count() or 1) // nproc)


def check_devices(nproc: int, *, use_cpu: bool) -> None:
    """A ConfigError when `nproc` processes would train on GPUs (this machine has some, and the run does not ask for
    the CPU) but the machine has fewer GPUs than that: nccl runs one process a GPU."""
    import torch

    if use_cpu or not torch.cuda.is_available():
        return
    gpus = torch.cuda.device_count()
    if nproc > gpus:
        raise ConfigError(
            f"--nproc is {nproc}, but this machine has {gpus} GPU(s) and each process trains on one of its own "
            f"(nccl): give --nproc {gpus}, or train on the CPU with --set train.use_cpu=true"
        )


def launch(fn: Callable[..., Any], args: tuple[Any, ...], *, nproc: int, threads: int | None = None) -> Any:
    """`fn(*args)` in `nproc` processes of this machine (ranks 0..nproc-1, rendezvous on loopback); returns what the
    main process's call returned. `threads`: torch threads a process (default: `default_threads`)."""
    if not isinstance(nproc, int) or nproc < 1:
        raise ConfigError(f"--nproc is {nproc!r}, but must be a whole number of processes >= 1")
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    threads = threads or default_threads(nproc)
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"tunetrain-{uuid.uuid4().hex[:12]}",
        rdzv_backend="c10d",
        rdzv_endpoint="127.0.0.1:0",  # a free port on loopback, as torchrun --standalone (on localhost)
        max_restarts=0,
        monitor_interval=0.1,
        start_method="spawn",
        local_addr="127.0.0.1",
    )
    errors_dir = tempfile.mkdtemp(prefix="tunetrain-launch-")
    previous = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(threads)  # the processes' (inherited), before they import torch
    # the launcher logs a failed process's exit with a traceback of its own: the error below says it in one line
    elastic_logger = logging.getLogger("torch.distributed.elastic")
    elastic_level = elastic_logger.level
    elastic_logger.setLevel(logging.CRITICAL)
    try:
        returned = elastic_launch(config, _process)(fn, args, errors_dir, threads)
        return returned[0]
    except SignalException as exc:  # Ctrl-C or SIGTERM reached the launcher: the processes are stopped
        raise KeyboardInterrupt(str(exc)) from None
    except ChildFailedError as exc:
        raise _error_of(errors_dir, exc) from None
    finally:
        elastic_logger.setLevel(elastic_level)
        if previous is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = previous
        shutil.rmtree(errors_dir, ignore_errors=True)


def _process(fn: Callable[..., Any], args: tuple[Any, ...], errors_dir: str, threads: int) -> Any:
    """One process of `launch`: its tunetrain error is written down for the launcher and the process exits at once
    (no traceback: the launcher says it in one line); anything else keeps its traceback."""
    import torch

    torch.set_num_threads(threads)
    try:
        return fn(*args)
    except KeyboardInterrupt:
        raise
    except TunetrainError as exc:
        error = {"type": type(exc).__name__, "message": str(exc), "exit_code": exc.exit_code}
        rank = os.environ.get("RANK", "0")
        Path(errors_dir, f"{rank}.json").write_text(json.dumps(error))
        sys.stdout.flush()
        sys.stderr.flush()
        sys.exit(exc.exit_code)  # a clean exit (its semaphores released): no traceback for SystemExit
    except BaseException:
        # the launcher keeps a process's traceback in a file of its own: printed here, where the user sees it
        traceback.print_exc()
        sys.stderr.flush()
        raise


def _error_of(errors_dir: str, failed: Any) -> TunetrainError:
    """The error a process wrote down (the lowest rank's), as its class; else which process died, and how."""
    written = sorted(Path(errors_dir).glob("*.json"), key=lambda path: int(path.stem))
    if written:
        error = json.loads(written[0].read_text())
        cls = getattr(errors, error["type"], None)
        if isinstance(cls, type) and issubclass(cls, TunetrainError):
            return cls(error["message"])
        exc = TunetrainError(error["message"])  # a subclass of the task's own: its message and exit code
        exc.exit_code = error["exit_code"]
        return exc
    rank, failure = failed.get_first_failure()
    how = f"was killed by signal {-failure.exitcode}" if failure.exitcode < 0 else f"exited with {failure.exitcode}"
    return ProcessFailedError(f"process {rank} of the run {how}; the others were stopped (--resume continues it)")
