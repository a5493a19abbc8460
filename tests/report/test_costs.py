"""`cprec report --cost`: the Pareto front and the plot on energy or a device's modeled time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cprec.cli.report import main_cli
from cprec.errors import CprecError
from cprec.report.costs import ENERGY, GBITOPS, extra_costs, parse_cost
from tests.report.test_report import make_run, run_cli


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """Two groups where GBitOPs and energy disagree: cpt_cosine is cheaper in BitOPs but
    spends more energy and less accurate, so only the cost chosen decides whether static is
    dominated. Both modeled h100 time; static is slower there."""
    root = tmp_path / "sweep"
    for n, (schedule, gbitops, energy, h100) in enumerate((("static", 250.0, 1.0, 3.0),
                                                            ("cpt_cosine", 150.0, 2.0, 2.0))):
        acc = 0.92 if schedule == "static" else 0.90
        make_run(root / f"{n}_schedule={schedule}", schedule, 0,
                 {"final_acc": acc, "gbitops": gbitops, "energy_j": energy,
                  "modeled_time_s.h100": h100})
    return root


def pareto(root: Path, *args: str) -> dict[str, bool]:
    assert main_cli([str(root), "--no-plots", *args]) == 0
    groups = json.loads((root / "report" / "report.json").read_text())["groups"]
    return {g["group"].removeprefix("schedule="): g["pareto"] for g in groups}


def test_the_front_follows_the_chosen_cost(runs, capsys) -> None:
    """GBitOPs: both are on the front (cheaper vs more accurate). Energy: static is cheaper
    and more accurate, so cpt_cosine is dominated. h100 time: cpt_cosine is faster again."""
    assert pareto(runs) == {"static": True, "cpt_cosine": True}
    assert pareto(runs, "--cost", "energy") == {"static": True, "cpt_cosine": False}
    assert pareto(runs, "--cost", "time:h100") == {"static": True, "cpt_cosine": True}
    table = (runs / "report" / "report.md").read_text()
    assert "vs modeled time on h100 (s)." in table
    assert "| energy (J) |" in table and "| modeled time on h100 (s) |" in table


def test_the_plot_is_named_after_the_cost(runs, capsys) -> None:
    assert main_cli([str(runs), "--cost", "energy"]) == 0
    assert (runs / "report" / "accuracy_vs_energy.png").stat().st_size > 0
    assert not (runs / "report" / "accuracy_vs_gbitops.png").exists()


def test_parse_cost() -> None:
    assert parse_cost("gbitops") is GBITOPS and parse_cost("energy") is ENERGY
    assert parse_cost("time:b200", {"b200"}).key == "modeled_time_s.b200"
    with pytest.raises(CprecError, match=r"modeled: time:h100\)"):
        parse_cost("time:b200", {"h100"})
    with pytest.raises(CprecError, match="none: run with cost.devices"):
        parse_cost("time:h100", set())
    for bad in ("bitops", "time:", ""):
        with pytest.raises(CprecError, match="choose gbitops, energy or time:<device>"):
            parse_cost(bad)
    summaries = [{"energy_j": 1.0, "modeled_time_s.h100": 1.0}, {"modeled_time_s.a100": 2.0}]
    assert [c.key for c in extra_costs(summaries)] == ["energy_j", "modeled_time_s.a100",
                                                      "modeled_time_s.h100"]


def test_a_device_no_run_modeled_is_one_line_exit_2(runs) -> None:
    result = run_cli(str(runs), "--cost", "time:b200", cwd=runs)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip() == ("cprec: error: --cost time:b200: no run modeled device "
                                     "'b200' (modeled: time:h100)")
    assert not (runs / "report").exists()
