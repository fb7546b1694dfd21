"""Export refuses what it must never do: delete what is not a previous export, write into its own experiment, copy
weights that are not a whole safetensors file of the experiment's own; and an experiment moved or copied exports its
own weights.

No search runs: an experiment dir is made by a `ResultsBook` as a search makes it, with small safetensors files as
its checkpoints' weights (the e2e tests in test_export.py export real searches).
"""

from __future__ import annotations

import json
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import TESTS
from safetensors.numpy import save_file

from tunetrain.cli import main
from tunetrain.errors import ConfigError
from tunetrain.results import ResultsBook, export_trials, read_results
from tunetrain.storage.layout import EXPORT_MARKER, WEIGHTS_NAME

TINY = f"{TESTS / 'tiny_task.py'}:task"
# trial id -> its accuracy per evaluation (one checkpoint each, at step 10 * evaluation): t0 is the best, at its
# evaluation 2 (checkpoint-20), not its last (checkpoint-30)
TRIALS = {"t0": [0.5, 0.9, 0.7], "t1": [0.6, 0.8], "t2": [0.4]}
EXPORT_FILES = {WEIGHTS_NAME, "params.json", "metrics.json", "experiment.yaml", "README.md", EXPORT_MARKER}


def _weights(path: Path, value: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"w": np.full((3, 2), value, dtype=np.float32), "b": np.arange(4, dtype=np.int64)}, str(path))


def _experiment(path: Path) -> Path:
    """A finished search of TRIALS in `path`, each evaluation's checkpoint holding weights of its own."""
    path.mkdir(parents=True)
    state = {"status": "finished", "experiment": {"name": path.name, "task": TINY}}
    (path / "search.json").write_text(json.dumps(state))
    book = ResultsBook(str(path), metric="eval_accuracy", mode="max", min_interval_s=0.0)
    for number, (trial_id, values) in enumerate(TRIALS.items()):
        book.start(trial_id, number, {"hidden": 8 + number})
        for evaluation, value in enumerate(values, start=1):
            checkpoint = path / "trials" / trial_id / f"checkpoint-{10 * evaluation}"
            _weights(checkpoint / WEIGHTS_NAME, 10 * number + value)
            metrics = {"eval_accuracy": value, "evaluation": evaluation, "step": 10 * evaluation}
            book.report(trial_id, metrics, checkpoint=str(checkpoint))
        book.finish(trial_id, "completed")
    return path


def _best_weights(experiment: Path) -> Path:
    return experiment / "trials" / "t0" / "checkpoint-20" / WEIGHTS_NAME


