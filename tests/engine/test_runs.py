"""Run-directory files: metrics truncation on resume, atomic results, completed runs."""

from __future__ import annotations

import json

from cprec.engine import runs


def test_metrics_truncate_keeps_the_records_before_the_checkpoint(tmp_path) -> None:
    """truncate(n) keeps the first n records; appends continue after them and are counted."""
    log = runs.MetricsLog(tmp_path / runs.METRICS)
    for step in range(5):
        log.append({"step": step})
    log.truncate(2)
    log.append({"step": 9})
    assert [r["step"] for r in log.read()] == [0, 1, 9] and log.lines() == 3
    assert runs.MetricsLog(tmp_path / runs.METRICS).lines() == 3  # a new reader counts the same


def test_truncate_without_a_file_is_a_no_op(tmp_path) -> None:
    """A checkpoint taken before the first evaluation resumes into an empty metrics log."""
    log = runs.MetricsLog(tmp_path / runs.METRICS)
    log.truncate(0)
    assert not (tmp_path / runs.METRICS).exists() and log.lines() == 0


def test_results_are_written_whole_and_leave_no_temp_files(tmp_path) -> None:
    """write_results leaves exactly cost.json and summary.json, both complete JSON."""
    runs.write_results(tmp_path, {"status": "completed"}, {"total_gbitops": 1.5})
    assert sorted(p.name for p in tmp_path.iterdir()) == [runs.COST, runs.SUMMARY]
    assert json.loads((tmp_path / runs.COST).read_text()) == {"total_gbitops": 1.5}


def test_only_a_completed_summary_counts_as_done(tmp_path) -> None:
    """An interrupted or failed run is continued; a completed one is returned as it is."""
    assert runs.completed_summary(tmp_path) is None
    runs.write_json(tmp_path / runs.SUMMARY, {"status": "interrupted"})
    assert runs.completed_summary(tmp_path) is None
    runs.write_json(tmp_path / runs.SUMMARY, {"status": "completed", "final_acc": 0.5})
    assert runs.completed_summary(tmp_path) == {"status": "completed", "final_acc": 0.5}
