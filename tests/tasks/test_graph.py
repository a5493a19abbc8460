"""Graph node classification (dataset=cora|citeseer, model=gcn|sage) on the real Planetoid files."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

from cprec.cost import FULL_PRECISION_BITOPS
from cprec.engine import runs
from cprec.engine.build import build_run, plan_run
from cprec.engine.trainer import Trainer
from cprec.errors import CprecError, DataError
from tests.helpers import ROOT, read_summary, resumed_and_whole, run_cli

PLANETOID = ROOT.parent / "shared" / "data" / "planetoid"
NODES = {"cora": 2708, "citeseer": 3327}
FEATURES = {"cora": 1433, "citeseer": 3703}
CLASSES = {"cora": 7, "citeseer": 6}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A copy of the shared raw files (a download or PyG's cache must never write there)."""
    pytest.importorskip("torch_geometric", reason='needs PyTorch Geometric: pip install -e ".[graph]"')
    if not (PLANETOID / "Cora" / "raw").is_dir():
        pytest.skip(f"the Planetoid raw files are not in {PLANETOID}")
    dest = tmp_path_factory.mktemp("planetoid")
    for name in ("Cora", "CiteSeer"):
        shutil.copytree(PLANETOID / name / "raw", dest / name / "raw")
    return dest


def graph_cfg(compose, root: Path, *overrides: str):
    return compose(["experiment=cora_gcn", f"dataset.root={root}", "trainer.progress=false",
                    *overrides])


def test_gcn_fp32_reaches_the_published_accuracy_at_the_closed_form_cost(compose, root, tmp_path) -> None:
    """Kipf & Welling's recipe in fp32 lands near their 0.815 (>= 0.75); the ledger holds the
    dense transforms only: nodes x in x out MACs per layer, one "sample" (the graph) a step."""
    cfg = graph_cfg(compose, root, "schedule=fp32")
    parts = build_run(cfg)
    n, f, c, h = NODES["cora"], FEATURES["cora"], CLASSES["cora"], 16
    assert parts.ledger.macs == {"conv1.lin": n * f * h, "conv2.lin": n * h * c}
    assert plan_run(cfg) == parts.plan and parts.total_steps == 200
    summary = Trainer(parts, tmp_path).run()
    assert summary["status"] == "completed" and summary["final_acc"] >= 0.75
    assert summary["gbitops"] == 200 * (n * f * h + n * h * c) * FULL_PRECISION_BITOPS / 1e9
    last = runs.read_metrics(tmp_path)[-1]
    assert {"val_acc", "val_loss", "train_acc", "test_acc"} <= set(last) and last["step"] == 200


@pytest.mark.parametrize("model, schedule", [("gcn", "static"), ("gcn", "cpt_cosine"), ("sage", "static")])
def test_quantized_runs_train(compose, root, tmp_path, model: str, schedule: str) -> None:
    """8/8 and CPT 3..8/8 quantize the first layer's transform (the last stays fp32) and still
    learn; GraphSAGE's one Linear per layer holds its neighbour and root transforms (2 x out)."""
    cfg = graph_cfg(compose, root, f"model={model}", f"schedule={schedule}", "trainer.epochs=60",
                    "schedule.cycles=2")
    parts = build_run(cfg)
    n, f, c, h = NODES["cora"], FEATURES["cora"], CLASSES["cora"], 16
    width = 2 if model == "sage" else 1
    assert parts.ledger.macs == {"conv1.lin": n * f * h * width, "conv2.lin": n * h * c * width}
    summary = Trainer(parts, tmp_path).run()
    assert summary["status"] == "completed" and summary["final_acc"] >= 0.6, summary["final_acc"]
    if schedule == "static":  # conv1 at 8/8: 64 + 2 * 64 BitOPs per MAC, conv2 at 32/32
        m1, m2 = parts.ledger.macs.values()
        assert summary["relative_cost"] == pytest.approx(
            (m1 * 192 + m2 * FULL_PRECISION_BITOPS) / ((m1 + m2) * FULL_PRECISION_BITOPS))
    assert summary["bits_fw_min"] == (3 if schedule == "cpt_cosine" else 8)


@pytest.mark.parametrize("model", ["gcn", "sage"])
def test_bf16_autocast_keeps_the_aggregation_in_float32(compose, root, tmp_path, model: str) -> None:
    """amp=bf16 casts the dense transforms; the sparse aggregation runs in float32 outside it."""
    from cprec.engine.trainer import step_plugins

    cfg = graph_cfg(compose, root, f"model={model}", "amp=bf16", "schedule=fp32", "trainer.epochs=5",
                    "trainer.eval_every=5")
    parts = build_run(cfg)
    summary = Trainer(parts, tmp_path, step_plugins(parts)).run()
    assert summary["status"] == "completed" and summary["final_loss"] < 2.0


def test_citeseer_and_sage_build_from_known_shapes(compose, root) -> None:
    """CiteSeer (isolated nodes included) builds with either model; the plan needs no data."""
    for model in ("gcn", "sage"):
        cfg = compose(["dataset=citeseer", f"model={model}", f"dataset.root={root}"])
        parts = build_run(cfg)
        assert parts.task.info.channels == FEATURES["citeseer"] and parts.task.info.classes == 6
        assert plan_run(cfg) == parts.plan
        loss, out = parts.task.forward(parts.model, parts.task.next_batch())
        assert torch.isfinite(loss) and out.shape == (120, 6)  # 20 training nodes per class


