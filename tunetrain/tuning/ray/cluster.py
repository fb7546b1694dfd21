"""The Ray a search runs on: a local one of its own on 127.0.0.1, or a cluster joined by address, checked before
anything of the experiment is written (resources for one trial, storage every node can see).

Starting a local Ray takes seconds (its GCS, raylet and agents come up); a search begins it in the background
(`start_in_background`) while the driver imports Ray Tune and prepares the search, and `connect` takes it up. The
thread that starts Ray lives until `stop`: the processes Ray starts are tied to the thread that started them
(PR_SET_PDEATHSIG), and would be killed when it ended.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import ray

from tunetrain.errors import ConfigError
from tunetrain.storage import is_file, resolve_storage, write_whole
from tunetrain.storage.layout import STORAGE_CHECK_PREFIX

if TYPE_CHECKING:
    from tunetrain.storage import ExperimentDir
    from tunetrain.tuning.config import SearchConfig

QUIET_ENV = {
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",  # no CSV / JSON / TensorBoard loggers of Ray's own: we keep ours
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "RAY_AIR_NEW_OUTPUT": "0",
    "RAY_DEDUP_LOGS": "0",
}


def connect(config: SearchConfig, exp_dir: ExperimentDir) -> bool:
    """Start or join Ray (or take up the start `start_in_background` began) and check that the search can run there;
    True when this search started Ray (`stop` shuts it down).

    Called before anything of the experiment is written or deleted, so bad input loses nothing.
    """
    try:
        started_here = _pending.wait() if _pending is not None else start(config)
    except BaseException:  # its error, or Ctrl-C while it starts: a Ray it goes on to start is shut down
        abandon()
        raise
    try:
        _check_resources(config)
        if cluster_address(config):
            _check_storage_on_every_node(exp_dir)
    except BaseException:
        stop(started_here)
        raise
    return started_here


class _Start(threading.Thread):
    """`start` in a thread that then waits for `stop` (see the module docstring)."""

    def __init__(self, config: SearchConfig) -> None:
        super().__init__(name="tunetrain-ray-start", daemon=True)
        self.config = config
        self.done = threading.Event()
        self.released = threading.Event()
        self.started: bool = False
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            # Ray warns that, called from this thread, it leaves the SIGTERM handler alone: what the CLI wants
            with _warning_dropped("ray._private.worker", "SIGTERM handler is not set"):
                self.started = start(self.config)
        except BaseException as exc:  # raised in the caller by `wait`
            self.error = exc
        finally:
            self.done.set()
        self.released.wait()

    def wait(self) -> bool:
        """What `start` returned, or what it raised (from the main thread, see `_python_sigterm_handler_back`)."""
        self.done.wait()
        _python_sigterm_handler_back()
        if self.error is not None:
            self.released.set()
            raise self.error
        return self.started


_pending: _Start | None = None


def start_in_background(config: SearchConfig) -> None:
    """Begin `start` (a local Ray, or joining a cluster) in a thread; `connect` takes it up, or `abandon` ends it."""
    global _pending
    _quiet()  # before Ray Tune is imported, which the caller goes on to do
    if _pending is None:
        _pending = _Start(config)
        _pending.start()


def abandon() -> None:
    """The search stops before `connect`: the Ray that `start_in_background` started, if it did, is shut down."""
    if _pending is None:
        return
    try:
        started_here = _pending.wait()
    except BaseException:  # the search's own error is the one to show
        started_here = False
    stop(started_here)


def stop(started_here: bool) -> None:
    """Shut down the Ray this search started (when `started_here`) and end the thread that started it."""
    global _pending
    try:
        if started_here:
            _shut_down()
    finally:
        if _pending is not None:
            _pending.released.set()
            _pending = None


def _shut_down() -> None:
    """`ray.shutdown()`, without its wait on the autoscaler's monitor (a local Ray has nothing to scale): given a
    second to end on SIGTERM, it takes all of it. Killed first, it is gone at once."""
    from ray._private import ray_constants

    node = getattr(ray._private.worker, "_global_node", None)
    processes = getattr(node, "all_processes", {}) if node is not None and node.is_head() else {}
    for info in processes.get(getattr(ray_constants, "PROCESS_TYPE_MONITOR", "monitor"), []):
        if info.process.poll() is None:
            info.process.kill()
            info.process.wait()
    ray.shutdown()


@contextlib.contextmanager
def _warning_dropped(logger_name: str, text: str) -> Iterator[None]:
    """The records of logger `logger_name` that contain `text` dropped, while in this block."""

    def keep(record: logging.LogRecord) -> bool:
        return text not in record.getMessage()

    logger = logging.getLogger(logger_name)
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def start(config: SearchConfig, *, named: str = "`search.address`") -> bool:
    """Connect to `address` (what the user `named` it: the file's key, or a flag), or start a local Ray on
    127.0.0.1; False when Ray was already up in this process."""
    _quiet()
    if ray.is_initialized():
        return False
    with _sigterm_handler_kept():
        return _start_or_join(config, named)


def _python_sigterm_handler_back() -> None:
    """Ray's core worker puts a handler of its own on SIGTERM (a stack dump, then abort: exit -6) as it starts. From
    the main thread, `start` puts the caller's back (`_sigterm_handler_kept`); started in another thread, it is put
    back here, in the main thread, once the start is done: Python's handler (the CLI's, which stops a search as
    Ctrl-C does) is the one the process answers SIGTERM with again."""
    if threading.current_thread() is not threading.main_thread():
        return
    handler = signal.getsignal(signal.SIGTERM)  # Python's own record: Ray's C++ handler is not in it
    if callable(handler):
        signal.signal(signal.SIGTERM, handler)


def _quiet() -> None:
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


@contextlib.contextmanager
def _sigterm_handler_kept() -> Iterator[None]:
    """Keep the SIGTERM handler the caller installed (the CLI's, which stops a search as Ctrl-C does) across
    `ray.init`, which replaces it with `sys.exit` and a stack dump. A process without one keeps Ray's."""
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if in_main else None
    try:
        yield
    finally:
        if callable(previous):
            signal.signal(signal.SIGTERM, previous)


def _start_or_join(config: SearchConfig, named: str) -> bool:
    common = {"log_to_driver": False, "logging_level": logging.ERROR, "include_dashboard": False}
    address = cluster_address(config)
    if address:
        where = f"{named if config.address else 'RAY_ADDRESS'} is {address!r}"
        _probe_address(address, where)
        try:
            ray.init(address=address, **common)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"{where}, but no Ray cluster answers there: {reason}") from None
        return True
    # "local": a Ray of its own, even where `ray start` left a cluster's address behind (/tmp/ray/ray_current_cluster,
    # which a bare ray.init() would join, and fail on once that cluster is gone)
    _keep_on_loopback()
    # no idle workers started ahead: a trial's actor never takes one (Ray starts a process of its own for each)
    quick = {"prestart_worker_first_driver": False}
    ray.init(address="local", _node_ip_address="127.0.0.1", _system_config=quick, **common)
    return True


