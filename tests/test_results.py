"""Tests for `tunetrain.results`: the driver's `ResultsBook`, the files it writes, and `SearchResult`'s answers.

No search runs: a book is fed as a driver feeds it. test_trial_store.py covers a trial's final record coming back
through its ended.json; test_report.py, the figures drawn from these files.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
from pyarrow import fs
from pyarrow import parquet as pq

from tunetrain.errors import ConfigError
from tunetrain.results import ResultsBook, SearchResult, TrialRecord, read_history, read_results
from tunetrain.tuning.pareto import dominates


def _book(path: Path, *, mode: str = "max", interval: float = 0.0, **kwargs) -> ResultsBook:
    path.mkdir(parents=True, exist_ok=True)  # the search makes the experiment dir before its book
    return ResultsBook(str(path), metric="eval_accuracy", mode=mode, min_interval_s=interval, **kwargs)


def _report(book: ResultsBook, trial_id: str, values: list, *, first: int = 1) -> None:
    for evaluation, value in enumerate(values, start=first):
        metrics = {"eval_accuracy": value, "evaluation": evaluation, "step": 10 * evaluation}
        book.report(trial_id, metrics, checkpoint=f"ckpt-{10 * evaluation}")


def _record(trial_id: str, best: float | None, status: str = "completed", **params) -> TrialRecord:
    return TrialRecord(trial_id=trial_id, number=int(trial_id[1:]), params=params, status=status, best_metric=best)


# --- ResultsBook: recording ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "best", "step"), [("max", 0.8, 20), ("min", 0.5, 10)])
def test_a_trial_s_metric_is_its_best_evaluation_not_its_last(tmp_path, mode, best, step):
    book = _book(tmp_path, mode=mode)
    book.start("t0", 0, {"lr": 0.1})
    _report(book, "t0", [0.5, 0.8, 0.6])
    record = book.trials["t0"]
    assert (record.best_metric, record.best_step, record.best_checkpoint) == (best, step, f"ckpt-{step}")
    assert (record.last_metric, record.evaluations, record.status) == (0.6, 3, "running")
    assert record.metric == best and record.checkpoint == f"ckpt-{step}"


def test_a_nan_evaluation_is_recorded_but_never_becomes_the_best(tmp_path):
    book = _book(tmp_path)
    book.start("t0", 0, {})
    _report(book, "t0", [float("nan")])
    assert book.trials["t0"].best_metric is None and math.isnan(book.trials["t0"].last_metric)
    _report(book, "t0", [0.3, float("nan"), float("inf")], first=2)
    record = book.trials["t0"]
    assert (record.best_metric, record.best_step, record.best_checkpoint) == (0.3, 20, "ckpt-20")
    assert math.isinf(record.last_metric) and record.evaluations == 4
    assert [h["evaluation"] for h in book.history] == [1, 2, 3, 4]


def test_a_better_evaluation_without_a_checkpoint_keeps_the_best_checkpoint(tmp_path):
    book = _book(tmp_path)
    book.start("t0", 0, {})
    book.report("t0", {"eval_accuracy": 0.5, "evaluation": 1, "step": 10}, checkpoint="ckpt-10")
    book.report("t0", {"eval_accuracy": "0.75", "evaluation": 2, "step": 20})  # a number as a string counts
    record = book.trials["t0"]
    assert (record.best_metric, record.best_step, record.best_checkpoint) == (0.75, 20, "ckpt-10")


def test_evaluations_are_numbered_when_the_report_does_not_say(tmp_path):
    book = _book(tmp_path)
    book.start("t0", 0, {})
    book.report("t0", {"eval_accuracy": 0.1})
    book.report("t0", {"eval_accuracy": 0.2})
    assert [(h["evaluation"], h["step"]) for h in book.history] == [(1, 0), (2, 0)]
    assert book.last_evaluation("t0") == 2 and book.last_evaluation("unknown") == 0


def test_a_resumed_trial_s_repeated_evaluations_replace_the_later_ones(tmp_path):
    book = _book(tmp_path)
    book.start("t0", 0, {})
    book.start("t1", 1, {})
    _report(book, "t0", [0.1, 0.2, 0.3])
    _report(book, "t1", [0.5, 0.6])
    book.start("t0", 0, {})  # restarted from its checkpoint at evaluation 1
    _report(book, "t0", [0.25], first=2)
    assert [(h["trial_id"], h["evaluation"], h["metric"]) for h in book.history] == [
        ("t0", 1, 0.1),
        ("t1", 1, 0.5),
        ("t1", 2, 0.6),
        ("t0", 2, 0.25),
    ]
    assert book.last_evaluation("t0") == 2 and book.trials["t0"].evaluations == 2


def test_start_again_marks_a_finished_trial_running(tmp_path):
    book = _book(tmp_path)
    first = book.start("t0", 0, {"lr": 0.1})
    book.finish("t0", "errored", error="boom")
    again = book.start("t0", 0, {"lr": 0.2})
    assert again is first and again.params == {"lr": 0.1}  # the params are the trial's first
    assert (again.status, again.ended_at) == ("running", None)


def test_finish_records_how_the_trial_ended(tmp_path):
    book = _book(tmp_path)
    book.start("t0", 0, {})
    book.finish("t0", "pruned", ended_at=123.0)
    assert (book.trials["t0"].status, book.trials["t0"].ended_at, book.trials["t0"].error) == ("pruned", 123.0, None)
    with pytest.raises(ValueError, match=r"status 'done' is not one of \('running', 'completed'"):
        book.finish("t0", "done")


# --- ResultsBook: files --------------------------------------------------------------------------------------------


def test_flush_writes_results_and_history_that_read_back(tmp_path):
    book = _book(tmp_path / "exp")
    book.start("t1", 1, {"lr": 0.01, "act": "relu"})
    book.start("t0", 0, {"lr": 0.1, "nested": {"a": 1}})
    _report(book, "t0", [0.5, 0.7])
    book.report("t1", {"eval_accuracy": 0.9, "evaluation": 1, "step": 10, "epoch": 0.5, "per_class": [1, 2]})
    book.finish("t0", "completed", ended_at=100.0)
    book.finish("t1", "errored", error="ValueError: x")

    result = read_results(tmp_path / "exp")
    assert (result.experiment_dir, result.metric, result.mode) == (str(tmp_path / "exp"), "eval_accuracy", "max")
    assert [t.trial_id for t in result.trials] == ["t0", "t1"]  # by trial number
    t0, t1 = result.trials
    assert t0.params == {"lr": 0.1, "nested": {"a": 1}} and t1.params == {"lr": 0.01, "act": "relu"}
    assert (t0.status, t0.best_metric, t0.best_step, t0.evaluations, t0.ended_at) == ("completed", 0.7, 20, 2, 100.0)
    assert (t1.status, t1.error) == ("errored", "ValueError: x")

    history = read_history(tmp_path / "exp")
    assert [(h["trial_id"], h["evaluation"], h["step"], h["metric"]) for h in history] == [
        ("t0", 1, 10, 0.5),
        ("t0", 2, 20, 0.7),
        ("t1", 1, 10, 0.9),
    ]
    assert history[2]["epoch"] == 0.5 and history[0]["epoch"] is None
    metrics = json.loads(history[2]["metrics"])
    assert metrics["eval_accuracy"] == 0.9 and "per_class" not in metrics  # scalars only


def test_flush_waits_for_its_interval_unless_forced(tmp_path):
    book = _book(tmp_path, interval=3600.0)
    book.start("t0", 0, {})
    book.flush(force=True)
    _report(book, "t0", [0.5])
    assert read_results(tmp_path).trials[0].evaluations == 0  # written under an hour ago: not yet
    book.flush(force=True)
    assert read_results(tmp_path).trials[0].evaluations == 1
    book.finish("t0", "completed")  # the end of a trial is always written at once
    assert read_results(tmp_path).trials[0].status == "completed"


def test_an_end_left_to_the_next_write_is_written_with_it(tmp_path):
    # the Ray driver: a write of every trial's row and every history row at each end cost a search O(trials^2)
    book = _book(tmp_path, interval=3600.0)
    book.start("t0", 0, {})
    book.flush(force=True)
    book.finish("t0", "completed", write_now=False)
    assert read_results(tmp_path).trials[0].status == "running"  # written under an hour ago: not yet
    book.flush(force=True)
    assert read_results(tmp_path).trials[0].status == "completed"


def test_writes_are_spaced_by_what_the_last_one_took(tmp_path):
    book = _book(tmp_path, interval=0.0)
    book.start("t0", 0, {})
    book.flush(force=True)
    book._write_s = (3600.0, 3600.0)  # writes that took an hour: the next comes 19 hours later at the earliest
    _report(book, "t0", [0.5])
    assert read_results(tmp_path).trials[0].evaluations == 0
    book.flush(force=True)
    assert read_results(tmp_path).trials[0].evaluations == 1


def test_history_converted_as_it_comes_reads_back_as_one_table_after_rows_are_replaced(tmp_path):
    book = _book(tmp_path, interval=0.0)
    book.start("t0", 0, {})
    book.start("t1", 1, {})
    _report(book, "t0", [0.1, 0.2, 0.3])  # a write after each report: one part each
    _report(book, "t1", [0.5])
    book.start("t0", 0, {})  # restarted from its checkpoint at evaluation 1: its rows from 2 on are dropped
    _report(book, "t0", [0.25], first=2)
    book.report("t1", {"eval_accuracy": 0.6, "evaluation": 2, "step": 20})
    book.flush(force=True)  # (writes that take long are spaced: see above)
    expected = [("t0", 1, 0.1), ("t1", 1, 0.5), ("t0", 2, 0.25), ("t1", 2, 0.6)]
    assert [(h["trial_id"], h["evaluation"], h["metric"]) for h in read_history(tmp_path)] == expected
    for evaluation in range(3, 3 + 70):  # more parts than are kept apart: joined, same rows
        book.report("t1", {"eval_accuracy": 0.6, "evaluation": evaluation, "step": 10 * evaluation})
        book.flush(force=True)
    history = read_history(tmp_path)
    assert len(history) == 4 + 70 and [h["evaluation"] for h in history[-3:]] == [70, 71, 72]
    assert pq.read_metadata(tmp_path / "history.parquet").num_rows == 74


def test_flush_with_nothing_new_writes_nothing(tmp_path):
    book = _book(tmp_path)
    book.start("t0", 0, {})
    book.flush(force=True)
    (tmp_path / "results.parquet").unlink()
    book.flush(force=True)
    assert not (tmp_path / "results.parquet").exists()


def test_a_new_book_takes_up_what_an_earlier_driver_wrote(tmp_path):
    first = _book(tmp_path)
    first.start("t0", 0, {"lr": 0.1})
    first.start("t1", 1, {"lr": 0.2})
    _report(first, "t0", [0.5, 0.6])
    first.finish("t0", "completed")
    _report(first, "t1", [0.4])
    first.flush(force=True)

    second = _book(tmp_path)
    second.load()
    assert {t: r.status for t, r in second.trials.items()} == {"t0": "completed", "t1": "running"}
    assert second.last_evaluation("t0") == 2 and second.last_evaluation("t1") == 1
    _report(second, "t1", [0.45], first=2)
    assert [(h["trial_id"], h["evaluation"]) for h in second.history] == [("t0", 1), ("t0", 2), ("t1", 1), ("t1", 2)]


def test_load_of_an_empty_dir_starts_empty(tmp_path):
    book = _book(tmp_path)
    book.load()
    assert book.trials == {} and book.history == []


def test_final_record_is_plain_json_and_leaves_the_book_as_it_is(tmp_path):
    book = _book(tmp_path)
    book.start("t0", 0, {"lr": 0.1})
    _report(book, "t0", [0.5, 0.4])
    final = json.loads(json.dumps(book.final_record("t0", "stopped_early", error=None)))
    assert final["record"]["status"] == "stopped_early" and final["record"]["best_metric"] == 0.5
    assert json.loads(final["record"]["params"]) == {"lr": 0.1}
    assert [row["evaluation"] for row in final["history"]] == [1, 2]
    assert book.trials["t0"].status == "running"  # the book changes when the trial is finished, not before

    other = _book(tmp_path / "other")
    other.restore(final)
    (record,) = read_results(tmp_path / "other").trials
    assert (record.trial_id, record.status, record.best_metric, record.params) == (
        "t0",
        "stopped_early",
        0.5,
        {"lr": 0.1},
    )


def test_a_book_on_remote_storage_reads_back_through_its_filesystem(tmp_path):
    (tmp_path / "bucket" / "runs" / "exp").mkdir(parents=True)
    remote = fs.SubTreeFileSystem(str(tmp_path / "bucket"), fs.LocalFileSystem())
    book = ResultsBook("runs/exp", metric="eval_loss", mode="min", filesystem=remote, min_interval_s=0.0)
    book.start("t0", 0, {"lr": 0.1})
    book.report("t0", {"eval_loss": 0.5, "evaluation": 1, "step": 5})
    book.finish("t0", "completed")
    result = read_results("runs/exp", filesystem=remote)
    assert (result.metric, result.mode, result.best.best_metric) == ("eval_loss", "min", 0.5)
    assert [h["metric"] for h in read_history("runs/exp", filesystem=remote)] == [0.5]
    assert sorted(p.name for p in (tmp_path / "bucket" / "runs" / "exp").iterdir()) == [
        "history.parquet",
        "results.parquet",
    ]


def _stored_checkpoints(experiment: Path) -> list[str | None]:
    """`best_checkpoint` as results.parquet holds it, by trial number."""
    return pq.read_table(experiment / "results.parquet").column("best_checkpoint").to_pylist()


def test_checkpoints_are_kept_relative_to_the_experiment_dir_so_it_can_move(tmp_path):
    exp = tmp_path / "exp"
    book = _book(exp)
    given = {
        "t0": str(exp / "trials" / "t0" / "checkpoint-10"),  # inside: kept relative
        "t1": str(tmp_path / "elsewhere" / "checkpoint-10"),  # outside: kept as it is
        "t2": "s3://bucket/runs/other/trials/t2/checkpoint-10",  # a URI: kept as it is
        "t3": None,  # no checkpoint yet
    }
    for number, (trial_id, checkpoint) in enumerate(given.items()):
        book.start(trial_id, number, {})
        book.report(trial_id, {"eval_accuracy": 0.5, "evaluation": 1, "step": 10}, checkpoint=checkpoint)
    assert {t: r.best_checkpoint for t, r in book.trials.items()} == given  # the book keeps what it was given
    book.flush(force=True)
    assert _stored_checkpoints(exp) == ["trials/t0/checkpoint-10", given["t1"], given["t2"], None]
    assert [t.checkpoint for t in read_results(exp).trials] == list(given.values())

    moved = Path(shutil.move(exp, tmp_path / "moved"))
    assert [t.checkpoint for t in read_results(moved).trials] == [
        str(moved / "trials" / "t0" / "checkpoint-10"),
        *list(given.values())[1:],
    ]
    again = _book(moved)  # a search resumed in its new place goes on from there
    again.load()
    assert again.trials["t0"].best_checkpoint == str(moved / "trials" / "t0" / "checkpoint-10")
    again.report("t0", {"eval_accuracy": 0.9, "evaluation": 2, "step": 20}, checkpoint=str(moved / "c" / "ckpt-20"))
    again.flush(force=True)
    assert _stored_checkpoints(moved)[0] == "c/ckpt-20"


def test_a_relative_experiment_dir_reads_back_full_checkpoint_paths(tmp_path, monkeypatch):
    exp = tmp_path / "runs" / "exp"
    book = _book(exp)
    book.start("t0", 0, {})
    book.report("t0", {"eval_accuracy": 0.5, "evaluation": 1, "step": 10}, checkpoint=str(exp / "t0" / "ckpt"))
    book.flush(force=True)
    monkeypatch.chdir(tmp_path)
    assert read_results("runs/exp").trials[0].checkpoint == str(exp / "t0" / "ckpt")


def test_old_results_with_absolute_checkpoints_read_as_they_are(tmp_path):
    exp = tmp_path / "exp"
    book = _book(exp)
    book.start("t0", 0, {})
    book.report("t0", {"eval_accuracy": 0.5, "evaluation": 1, "step": 10}, checkpoint=str(exp / "t0" / "ckpt"))
    book.flush(force=True)
    table = pq.read_table(exp / "results.parquet")  # as tunetrain wrote it before: the absolute path
    column = table.schema.get_field_index("best_checkpoint")
    pq.write_table(table.set_column(column, "best_checkpoint", [[str(exp / "t0" / "ckpt")]]), exp / "results.parquet")
    assert read_results(exp).trials[0].checkpoint == str(exp / "t0" / "ckpt")


def test_a_final_record_keeps_the_checkpoint_relative_and_restores_it_in_the_dir_it_is_restored_in(tmp_path):
    book = _book(tmp_path / "exp")
    book.start("t0", 0, {})
    book.report("t0", {"eval_accuracy": 0.5, "evaluation": 1, "step": 10}, checkpoint=str(tmp_path / "exp" / "c-10"))
    final = json.loads(json.dumps(book.final_record("t0", "completed")))
    assert final["record"]["best_checkpoint"] == "c-10"
    copy = _book(tmp_path / "copy")
    copy.restore(final)
    assert copy.trials["t0"].best_checkpoint == str(tmp_path / "copy" / "c-10")
    assert _stored_checkpoints(tmp_path / "copy") == ["c-10"]


def test_a_remote_book_keeps_the_checkpoints_the_trials_report_relative(tmp_path):
    (tmp_path / "bucket" / "runs" / "exp").mkdir(parents=True)
    remote = fs.SubTreeFileSystem(str(tmp_path / "bucket"), fs.LocalFileSystem())
    book = ResultsBook("runs/exp", metric="eval_loss", mode="min", filesystem=remote, min_interval_s=0.0)
    book.start("t0", 0, {})
    # what a Ray trial reports for a checkpoint in remote storage: the storage's scheme, then the path in it
    book.report("t0", {"eval_loss": 0.5, "evaluation": 1, "step": 5}, checkpoint="s3://runs/exp/trials/t0/ckpt-5")
    book.flush(force=True)
    assert _stored_checkpoints(tmp_path / "bucket" / "runs" / "exp") == ["trials/t0/ckpt-5"]
    # read back through the filesystem: a URI again, its scheme the filesystem's kind (`s3` for S3's)
    (record,) = read_results("runs/exp", filesystem=remote).trials
    assert record.checkpoint == f"{remote.type_name}://runs/exp/trials/t0/ckpt-5"


def test_read_results_of_a_dir_without_results(tmp_path):
    with pytest.raises(ConfigError, match=r"experiment '.*empty' has no results\.parquet: no search has run there"):
        read_results(tmp_path / "empty")
    assert read_results(tmp_path / "empty", missing_ok=True) is None
    assert read_history(tmp_path / "empty") == []


# --- SearchResult --------------------------------------------------------------------------------------------------


def _result(mode: str = "max") -> SearchResult:
    trials = [
        _record("t0", 0.5, lr=0.1, layers=2),
        _record("t1", 0.9, "errored", lr=0.2),  # errored trials never rank
        _record("t2", 0.7, "pruned", lr=0.3),
        _record("t3", float("nan"), "stopped_early", lr=0.4),
        _record("t4", None, "running", lr=0.5),
        _record("t5", 0.6, lr=0.123456789),
    ]
    return SearchResult("runs/exp", "eval_accuracy", mode, trials)


@pytest.mark.parametrize(("mode", "order"), [("max", ["t2", "t5", "t0"]), ("min", ["t0", "t5", "t2"])])
def test_ranked_holds_the_trials_with_a_finite_metric_best_first(mode, order):
    result = _result(mode)
    assert [t.trial_id for t in result.ranked()] == order
    assert result.best.trial_id == order[0]


def test_a_search_without_a_finite_metric_has_no_best():
    result = SearchResult("x", "eval_loss", "min", [_record("t0", None, "running"), _record("t1", 0.1, "errored")])
    assert result.ranked() == [] and result.best is None
    assert result.table() == "no trial has reported a finite metric"
    assert result.summary_line() == "1 done (1 errored), 1 running; no best yet"


def test_counts_has_every_status():
    counts = {"running": 1, "completed": 2, "stopped_early": 1, "pruned": 1, "timed_out": 0, "errored": 1}
    assert _result().counts() == counts


def test_table_shows_the_top_k_with_their_params():
    lines = _result().table(k=2).splitlines()
    assert lines[0].split() == ["trial", "eval_accuracy", "status", "evals", "lr"]
    assert [line.split() for line in lines[1:]] == [
        ["t2", "0.7", "pruned", "0", "0.3"],
        ["t5", "0.6", "completed", "0", "0.1235"],
    ]
    assert lines[1].index("pruned") == lines[0].index("status")  # columns line up


def test_table_marks_a_param_a_trial_does_not_have():
    lines = _result().table(k=3).splitlines()
    assert lines[0].split()[-2:] == ["layers", "lr"]
    assert lines[3].split()[-2:] == ["2", "0.1"] and lines[1].split()[-2:] == ["-", "0.3"]


def test_summary_line_counts_and_names_the_best():
    assert _result().summary_line(total=10) == (
        "5/10 done (2 completed, 1 stopped_early, 1 pruned, 1 errored), 1 running; best eval_accuracy=0.7 (t2)"
    )  # each status by the name the table and the report give it (before: "2 stopped early" for both kinds)
    assert _result().summary_line().startswith("5 done (")
    assert SearchResult("x", "eval_loss", "min", []).summary_line() == "0 done, 0 running; no best yet"


def test_read_trials_know_their_experiment_dir_and_others_cannot_export(tmp_path):
    assert all(t._experiment_dir == "runs/exp" for t in _result().trials)
    with pytest.raises(ConfigError, match=r"trial 't9' was not read from an experiment dir: nothing to export"):
        _record("t9", 0.5).export(tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- damaged files -------------------------------------------------------------------------------------------------


def _written(path: Path) -> ResultsBook:
    book = _book(path)
    book.start("t0", 0, {"lr": 0.1})
    _report(book, "t0", [0.5, 0.6])
    book.finish("t0", "completed")
    return book


@pytest.mark.parametrize("name", ["results.parquet", "history.parquet"])
@pytest.mark.parametrize("damage", ["garbage", "cut short", "another table"])
def test_a_damaged_results_file_is_one_line_naming_it(tmp_path, name, damage):
    import pyarrow as pa

    _written(tmp_path)
    file = tmp_path / name
    if damage == "garbage":
        file.write_bytes(b"\x00garbage" * 64)
    elif damage == "cut short":
        file.write_bytes(file.read_bytes()[:100])
    else:  # a parquet file, but not one tunetrain wrote
        pq.write_table(pa.table({"x": [1, 2]}), file)
    readers = [
        lambda: read_results(tmp_path),
        lambda: read_history(tmp_path),
        lambda: _book(tmp_path).load(),
    ]
    for read in readers:
        if name == "history.parquet" and read is readers[0]:
            assert [t.trial_id for t in read().trials] == ["t0"]  # results.parquet alone is read: it is fine
            continue
        if name == "results.parquet" and read is readers[1]:
            assert len(read()) == 2
            continue
        with pytest.raises(ConfigError, match=rf"'{re.escape(str(file))}' is damaged .*: restore it") as err:
            read()
        assert "\n" not in str(err.value)


def test_an_exploited_trial_takes_its_lineages_best_and_params_and_keeps_the_evaluations_it_trained(tmp_path):
    book = _book(tmp_path)
    book.start("t0", 0, {"lr": 0.1})
    _report(book, "t0", [0.5, 0.9, 0.4, 0.3])  # its own best (0.9) is in weights it gives up
    exploits = [{"trial_id": "t1", "step": 20, "evaluation": 4}]
    book.rebase("t0", params={"lr": 0.02}, exploits=exploits, best_metric=0.7, best_step=20, best_checkpoint="c-20")
    # it goes on from the donor's step 20 (evaluation 2): the evaluations it trained before stand in the history
    book.report("t0", {"eval_accuracy": 0.75, "evaluation": 3, "step": 30}, params={"lr": 0.02}, parent=("t1", 20))
    book.flush(force=True)
    record = read_results(str(tmp_path)).trials[0]
    assert (record.best_metric, record.best_step, record.params, record.parent) == (0.75, 30, {"lr": 0.02}, exploits)
    rows = read_history(str(tmp_path))
    assert [(r["evaluation"], r["metric"]) for r in rows] == [(1, 0.5), (2, 0.9), (3, 0.4), (4, 0.3), (3, 0.75)]
    assert (rows[-1]["parent"], rows[-1]["parent_step"], json.loads(rows[-1]["params"])) == ("t1", 20, {"lr": 0.02})
    assert rows[0]["parent"] is None and rows[0]["params"] is None  # reported without params


def test_a_trial_resumed_after_its_exploit_replaces_only_the_evaluations_since_the_exploit(tmp_path):
    book = _book(tmp_path)
    book.start("t0", 0, {"lr": 0.1})
    _report(book, "t0", [0.5, 0.6, 0.4, 0.3, 0.2])  # its own, to evaluation 5
    book.report("t0", {"eval_accuracy": 0.7, "evaluation": 3, "step": 30}, params={"lr": 0.02}, parent=("t1", 20))
    book.report("t0", {"eval_accuracy": 0.72, "evaluation": 4, "step": 40}, params={"lr": 0.02})
    book.flush(force=True)
    again = _book(tmp_path)  # the driver was killed; the trial resumes from its checkpoint of evaluation 3
    again.load()
    assert again.last_evaluation("t0") == 4  # the latest, not the highest (5, before the exploit)
    again.report("t0", {"eval_accuracy": 0.71, "evaluation": 4, "step": 40}, params={"lr": 0.02})
    again.flush(force=True)
    rows = [(r["evaluation"], r["metric"], r["parent"]) for r in read_history(str(tmp_path))]
    assert rows == [(1, 0.5, None), (2, 0.6, None), (3, 0.4, None), (4, 0.3, None), (5, 0.2, None),
                    (3, 0.7, "t1"), (4, 0.71, None)]  # fmt: skip
    again.report("t0", {"eval_accuracy": 0.69, "evaluation": 3, "step": 30}, params={"lr": 0.02})  # from step 20
    assert [(r["evaluation"], r["parent"]) for r in again.history][5:] == [(3, "t1")]  # it still says where from


def test_the_summary_says_how_many_running_trials_wait_paused(tmp_path):
    result = SearchResult(
        str(tmp_path), "eval_accuracy", "max", [_record("t0", 0.5, "running"), _record("t1", 0.6, "running")]
    )
    assert "0/4 done, 2 running (1 of them paused); best eval_accuracy=0.6 (t1)" in result.summary_line(4, paused=1)
    assert "2 running; best" in result.summary_line(4)


# --- several objectives ------------------------------------------------------------------------------------------

METRICS2 = ("eval_accuracy", "eval_num_parameters")


def _mo_book(path: Path) -> ResultsBook:
    return ResultsBook(str(path), metric=METRICS2, mode=("max", "min"), min_interval_s=0.0)


def _mo_trial(book: ResultsBook, trial_id: str, evaluations: list[tuple[float, float]], status: str) -> None:
    book.start(trial_id, len(book.trials), {"hidden_size": int(evaluations[0][1])})
    for number, (accuracy, size) in enumerate(evaluations, start=1):
        book.report(trial_id, {"eval_accuracy": accuracy, "eval_num_parameters": size, "evaluation": number,
                               "step": 10 * number})  # fmt: skip
    if status != "running":
        book.finish(trial_id, status)


def test_a_trial_s_values_are_those_of_its_best_evaluation_and_the_front_is_over_finished_trials(tmp_path):
    book = _mo_book(tmp_path)
    _mo_trial(book, "big", [(0.80, 5000), (0.90, 5000), (0.85, 5000)], "completed")
    _mo_trial(book, "small", [(0.60, 500), (0.70, 500)], "completed")
    _mo_trial(book, "worse", [(0.65, 800), (0.68, 800)], "completed")  # dominated by small
    _mo_trial(book, "tiny_pruned", [(0.50, 50)], "pruned")  # would be on the front: judged on a smaller budget
    _mo_trial(book, "early", [(0.95, 9000), (0.94, 9000)], "stopped_early")  # its own patience: finished
    _mo_trial(book, "live", [(0.99, 10)], "running")
    book.flush(force=True)
    result = read_results(str(tmp_path))
    assert result.metrics == METRICS2 and result.modes == ("max", "min") and result.multi_objective
    by_id = {t.trial_id: t for t in result.trials}
    assert by_id["big"].objectives == [0.90, 5000] and by_id["big"].best_step == 20
    assert {t.trial_id for t in result.trials if t.pareto} == {"big", "small", "early"}
    assert [t.trial_id for t in result.pareto][:2] in (["small", "early"], ["early", "small"])  # the extremes first
    # every flagged trial is non-dominated among the finished ones, every other finished one is dominated by a flagged
    finished = [t for t in result.trials if t.status in ("completed", "stopped_early")]
    for trial in finished:
        dominated = any(dominates(o.objectives, trial.objectives, result.modes) for o in finished)
        assert trial.pareto is not dominated
    columns = pq.read_table(tmp_path / "results.parquet").column_names
    assert {"eval_accuracy", "eval_num_parameters", "pareto"} <= set(columns)


def test_best_asks_for_a_rule_when_there_are_several_objectives(tmp_path):
    book = _mo_book(tmp_path)
    _mo_trial(book, "big", [(0.90, 5000)], "completed")
    _mo_trial(book, "small", [(0.70, 500)], "completed")
    book.flush(force=True)
    result = read_results(str(tmp_path))
    with pytest.raises(ConfigError, match=r"has 2 objectives \(eval_accuracy, eval_num_parameters\).*--trial ID"):
        _ = result.best
    assert result.best_by("accuracy").trial_id == "big"
    assert result.best_by("eval_num_parameters").trial_id == "small"
    with pytest.raises(ConfigError, match="`--by` is 'loss', but the search's objectives are"):
        result.best_by("loss")
    assert "pareto" in result.table() and "Pareto front: 2" in result.summary_line(2)


def test_a_search_of_one_metric_keeps_its_columns_and_best(tmp_path):
    book = _book(tmp_path)
    book.start("t", 0, {})
    _report(book, "t", [0.5, 0.7])
    book.flush(force=True)
    assert "pareto" not in pq.read_table(tmp_path / "results.parquet").column_names
    result = read_results(str(tmp_path))
    assert not result.multi_objective and result.best.trial_id == "t" and result.pareto == []
    assert result.best_by("whatever") is result.best


def test_a_trial_s_final_record_keeps_its_values_on_several_objectives(tmp_path):
    # what a trial's ended.json holds, put back by a driver that had missed its end
    book = _mo_book(tmp_path)
    _mo_trial(book, "big", [(0.80, 5000), (0.90, 5000)], "running")
    final = json.loads(json.dumps(book.final_record("big", "completed")))
    fresh = _mo_book(tmp_path)
    fresh.restore(final)
    assert fresh.trials["big"].objectives == [0.90, 5000] and fresh.trials["big"].status == "completed"
    assert read_results(str(tmp_path)).trials[0].pareto  # the only finished trial: the front


def test_export_takes_one_way_of_choosing_trials(tmp_path):
    from tunetrain.results import export_trials

    with pytest.raises(ConfigError, match="--top-k and --pareto each choose the trials to export: give one"):
        export_trials(tmp_path / "runs" / "x", tmp_path / "out", top_k=2, pareto=True)
    with pytest.raises(ConfigError, match="--trial and --by each choose"):
        export_trials(tmp_path / "runs" / "x", tmp_path / "out", trial_id="t", by="accuracy")


def test_a_trial_is_found_by_its_id_or_refused_naming_the_trials_there(tmp_path):
    book = _mo_book(tmp_path)
    _mo_trial(book, "big", [(0.90, 5000)], "completed")
    book.flush(force=True)
    result = read_results(str(tmp_path))
    assert result.trial("big").objectives == [0.90, 5000]
    with pytest.raises(ConfigError, match=rf"trial 'nope' is not in '{re.escape(str(tmp_path))}' \(its trials: big\)"):
        result.trial("nope")
