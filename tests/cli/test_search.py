"""experiment=search_cpt_digits: a multi-objective Optuna study (Hydra's Optuna sweeper) whose
trials and Pareto front `cprec report` shows."""

from __future__ import annotations

import json

import pytest

from tests.helpers import run_cli


def test_the_search_presets_compose_their_search_space(compose) -> None:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from cprec.paths import config_dir

    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    cfg = compose(["experiment=search_cpt_digits"])
    assert (cfg.model.name, cfg.schedule.name, cfg.schedule.bounds) == ("mlp", "cpt_cosine", "config")
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        raw = hydra_compose("train", ["experiment=search_ldp_digits"], return_hydra_config=True)
    sweeper = raw.hydra.sweeper
    assert list(sweeper.direction) == ["maximize", "minimize"] and raw.schedule.name == "cpt_ldp"
    assert set(sweeper.params) == {"schedule.min_bits", "schedule.max_bits", "schedule.cycles",
                                   "schedule.target_cost"}


@pytest.mark.slow
def test_a_four_trial_study_completes_and_the_report_lists_its_front(tmp_path) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    study = tmp_path / "study"
    out = run_cli(["train", "-m", "experiment=search_cpt_digits", "hydra.sweeper.n_trials=4",
                   "trainer.steps=48", "trainer.eval_every=24",
                   "schedule.cycles=choice(2,4)",  # the command line narrows the search space
                   f"hydra.sweep.dir={study}"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (study / "optimization_results.yaml").is_file()
    report = run_cli(["report", str(study), "--no-plots"], tmp_path)
    assert report.returncode == 0, report.stderr[-2000:]
    assert f"## Study {study.resolve()}" in report.stdout and "Pareto front (" in report.stdout
    data = json.loads((study / "report" / "report.json").read_text())
    (found,) = data["studies"]
    assert [t["trial"] for t in found["trials"]] == [0, 1, 2, 3]
    assert found["params"] == ["schedule.min_bits", "schedule.max_bits", "schedule.cycles"]
    assert all(t["status"] == "completed" and t["gbitops"] > 0 for t in found["trials"])
    front = [t for t in found["trials"] if t["pareto"]]
    assert front and found["front"] == [t["trial"] for t in front]
    for t in found["trials"]:  # nothing off the front beats a front trial in both objectives
        assert t["pareto"] or any(f["value"] >= t["value"] and f["gbitops"] <= t["gbitops"] for f in front)