def _keep_on_loopback() -> None:
    """A local Ray listens on 127.0.0.1 only, unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1 says otherwise.

    Ray reads that variable once, when it is first imported, and the driver's choice of address follows it: imported
    before (by the user's script, or a task file that imports ray), its GCS and raylet would listen on every
    interface. The variable covers the processes Ray starts; its constant (private to Ray: if Ray renames it, this
    sets nothing, and tests/test_cli_faults.py's loopback test fails) covers the driver's own choice.
    """
    if os.environ.get(_RAY_CLUSTER_ENV, "0") != "0":
        return  # the user asked for a local Ray other machines can join
    os.environ[_RAY_CLUSTER_ENV] = "0"
    from ray._private import ray_constants

    if hasattr(ray_constants, "ENABLE_RAY_CLUSTER"):
        ray_constants.ENABLE_RAY_CLUSTER = False


_RAY_CLUSTER_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def cluster_address(config: SearchConfig) -> str | None:
    """The cluster to join: `search.address`, else RAY_ADDRESS (set by Ray for a job submitted to a cluster)."""
    if config.address:
        return config.address
    address = os.environ.get("RAY_ADDRESS") or None
    if address is not None and address.startswith("ray://"):  # as search.address refuses it (see config)
        raise ConfigError(
            f"RAY_ADDRESS is {address!r}, but Ray Client (ray://) is not supported: run tunetrain search on a node "
            "of the cluster, with RAY_ADDRESS (or --address) HOST:PORT (the GCS port) or auto"
        )
    return address


