"""An exploit in two halves (the driver decides and copies, the trial takes it up): a kill at any point leaves the
old trial or the new one, and the copy never depends on the donor's rotation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fake_checkpoints import write_checkpoint
from pyarrow import fs

from tunetrain.storage.layout import EXPLOIT_DIR, EXPLOIT_NAME, LINEAGE_NAME
from tunetrain.tuning import lineage as lin
from tunetrain.tuning.lineage import Lineage, Segment, commit_exploit, read_lineage, take_up_exploit

LOCAL = fs.LocalFileSystem()


def _trials(tmp_path: Path) -> tuple[Path, Path]:
    donor, receiver = tmp_path / "trials" / "donor", tmp_path / "trials" / "recv"
    write_checkpoint(donor, 20, best=10, weights="donor")
    write_checkpoint(donor, 10, best=10, weights="donor")
    write_checkpoint(donor, 30, best=10, weights="donor")
    write_checkpoint(receiver, 30, best=30, weights="recv")
    return donor, receiver


def _commit(donor: Path, receiver: Path, *, params: dict | None = None) -> lin.Exploit | None:
    return commit_exploit(
        LOCAL,
        receiver_path=str(receiver),
        receiver_id="recv",
        receiver_params={"lr": 0.1},
        donor_path=str(donor),
        donor_id="donor",
        donor=read_lineage(LOCAL, str(donor)),
        donor_params={"lr": 0.01},
        params=params or {"lr": 0.012},
        evaluation=3,
    )


def _names(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def test_an_exploit_copies_the_donors_latest_and_best_checkpoints_and_the_trial_takes_them_up(tmp_path):
    donor, receiver = _trials(tmp_path)
    exploit = _commit(donor, receiver)
    assert exploit.step == 30 and exploit.checkpoints == ("checkpoint-30", "checkpoint-10")
    assert _names(receiver) == ["checkpoint-30", EXPLOIT_DIR]  # the trial's own stays until it takes the copy up
    assert (receiver / "checkpoint-30" / "model.safetensors").read_text() == "recv-30"
    assert _names(receiver / EXPLOIT_DIR / "checkpoint-30") == sorted(lin.CHECKPOINT_FILES)  # every file, whole

    lineage = take_up_exploit(LOCAL, str(receiver))
    assert _names(receiver) == ["checkpoint-10", "checkpoint-30", LINEAGE_NAME]
    assert (receiver / "checkpoint-30" / "model.safetensors").read_text() == "donor-30"  # a copy, not a link
    assert not (receiver / "checkpoint-30").is_symlink()
    assert lineage == read_lineage(LOCAL, str(receiver))
    assert lineage.segments == (Segment(0, {"lr": 0.01}, "donor"), Segment(30, {"lr": 0.012}, "recv", "donor"))
    assert lineage.exploits == ({"trial_id": "donor", "step": 30, "evaluation": 3},)
    assert lineage.params == {"lr": 0.012}
    # the donor rotating its checkpoints away later changes nothing the receiver has
    for path in donor.iterdir():
        for file in path.iterdir():
            file.unlink()
        path.rmdir()
    assert (receiver / "checkpoint-10" / "model.safetensors").read_text() == "donor-10"
    assert take_up_exploit(LOCAL, str(receiver)) is None  # nothing left to take up


def test_a_donors_chain_is_carried_over_up_to_the_step_copied():
    chain = Lineage(
        (Segment(0, {"lr": 1}, "a"), Segment(20, {"lr": 2}, "b", "a"), Segment(40, {"lr": 3}, "b", "c")),
        ({"trial_id": "a", "step": 20, "evaluation": 2},),
    )
    after = chain.exploited(
        receiver="r", step=30, params={"lr": 9}, donor="b", evaluation=5, before=Lineage.start("r", {"lr": 0})
    )
    # the donor's segment from 40 on trained nothing of its step-30 weights
    assert [(s.step, s.trial_id) for s in after.segments] == [(0, "a"), (20, "b"), (30, "r")]
    assert after.exploits == ({"trial_id": "b", "step": 30, "evaluation": 5},)  # the receiver's own exploits
    assert after.segment_at(25).params == {"lr": 2} and after.segment_at(30).params == {"lr": 9}


def test_a_driver_killed_while_copying_leaves_no_exploit(tmp_path):
    donor, receiver = _trials(tmp_path)
    _commit(donor, receiver)
    (receiver / EXPLOIT_DIR / EXPLOIT_NAME).unlink()  # killed before it decided: the copy has no exploit.json
    assert take_up_exploit(LOCAL, str(receiver)) is None
    assert _names(receiver) == ["checkpoint-30"]
    assert (receiver / "checkpoint-30" / "model.safetensors").read_text() == "recv-30"
    assert read_lineage(LOCAL, str(receiver)) is None


@pytest.mark.parametrize("killed_after", ["lineage", "own deleted", "one moved"])
def test_a_trial_killed_while_taking_up_an_exploit_takes_it_up_whole_when_it_starts_again(
    tmp_path, monkeypatch, killed_after
):
    donor, receiver = _trials(tmp_path)
    _commit(donor, receiver)
    calls = {"n": 0}
    real_move, real_delete = lin._move_dir, LOCAL.delete_dir

    class Killed(Exception):
        pass

    def move(filesystem, source, target):
        real_move(filesystem, source, target)
        calls["n"] += 1
        if killed_after == "one moved":
            raise Killed

    def delete_dir(path):
        real_delete(path)
        if killed_after == "own deleted" and path.endswith("checkpoint-30"):
            raise Killed

    monkeypatch.setattr(lin, "_move_dir", move)
    if killed_after == "lineage":
        monkeypatch.setattr(lin, "_checkpoints", lambda *a: (_ for _ in ()).throw(Killed()))
    filesystem = _Wrapped(LOCAL, delete_dir) if killed_after == "own deleted" else LOCAL
    with pytest.raises(Killed):
        take_up_exploit(filesystem, str(receiver))
    monkeypatch.undo()
    lineage = take_up_exploit(LOCAL, str(receiver))  # the trial starts again
    assert lineage is not None and lineage.params == {"lr": 0.012}
    assert _names(receiver) == ["checkpoint-10", "checkpoint-30", LINEAGE_NAME]
    assert (receiver / "checkpoint-30" / "model.safetensors").read_text() == "donor-30"
    assert (receiver / "checkpoint-10" / "model.safetensors").read_text() == "donor-10"


def test_a_donor_without_a_complete_checkpoint_gives_nothing(tmp_path):
    donor, receiver = tmp_path / "trials" / "donor", tmp_path / "trials" / "recv"
    (donor / "checkpoint-5").mkdir(parents=True)  # cut short: no trainer_state.json
    write_checkpoint(receiver, 30)
    assert _commit(donor, receiver) is None
    assert _names(receiver) == ["checkpoint-30"]


def test_a_checkpoint_rotated_away_while_it_is_copied_is_copied_again_from_the_newer_one(tmp_path, monkeypatch):
    donor, receiver = _trials(tmp_path)
    real_copy = lin._copy_checkpoints
    attempts = []

    def rotating(filesystem, source, target, names):
        attempts.append(names)
        if len(attempts) == 1:  # the donor saves step 40 and rotates 30 away mid-copy: its weights go first
            write_checkpoint(donor, 40, best=10, weights="donor")
            (donor / "checkpoint-30" / "model.safetensors").unlink()
        real_copy(filesystem, source, target, names)

    monkeypatch.setattr(lin, "_copy_checkpoints", rotating)
    exploit = _commit(donor, receiver)
    assert exploit.step == 40 and attempts == [("checkpoint-30", "checkpoint-10"), ("checkpoint-40", "checkpoint-10")]
    take_up_exploit(LOCAL, str(receiver))
    assert _names(receiver) == ["checkpoint-10", "checkpoint-40", LINEAGE_NAME]


class _Wrapped:
    """A filesystem whose delete_dir is replaced (to kill a take-up between two of its steps)."""

    def __init__(self, inner, delete_dir):
        self._inner, self.delete_dir = inner, delete_dir

    def __getattr__(self, name):
        return getattr(self._inner, name)


def test_a_donor_that_takes_an_exploit_up_while_it_is_copied_calls_the_exploit_off(tmp_path, monkeypatch):
    donor, receiver = _trials(tmp_path)
    real_copy = lin._copy_checkpoints

    def donor_exploited_meanwhile(filesystem, source, target, names):
        real_copy(filesystem, source, target, names)
        (donor / LINEAGE_NAME).write_text(json.dumps(Lineage.start("other", {"lr": 5}).to_dict()))

    monkeypatch.setattr(lin, "_copy_checkpoints", donor_exploited_meanwhile)
    assert _commit(donor, receiver) is None  # the params explored came from its old lineage
    assert _names(receiver) == ["checkpoint-30"]
