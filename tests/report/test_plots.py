"""Issue 28 items 12, 17-19: pictures a reader can read, asserted on the axis formatters and
the artists (the figure functions return their Figure; ``_save`` applies the tick rules)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, ScalarFormatter

from cprec.report import plots


def _labels(axis) -> list[str]:
    axis.figure.canvas.draw()
    return [t.get_text() for t in axis.get_ticklabels() if t.get_text()]


def test_no_offset_or_scientific_tick_labels(tmp_path: Path) -> None:
    """Item 17: a perplexity axis over 28.702..28.708 reads as those numbers, not 0.002.. + 2.87e1;
    a narrow log axis gets plain labels too, a wide one 1-2-5 plain numbers."""
    fig = Figure()
    linear, narrow, wide = fig.subplots(1, 3)
    linear.plot([1, 2, 3], [28.702, 28.705, 28.708])
    narrow.plot([1, 2], [28.7, 28.76])
    narrow.set_yscale("log")
    wide.plot([1, 2], [3.0, 4000.0])
    wide.set_yscale("log")
    plots._save(fig, tmp_path / "p.png")
    formatter = linear.yaxis.get_major_formatter()
    assert isinstance(formatter, ScalarFormatter) and not formatter.get_useOffset()
    assert formatter.get_offset() == ""
    assert all("e" not in s and "+" not in s for s in _labels(linear.yaxis))
    assert any(s.startswith("28.70") for s in _labels(linear.yaxis))
    assert _labels(narrow.yaxis) and all(28.6 < float(s) < 28.8 for s in _labels(narrow.yaxis))
    assert {"10", "100", "1000"} <= set(_labels(wide.yaxis))


def _static_run() -> tuple[list[dict], dict]:
    spec = {"kind": "static", "total_steps": 24, "bits": 8, "bw_bits": 8}
    records = [{"step": s, "bits_fw": 8, "bits_bw": 8, "test_acc": 0.5, "train_acc": 0.5}
               for s in (12, 24)]
    return records, {"seed": 0, "status": "completed", "schedule_spec": spec}


def test_static_run_plot_has_integer_bits_and_both_lines_visible(tmp_path: Path) -> None:
    """Item 18: forward and backward at the same 8 bits: the forward line is drawn wider
    (beneath), the dashed backward line over it; the bits axis has integer ticks around 8."""
    records, summary = _static_run()
    fig = plots.run_figure(records, summary, "static")
    plots._save(fig, tmp_path / "run.png")
    top = fig.axes[0]
    forward, backward = (next(ln for ln in top.get_lines() if ln.get_label() == name)
                         for name in ("forward bits", "backward bits"))
    assert forward.get_linewidth() > 2 * backward.get_linewidth() and backward.get_linestyle() == "--"
    assert isinstance(top.yaxis.get_major_locator(), MaxNLocator)
    ticks = [float(s) for s in _labels(top.yaxis)]
    assert 8.0 in ticks and all(t == int(t) for t in ticks)
    assert top.get_ylim()[0] <= 7 and top.get_ylim()[1] >= 9


def test_a_ladder_run_plot_names_its_rungs(tmp_path: Path) -> None:
    """A run over a ladder of formats: the bits axis shows the rungs by name and width."""
    from cprec.config import ScheduleConfig
    from cprec.precision.schedules import build_schedule

    sched = build_schedule(ScheduleConfig(name="c", kind="cyclic", cycles=2,
                                          ladder=["mxfp4", "mxfp6_e2m3", "mxfp8"]), 24)
    records = [{"step": s, "bits_fw": 8, "bits_bw": 8, "test_acc": 0.5, "train_acc": 0.5}
               for s in (12, 24)]
    summary = {"seed": 0, "status": "completed", "schedule_spec": sched.spec()}
    fig = plots.run_figure(records, summary, "ladder")
    plots._save(fig, tmp_path / "run.png")
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["mxfp4 (4)", "mxfp6_e2m3 (6)",
                                                                     "mxfp8 (8)"]


CURVE = [{"bits": 2, "train_acc": 0.1}, {"bits": 3, "train_acc": 0.6}]


def test_prt_plot_marks_configured_and_measured_bounds_and_the_levels_tried() -> None:
    """Item 19: the configured upper bound is drawn (and labelled) unlike the measured lower
    one; the levels tried are points, the levels not tried a shaded span."""
    fig = plots.prt_figure(CURVE, 3, 8, "mlp on digits", "configured", (2, 16))
    ax = fig.axes[0]
    labels = [h.get_label() for h in ax.get_legend().legend_handles]
    assert "lower = 3 (measured)" in labels and "upper = 8 (configured)" in labels
    assert "levels tried (2)" in labels and "not tried (4..16): bounds found" in labels
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert lines["lower = 3 (measured)"].get_linestyle() != lines["upper = 8 (configured)"].get_linestyle()
    assert lines["levels tried (2)"].get_marker() == "o"
    measured = plots.prt_figure(CURVE, 3, 3, "t", "measured", (2, 16)).axes[0]
    assert "upper = 3 (measured)" in [ln.get_label() for ln in measured.get_lines()]


def test_a_run_plot_without_a_seed_is_named_after_its_run_dir() -> None:
    """Item 12: a damaged summary (no seed) names its plot after the run directory."""
    used: set[str] = set()
    assert plots.run_plot_name("static", None, used, Path("/s/3_schedule=static")) == \
        "static-3_schedule=static.png"
    assert plots.run_plot_name("static", 1, used, Path("/s/x")) == "static-seed1.png"