def _probe_address(address: str, where: str) -> None:
    """Fail in seconds when no cluster is there (ray.init would retry for minutes)."""
    import socket

    from ray._private.services import canonicalize_bootstrap_address_or_die

    try:
        host, _, port = canonicalize_bootstrap_address_or_die(address).rpartition(":")
    except (ConnectionError, ValueError) as exc:
        raise ConfigError(f"{where}, but no running Ray cluster was found: {exc}") from None
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{where}, but nothing answers at {host}:{port}: {exc}") from None


def _check_resources(config: SearchConfig) -> None:
    """Fail now, not after waiting forever, when the cluster can never hold one trial (its workers may be spread
    over several nodes, as Ray Train places them)."""
    per_trial = config.resources_per_trial
    check_workers_fit(per_trial.workers, per_trial.cpu, per_trial.gpu, "`search.resources_per_trial` asks for")


def check_workers_fit(workers: int, cpu: float, gpu: float, asked: str) -> None:
    """A ConfigError (starting with `asked`) unless the live nodes together can hold `workers` processes of `cpu`
    CPUs and `gpu` GPUs each."""
    if worker_slots(cpu, gpu) >= workers:
        return
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    have = ", ".join(f"{n.get('CPU', 0):g} CPU + {n.get('GPU', 0):g} GPU" for n in nodes) or "no live node"
    each = f"{cpu:g} CPU + {gpu:g} GPU"
    what = f"{workers} workers of {each} each" if workers > 1 else f"{each} per trial"
    where = "no node of the Ray cluster has that much" if workers == 1 else "the Ray cluster's nodes hold fewer"
    raise ConfigError(f"{asked} {what}, but {where} ({have})")


def worker_slots(cpu: float, gpu: float) -> int:
    """How many processes of `cpu` CPUs and `gpu` GPUs the live nodes hold together."""
    return sum(_how_many(node["Resources"], cpu, gpu) for node in ray.nodes() if node.get("Alive"))


def _how_many(node: dict[str, float], cpu: float, gpu: float) -> int:
    """How many processes of `cpu` CPUs and `gpu` GPUs a node holds."""
    count = int(node.get("CPU", 0) // cpu) if cpu else 1 << 30
    if gpu:
        count = min(count, int(node.get("GPU", 0) // gpu))
    return count


def _check_storage_on_every_node(exp_dir: ExperimentDir) -> None:
    """A marker the driver writes must be readable from every node, or trials could not save or resume."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    marker = f"{exp_dir.path}/{STORAGE_CHECK_PREFIX}{uuid.uuid4().hex}"
    write_whole(exp_dir.filesystem, marker, b"tunetrain")
    try:
        check = ray.remote(num_cpus=0)(_can_read)
        nodes = [node for node in ray.nodes() if node.get("Alive")]
        futures = {
            node["NodeManagerAddress"]: check.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
            ).remote(exp_dir.uri, marker)
            for node in nodes
        }
        blind = [address for address, future in futures.items() if not _answer(future)]
    finally:
        exp_dir.filesystem.delete_file(marker)
    if blind:
        raise ConfigError(
            f"`search.storage` {exp_dir.uri!r} is not reachable from Ray node(s) {', '.join(blind)}: use a directory "
            "shared by every node (e.g. NFS) or a URI such as s3://bucket/path"
        )


def _answer(future: Any) -> bool:
    try:
        return bool(ray.get(future, timeout=60))
    except (ray.exceptions.GetTimeoutError, ray.exceptions.RayError):
        return False


def _can_read(uri: str, marker: str) -> bool:
    try:
        filesystem, _ = resolve_storage(uri)
        return is_file(filesystem, marker)
    except Exception:  # any failure to reach the storage is the answer "no"
        return False