def _files(root: Path) -> dict[str, bytes]:
    """Every file under `root` and its bytes: what a refused export must leave as it was."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def experiment(tmp_path: Path) -> Path:
    return _experiment(tmp_path / "runs" / "x")


@pytest.fixture
def no_deleting(experiment: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to delete fails the test (the code before this check would have emptied `/` or `~`); set up
    after the experiment (and pytest's tmp_path, which deletes old ones)."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"export tried to delete {args[:1]}")

    monkeypatch.setattr(shutil, "rmtree", refuse)
    monkeypatch.setattr(Path, "unlink", refuse)
    monkeypatch.setattr(Path, "rmdir", refuse)


# --- the best checkpoint, not the latest ----------------------------------------------------------------------------


def test_the_export_holds_the_best_checkpoint_s_weights_not_the_latest(experiment: Path, tmp_path: Path) -> None:
    (out,) = export_trials(experiment, tmp_path / "best")
    exported = (out / WEIGHTS_NAME).read_bytes()
    assert exported == _best_weights(experiment).read_bytes()
    assert exported != (experiment / "trials" / "t0" / "checkpoint-30" / WEIGHTS_NAME).read_bytes()
    assert json.loads((out / "metrics.json").read_text())["best_step"] == 20


# --- where an export may go -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "message"),
    [
        (".", "is the experiment dir"),
        ("trials", "is inside the experiment dir"),
        ("export", "is inside the experiment dir"),
        ("..", "holds the experiment dir"),
        ("../..", "holds the experiment dir"),
    ],
)
def test_an_export_into_or_around_its_own_experiment_dir_is_refused(experiment, tmp_path, where, message) -> None:
    _experiment(tmp_path / "runs" / "neighbour")
    before = _files(tmp_path)
    with pytest.raises(ConfigError, match=rf"^export dir '.*' {message} '.*x'"):
        export_trials(experiment, experiment / where, force=True)
    assert _files(tmp_path) == before  # nothing deleted, nothing written


def test_an_export_through_a_symlink_to_its_experiment_dir_is_refused(experiment, tmp_path, capsys) -> None:
    (tmp_path / "link").symlink_to(experiment, target_is_directory=True)
    before = _files(tmp_path / "runs")
    assert main(["export", str(tmp_path / "link"), "--out", str(experiment), "--force"]) == 2
    assert main(["export", str(experiment), "--out", str(tmp_path / "link"), "--force"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("is the experiment dir" in line for line in err)
    assert _files(tmp_path / "runs") == before


@pytest.mark.usefixtures("no_deleting")
def test_an_export_to_the_root_or_the_home_dir_is_refused(experiment, tmp_path, monkeypatch) -> None:
    home = tmp_path / "home"
    (home / "notes").mkdir(parents=True)
    (home / "notes" / "mine.txt").write_text("mine")
    monkeypatch.setenv("HOME", str(home))
    with pytest.raises(ConfigError, match=r"^export dir '/' is the root dir"):
        export_trials(experiment, "/", force=True)
    with pytest.raises(ConfigError, match=r"^export dir '.*home' is the home dir"):
        export_trials(experiment, home, force=True)
    assert (home / "notes" / "mine.txt").read_text() == "mine"


def test_force_never_deletes_what_is_not_a_previous_export(experiment: Path, tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "sub" / "keep.txt").write_text("mine")
    (tmp_path / "a-file").write_text("mine too")
    no_marker = rf"^export dir '.*mine' holds files that no export wrote \(no {EXPORT_MARKER} in it\)"
    with pytest.raises(ConfigError, match=no_marker):
        export_trials(experiment, mine, force=True)
    with pytest.raises(ConfigError, match=no_marker):
        export_trials(experiment, mine)
    with pytest.raises(ConfigError, match=r"^export dir '.*a-file' is a file, not a directory$"):
        export_trials(experiment, tmp_path / "a-file", force=True)
    assert (mine / "sub" / "keep.txt").read_text() == "mine" and (tmp_path / "a-file").read_text() == "mine too"


def test_force_replaces_a_previous_export_and_nothing_added_to_it(experiment: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    (single,) = export_trials(experiment, out)
    assert {p.name for p in single.iterdir()} == EXPORT_FILES
    with pytest.raises(ConfigError, match=r"exists and is not empty \(use --force to replace it\)$"):
        export_trials(experiment, out)
    top = export_trials(experiment, out, top_k=2, force=True)  # an export replaced by another
    assert [p.name for p in top] == ["rank-1-t0", "rank-2-t1"]
    assert {p.name for p in out.iterdir()} == {"rank-1-t0", "rank-2-t1", EXPORT_MARKER}
    export_trials(experiment, out, trial_id="t2", force=True)
    assert json.loads((out / "metrics.json").read_text())["trial_id"] == "t2"

    (out / "notes.txt").write_text("mine")  # the user's own file in an export: not the export's to delete
    with pytest.raises(ConfigError, match=r"holds files that no export wrote \(notes\.txt\)"):
        export_trials(experiment, out, force=True)
    assert (out / "notes.txt").read_text() == "mine"


def test_force_replaces_the_export_a_symlink_points_to(experiment: Path, tmp_path: Path) -> None:
    export_trials(experiment, tmp_path / "real")
    (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    export_trials(experiment, tmp_path / "link", trial_id="t1", force=True)
    assert (tmp_path / "link").is_symlink()
    assert json.loads((tmp_path / "real" / "metrics.json").read_text())["trial_id"] == "t1"


# --- the weights ------------------------------------------------------------------------------------------------------


def _header(tensors: dict) -> bytes:
    header = json.dumps(tensors).encode()
    return struct.pack("<Q", len(header)) + header


def _damage_truncated(weights: Path, tmp_path: Path) -> str:
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 5])
    return r"tensor '\w' has data_offsets \[\d+, \d+\] outside its \d+ bytes of data"


def _damage_tiny(weights: Path, tmp_path: Path) -> str:
    weights.write_bytes(b"\x01\x02")
    return "are 2 bytes: too short for a safetensors file"


def _damage_text(weights: Path, tmp_path: Path) -> str:
    weights.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n")  # a copy of /etc/passwd
    return r"its header length \(\d+ bytes\) runs past the end of the file"


def _damage_not_json(weights: Path, tmp_path: Path) -> str:
    weights.write_bytes(struct.pack("<Q", 4) + b"{no}" + b"\0" * 8)
    return "its header is not JSON"


def _damage_offsets(weights: Path, tmp_path: Path) -> str:
    weights.write_bytes(_header({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 4096]}}) + b"\0" * 16)
    return r"tensor 'w' has data_offsets \[0, 4096\] outside its 16 bytes of data"


def _damage_symlink(weights: Path, tmp_path: Path) -> str:
    secret = tmp_path / "secret"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    weights.unlink()
    weights.symlink_to(secret)
    return "are a symbolic link"


def _damage_symlink_to_weights(weights: Path, tmp_path: Path) -> str:
    elsewhere = tmp_path / "elsewhere.safetensors"
    _weights(elsewhere, 42.0)  # valid weights, but not this experiment's
    weights.unlink()
    weights.symlink_to(elsewhere)
    return "are a symbolic link"


def _damage_linked_checkpoint(weights: Path, tmp_path: Path) -> str:
    elsewhere = tmp_path / "elsewhere"
    _weights(elsewhere / WEIGHTS_NAME, 42.0)
    shutil.rmtree(weights.parent)
    weights.parent.symlink_to(elsewhere, target_is_directory=True)
    return "are outside the experiment dir"


DAMAGES = [
    _damage_truncated,
    _damage_tiny,
    _damage_text,
    _damage_not_json,
    _damage_offsets,
    _damage_symlink,
    _damage_symlink_to_weights,
    _damage_linked_checkpoint,
]


@pytest.mark.parametrize("damage", DAMAGES, ids=[d.__name__.removeprefix("_damage_") for d in DAMAGES])
def test_weights_that_are_not_a_whole_safetensors_file_of_the_experiment_are_refused(
    experiment, tmp_path, capsys, damage
) -> None:
    weights = _best_weights(experiment)
    reason = damage(weights, tmp_path)
    out = tmp_path / "out"
    assert main(["export", str(experiment), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tunetrain: error: ")  # one line
    assert str(weights) in err, err
    assert re.search(reason, err), err
    assert not out.exists()  # checked before anything is written

    (out / "rank-1-t0").mkdir(parents=True)  # nor is a previous export deleted for them
    (out / EXPORT_MARKER).write_text(json.dumps({"files": ["rank-1-t0"]}))
    (out / "rank-1-t0" / EXPORT_MARKER).write_text(json.dumps({"files": []}))
    with pytest.raises(ConfigError, match=reason):
        export_trials(experiment, out, top_k=2, force=True)
    assert (out / "rank-1-t0" / EXPORT_MARKER).is_file()


def test_an_experiment_dir_given_as_a_file_uri_is_checked_as_a_local_one(experiment, tmp_path) -> None:
    uri = f"file://{experiment}"
    with pytest.raises(ConfigError, match=r"is inside the experiment dir"):
        export_trials(uri, experiment / "export")
    (out,) = export_trials(uri, tmp_path / "best")
    assert (out / WEIGHTS_NAME).read_bytes() == _best_weights(experiment).read_bytes()
    _damage_symlink_to_weights(_best_weights(experiment), tmp_path)
    with pytest.raises(ConfigError, match=r"are a symbolic link"):
        export_trials(uri, tmp_path / "again")


def test_weights_of_another_trial_than_the_best_are_checked_too(experiment, tmp_path) -> None:
    weights = experiment / "trials" / "t1" / "checkpoint-20" / WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:20])
    with pytest.raises(ConfigError, match=rf"^the weights '{weights}' .*runs past the end of the file"):
        export_trials(experiment, tmp_path / "top", top_k=3)
    assert not (tmp_path / "top").exists()  # not even the first rank is written


# --- an experiment moved or copied -----------------------------------------------------------------------------------


def test_a_moved_experiment_exports_its_own_weights(experiment: Path, tmp_path: Path) -> None:
    best = _best_weights(experiment).read_bytes()
    moved = shutil.move(experiment, tmp_path / "elsewhere")
    (out,) = export_trials(moved, tmp_path / "best")
    assert (out / WEIGHTS_NAME).read_bytes() == best
    assert read_results(moved).best.checkpoint == str(Path(moved) / "trials" / "t0" / "checkpoint-20")


def test_a_copy_beside_its_original_exports_the_copy_s_weights(experiment: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(experiment, tmp_path / "runs" / "copy"))
    _weights(_best_weights(copy), 123.0)  # the copy's best weights are its own from now on
    (out,) = export_trials(copy, tmp_path / "best")
    assert (out / WEIGHTS_NAME).read_bytes() == _best_weights(copy).read_bytes()
    assert (out / WEIGHTS_NAME).read_bytes() != _best_weights(experiment).read_bytes()


# --- --top-k ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("top_k", [0, -1])
def test_top_k_below_one_is_refused(experiment: Path, tmp_path: Path, top_k: int) -> None:
    with pytest.raises(ConfigError, match=rf"^`top_k` is {top_k}, but must be >= 1$"):
        export_trials(experiment, tmp_path / "out", top_k=top_k)
    assert not (tmp_path / "out").exists()