def test_resume_from_a_middle_checkpoint_is_bit_exact(compose, root, tmp_path) -> None:
    """Dropout and stochastic rounding draw from checkpointed generators: stopping at step 10
    and resuming ends exactly where the uninterrupted run ends."""
    cfg = graph_cfg(compose, root, "schedule=cpt_cosine", "trainer.epochs=20", "schedule.cycles=2",
                    "trainer.eval_every=5")
    resumed, whole = resumed_and_whole(cfg, tmp_path, 10)
    assert resumed == whole


def test_missing_extra_is_one_line(compose, tmp_path, monkeypatch) -> None:
    """Without PyTorch Geometric importable, building a graph task names the extra to install
    (monkeypatch undoes the sys.modules block after the test)."""
    monkeypatch.setitem(sys.modules, "torch_geometric", None)
    needle = r'dataset=cora needs PyTorch Geometric: pip install -e "\.\[graph\]"'
    with pytest.raises(CprecError, match=needle):
        build_run(compose(["dataset=cora", f"dataset.root={tmp_path}"]))


def test_missing_extra_from_the_command_line(tmp_path) -> None:
    """`cprec train dataset=cora` with torch_geometric blocked: exit 2, one line, no files."""
    code = ("import sys; sys.modules['torch_geometric'] = None; from cprec.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    import subprocess

    out = subprocess.run([sys.executable, "-c", code, "train", "dataset=cora", "trainer.progress=false"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip() == ('cprec: error: dataset=cora needs PyTorch Geometric: pip install -e '
                                  '".[graph]" (or pip install torch_geometric)')
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_only_loading_graph_data_imports_pyg(tmp_path) -> None:
    """Non-graph runs and a graph run's plan (`cprec schedule`) never import PyTorch Geometric."""
    import subprocess

    code = ("import sys; from cprec.engine.build import plan_run; from cprec.models import build_model; "
            "from cprec.config import TrainConfig, DatasetConfig, ModelConfig; "
            "from cprec.tasks.base import DatasetInfo; "
            "plan_run(TrainConfig(dataset=DatasetConfig(name='cora'))); "
            "build_model(ModelConfig(name='gcn'), DatasetInfo('cora', 1433, 1, 7)); "
            "print('torch_geometric' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr[-2000:]


def test_missing_raw_files_name_what_is_missing(compose, tmp_path) -> None:
    """An empty dataset.root (no download): one DataError naming the files and dataset.root."""
    pytest.importorskip("torch_geometric", reason='needs PyTorch Geometric: pip install -e ".[graph]"')
    with pytest.raises(DataError, match=r"dataset.root=.* ind\.citeseer\.x, ind\.citeseer\.tx, .*"
                                        r"ind\.citeseer\.test\.index not found in .*CiteSeer/raw"):
        build_run(compose(["dataset=citeseer", f"dataset.root={tmp_path}", "dataset.download=false"]))


def test_models_and_datasets_of_other_kinds_are_refused(compose, tmp_path) -> None:
    """An image model on a graph dataset, a graph model on images: one line each, before any
    data loads (PyG not needed), in training and in `cprec schedule` previews."""
    from cprec.precision.preview import preview_schedule

    image_on_graph = compose(["dataset=cora", "model=mlp", f"dataset.root={tmp_path}"])
    for run in (build_run, lambda c: preview_schedule(c, tmp_path)):
        with pytest.raises(CprecError, match=r"model.name='mlp' is invalid: dataset=cora takes a "
                                             r"graph model: choose one of \['gcn', 'sage'\]"):
            run(image_on_graph)
    with pytest.raises(CprecError, match=r"model.name='gcn' is invalid: a graph model needs a graph "
                                         r"dataset: dataset=cora or citeseer, not digits"):
        build_run(compose(["model=gcn"]))


@pytest.mark.slow
def test_cli_train_schedule_and_errors(root, tmp_path) -> None:
    """`cprec train dataset=cora` end to end (model=gcn and optim=adam come with the dataset;
    fewer epochs here); `cprec schedule` previews the run's exact relative cost; a root without
    the files ends in one line, exit 2, nothing written."""
    out = run_cli(["train", "dataset=cora", f"dataset.root={root}", "trainer.progress=false",
                   "schedule=static", "trainer.epochs=30", "hydra.run.dir=run"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = read_summary(tmp_path / "run")
    assert (summary["model"], summary["dataset"], summary["steps"]) == ("gcn", "cora", 30)
    assert summary["status"] == "completed" and summary["final_acc"] >= 0.5
    assert (tmp_path / "run" / "checkpoint.pt").exists()
    preview = run_cli(["schedule", "dataset=cora", "schedule=static", "trainer.epochs=30",
                       "hydra.run.dir=preview"], tmp_path)
    assert preview.returncode == 0, preview.stderr[-3000:]
    assert f"relative cost {summary['relative_cost']:.4f} of fp32" in preview.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = run_cli(["train", "dataset=cora", f"dataset.root={empty}", "dataset.download=false"], empty)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "ind.cora.x, ind.cora.tx" in bad.stderr and "dataset.root=" in bad.stderr
    assert [p for p in empty.rglob("*") if p.is_file()] == []


def test_prt_on_a_graph_trains_full_batch_steps(compose, root, tmp_path) -> None:
    """`cprec prt dataset=cora`: each precision level trains prt.steps_per_bits full-graph
    steps; the bounds land in outputs/prt/gcn-cora.json."""
    from cprec.precision.range_test import run_prt

    cfg = compose(["dataset=cora", f"dataset.root={root}", f"output_root={tmp_path}"], "prt")
    result = run_prt(cfg, tmp_path / "run")
    assert 3 <= result["lower_bits"] <= result["upper_bits"] == 8  # seed 0: 3..8, 40 steps
    assert result["steps"] == 20 * (result["lower_bits"] - 1)
    assert result["batch_size"] == 1 and (tmp_path / "prt" / "gcn-cora.json").exists()
