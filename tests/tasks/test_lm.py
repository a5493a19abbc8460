"""Language modelling: corpora, the LM task (carried state, perplexity), LSTM and Transformer
ledgers, resume, and the commands around a run (schedule preview, PRT, errors)."""

from __future__ import annotations

import gzip
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from cprec.engine import runs
from cprec.engine.build import build_run, plan_run
from cprec.engine.step import GradClip
from cprec.engine.trainer import Trainer, step_plugins
from cprec.errors import ConfigError, DataError
from cprec.models.lstm import lstm_macs
from cprec.tasks.corpora import EOS, TINY_SHAKESPEARE, UNK, load_corpus, read_standard, word_corpus
from tests.helpers import ROOT, run_cli

SHARED = ROOT.parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not (SHARED / "wikitext-2" / "test.txt").is_file(),
                                  reason="../shared/data (WikiText-2, Tiny Shakespeare) is not here")
# a 2-layer LSTM of 16 units on 1600 characters: windows of 8, 4 streams -> 49 steps per epoch
LM = ["model=lstm", "dataset=tiny_shakespeare", "model.hidden=16", "model.dropout=0.1",
      "dataset.bptt=8", "dataset.train_subset=1600", "dataset.test_subset=200",
      "trainer.batch_size=4", "trainer.steps=12", "trainer.eval_every=6", "trainer.progress=false",
      "schedule.cycles=3", "schedule.bounds=config", "optim.grad_clip=0.5"]


def strip(d: dict) -> dict:
    return {k: v for k, v in d.items() if k not in ("train_time_s", "wall_time_s")}


# -- corpora --------------------------------------------------------------------------------
def test_word_corpus_vocabulary_eos_and_unk() -> None:
    """Training words in first-appearance order, <eos> per line, unknown words as <unk>."""
    c = word_corpus({"train": "the cat\n\nsat <unk> the\n", "valid": "the dog\n", "test": "cat\n"})
    assert c.vocab == ("the", "cat", EOS, "sat", UNK)
    assert c.train.tolist() == [0, 1, 2, 2, 3, 4, 0, 2]  # the blank line is one <eos>
    assert c.valid.tolist() == [0, 4, 2]  # "dog" was not in train
    assert c.test.tolist() == [1, 2]
    assert word_corpus({"train": "a", "valid": "", "test": "b"}).vocab == ("a", EOS, UNK)


def test_missing_standard_layout_files_are_named(tmp_path: Path) -> None:
    (tmp_path / "valid.txt").write_text("a\n")
    with pytest.raises(DataError, match=r"train\.txt, test\.txt not found in .*set dataset\.root"):
        read_standard("wikitext103", str(tmp_path), download=True)


def test_a_failed_download_is_named_and_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    def offline(url, timeout):
        raise OSError("offline")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(DataError, match=r"the download from raw.githubusercontent.com failed \(offline\)"):
        read_standard("ptb", str(tmp_path / "ptb"), download=True)
    assert not (tmp_path / "ptb").exists()


@needs_shared
def test_wikitext2_standard_layout(tmp_path: Path) -> None:
    """The shared WikiText-2 valid/test files (valid read as the training split)."""
    for split, src in (("train", "valid"), ("valid", "valid"), ("test", "test")):
        (tmp_path / f"{split}.txt").symlink_to(SHARED / "wikitext-2" / f"{src}.txt")
    c = load_corpus("wikitext2", str(tmp_path), False)
    assert len(c.train) == len(c.valid) == 217646  # 213,886 words + one <eos> per line
    assert c.vocab.count(UNK) == 1 and c.vocab[c.train[0]] == EOS  # first line is blank
    unk = c.vocab.index(UNK)
    assert (c.test == unk).sum() > (c.valid == unk).sum()  # test words unseen in "train" too


def test_tiny_shakespeare_is_shipped_and_split_90_5_5() -> None:
    c = load_corpus("tiny_shakespeare")
    assert len(c.vocab) == 65 and c.vocab[0] == "\n"
    n = len(c.train) + len(c.valid) + len(c.test)
    assert n == 1115394 and len(c.train) == int(0.9 * n) and len(c.valid) == int(0.05 * n)
    if (SHARED / "tiny_shakespeare" / "input.txt").is_file():
        shared = (SHARED / "tiny_shakespeare" / "input.txt").read_bytes()
        assert gzip.decompress(TINY_SHAKESPEARE.read_bytes()) == shared


# -- the task -------------------------------------------------------------------------------
def test_lstm_ledger_is_the_closed_form_of_its_gates(compose) -> None:
    cfg = compose(LM)
    parts = build_run(cfg)
    macs, h, t = parts.ledger.macs, 16, 8
    assert macs["rnns.0.ih"] == macs["rnns.1.ih"] == t * 4 * h * h  # every time step's 4 gates
    assert macs["rnns.0.hh"] == macs["rnns.1.hh"] == t * 4 * h * h  # hh is called T times
    assert macs["decoder"] == t * h * 65
    assert sum(macs.values()) == lstm_macs(65, h, 2, t)
    assert parts.model.decoder.weight is parts.model.encoder.weight  # tied
    assert plan_run(cfg) == parts.plan
    assert parts.task.steps_per_epoch == (1600 - 1) // 8 // 4


def test_state_is_carried_detached_and_reset_each_epoch(compose) -> None:
    parts = build_run(compose(LM))
    task, step = parts.task, Trainer(parts, Path("unused")).train_step
    assert task.state is None
    step(task.next_batch())
    first = task.state
    assert first.shape == (2, 2, 4, 16) and not first.requires_grad
    step(task.next_batch())
    assert not torch.equal(first, task.state)  # carried and moved on
    for _ in range(task.steps_per_epoch - 2):
        task.next_batch()
    assert task.state is not None
    task.next_batch()  # the next epoch's first window starts from zeros
    assert task.state is None and task.epoch == 1 and task.index == 1


def test_evaluation_leaves_the_training_state_alone(compose) -> None:
    parts = build_run(compose(LM))
    task = parts.task
    parts.precision.apply(0)
    Trainer(parts, Path("unused")).train_step(task.next_batch())
    state = task.state.clone()
    result = task.evaluate(parts.model, 1000)
    assert torch.equal(task.state, state) and parts.model.training
    assert result["test_ppl"] == pytest.approx(math.exp(result["test_loss"]))
    assert result["valid_ppl"] == pytest.approx(math.exp(result["valid_loss"]))


def test_perplexity_is_exp_of_the_mean_token_loss(compose) -> None:
    """A model that predicts uniformly has token loss log V and perplexity V; a model that
    is sure of one token everywhere has the loss of the tokens it misses."""
    task = build_run(compose(LM)).task

    class Uniform(torch.nn.Module):
        def forward(self, x, state=None):
            return torch.zeros(*x.shape, 65), None

    result = task.evaluate(Uniform(), 1000)
    assert result["test_loss"] == pytest.approx(math.log(65))
    assert result["test_ppl"] == pytest.approx(65)

    class Sure(torch.nn.Module):  # logit 10 on token 0: loss 0-ish on 0s, ~10 elsewhere
        def forward(self, x, state=None):
            out = torch.zeros(*x.shape, 65)
            out[..., 0] = 10.0
            return out, None

    tokens = task.eval_splits["test"]
    streams = 10
    n = (len(tokens) - 1) // streams
    y = tokens[1: streams * n + 1]
    logits = torch.zeros(len(y), 65)
    logits[:, 0] = 10.0
    mean = torch.nn.functional.cross_entropy(logits, y).item()
    result = task.evaluate(Sure(), 1000)
    assert result["test_loss"] == pytest.approx(mean)
    assert result["test_ppl"] == pytest.approx(math.exp(mean))


def test_resume_mid_epoch_is_bit_exact(compose, tmp_path: Path) -> None:
    """Checkpoint at step 6 (mid-epoch: a carried state, dropout, stochastic rounding),
    resume in a new Trainer: the same metrics and summary as the run without a break."""
    cfg = compose([*LM, "dataset.train_subset=300", "trainer.checkpoint_every=6"])  # 9 steps/epoch

    def trainer(out: Path, steps: int | None = None) -> Trainer:
        parts = build_run(cfg)
        if steps:
            parts.plan = replace(parts.plan, total_steps=steps)
        return Trainer(parts, out, step_plugins(parts))

    whole = trainer(tmp_path / "whole").run()
    trainer(tmp_path / "split", 6).run()  # a 6-step prefix of the 12-step run: the checkpoint at 6
    saved = torch.load(tmp_path / "split" / runs.CHECKPOINT, weights_only=False)
    assert saved["stream"]["state"] is not None and saved["stream"]["index"] == 6
    (tmp_path / "split" / runs.SUMMARY).unlink()
    resumed = trainer(tmp_path / "split").run()
    assert strip(resumed) == strip(whole)
    records = runs.read_metrics(tmp_path / "whole")
    assert [strip(r) for r in runs.read_metrics(tmp_path / "split")] == [strip(r) for r in records]
    assert whole["final_ppl"] == records[-1]["test_ppl"]
    assert whole["best_ppl"] == min(r["test_ppl"] for r in records)
    # the next-token accuracy keeps the summary's accuracy keys (DESIGN.md)
    assert whole["final_acc"] == records[-1]["test_acc"]
    assert whole["best_acc"] == max(r["test_acc"] for r in records)
    assert {"test_loss", "test_acc", "valid_ppl", "train_ppl", "train_acc"} <= set(records[-1])


def test_grad_clip_bounds_the_gradient_norm(compose) -> None:
    parts = build_run(compose(LM))
    plugins = step_plugins(parts)
    assert isinstance(plugins[-1], GradClip) and plugins[-1].max_norm == 0.5
    loss, _ = parts.task.forward(parts.model, parts.task.next_batch())
    (loss * 1000).backward()
    plugins[-1].before_update(parts.optimizer)
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in parts.model.parameters()]))
    assert norm == pytest.approx(0.5, rel=1e-4)


def test_transformer_lm_trains_and_counts_its_linear_layers(compose, tmp_path: Path) -> None:
    cfg = compose([*LM, "model=transformer_lm", "model.hidden=16", "model.heads=2",
                   "model.layers=2", "trainer.steps=6", "trainer.eval_every=3", "schedule.cycles=2"])
    parts = build_run(cfg)
    macs, d, t = parts.ledger.macs, 16, 8
    linear = {f"blocks.{i}.{n}" for i in range(2) for n in ("qkv", "proj", "fc1", "fc2")}
    assert set(macs) == linear | {"decoder"}
    assert sum(macs.values()) == t * (2 * 12 * d * d + d * 65)  # attention products not counted
    summary = Trainer(parts, tmp_path, step_plugins(parts)).run()
    assert summary["status"] == "completed" and math.isfinite(summary["final_ppl"])
    assert summary["macs_per_sample"] == sum(macs.values())


def test_language_models_and_image_datasets_do_not_mix(compose) -> None:
    with pytest.raises(ConfigError, match="model.name='resnet20'.*needs one of"):
        build_run(compose([*LM, "model=resnet20"]))
    with pytest.raises(ConfigError, match="model.name='lstm'.*image model"):
        build_run(compose(["model=lstm", "trainer.steps=2", "schedule=static"]))
    with pytest.raises(ConfigError, match="trainer.drop_last"):
        build_run(compose([*LM, "trainer.drop_last=false"]))


# -- commands around a run ------------------------------------------------------------------
def test_schedule_preview_and_prt_of_an_lstm(compose, tmp_path: Path) -> None:
    from cprec.precision.preview import preview_schedule
    from cprec.precision.range_test import run_prt

    cfg = compose(LM)
    preview = preview_schedule(cfg, tmp_path)
    assert preview["total_steps"] == 12 and 0 < preview["relative_cost"] < 1
    cfg = compose([*LM, f"output_root={tmp_path}", "prt.steps_per_bits=2", "prt.smoothing=1",
                   "prt.threshold=0.0001", "prt.batch_size=4"], config_name="prt")
    result = run_prt(cfg, tmp_path / "prt")
    assert result["lower_bits"] >= 2 and all("train_acc" in r for r in result["curve"])


@pytest.mark.slow
def test_cli_missing_corpus_files_is_one_line_exit_2(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = run_cli(["train", "model=lstm", "dataset=ptb", f"dataset.root={tmp_path}",
                    "dataset.download=false", "trainer.progress=false", f"hydra.run.dir={run_dir}"],
                   tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "train.txt, valid.txt, test.txt not found in" in lines[0]
    assert not (run_dir / "summary.json").exists() and not (run_dir / runs.CHECKPOINT).exists()


@pytest.mark.slow
def test_cli_trains_an_lstm_and_reports_perplexity(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = run_cli(["train", "-m", *LM, "schedule=fp32,static", f"hydra.sweep.dir={sweep}",
                    "hydra.sweep.subdir=${hydra.job.num}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = run_cli(["report", str(sweep)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "final ppl" in proc.stdout and "best ppl" in proc.stdout
    report = json.loads((sweep / "report" / "report.json").read_text())
    assert all(g["final_ppl_mean"] > 1 for g in report["groups"])
    assert (sweep / "report" / "perplexity_vs_gbitops.png").is_file()


def test_report_pareto_front_of_perplexity_is_lower_is_better(tmp_path: Path) -> None:
    from cprec.report.tables import Group, Run, mark_pareto, markdown

    def group(label: str, ppl: float, gbitops: float) -> Group:
        summary = {"status": "completed", "final_ppl": ppl, "best_ppl": ppl, "gbitops": gbitops}
        return Group(label, [Run(tmp_path / label, summary, {"schedule": label})])

    groups = [group("fp32", 5.0, 100.0), group("static", 5.5, 10.0), group("cpt", 5.4, 8.0),
              group("worse", 6.0, 9.0)]
    mark_pareto(groups)
    assert [g.pareto for g in groups] == [True, False, True, False]
    table = markdown([g.stats() for g in groups], [r for g in groups for r in g.runs])
    assert "| final ppl | best ppl |" in table and "| 5.40 ± 0.00 | 5.40 ± 0.00 |" in table


def test_ptb_preset_is_the_classic_recipe(compose) -> None:
    cfg = compose(["experiment=ptb_lstm"])
    m, o, s, t = cfg.model, cfg.optim, cfg.schedule, cfg.trainer
    assert (m.name, m.hidden, m.layers, m.dropout, m.tied) == ("lstm", 650, 2, 0.5, True)
    assert (cfg.dataset.name, cfg.dataset.bptt, t.batch_size, t.epochs) == ("ptb", 35, 20, 40)
    assert (o.name, o.lr, o.momentum, o.weight_decay, o.grad_clip, o.gamma) == ("sgd", 20.0, 0, 0, 0.25, 0.25)
    assert (s.name, s.min_bits, s.max_bits, s.bw_bits, s.bounds) == ("cpt_cosine", 5, 8, 8, "config")
    assert compose(["experiment=ptb_lstm", "schedule=static"]).schedule.bits == 8
    assert compose(["experiment=shakespeare_lstm"]).model.hidden == 128


def test_ptb_paper_figures_stand_beside_the_measured_perplexity(compose) -> None:
    from dataclasses import asdict

    from cprec.report.reproduction import compare_with_papers, paper_figures

    config = asdict(compose(["experiment=ptb_lstm"]))
    fig = paper_figures(config, {"bits_fw_min": 5, "bits_fw_max": 8, "bits_bw": 8})
    assert (fig.vs, fig.ppl_gain, fig.cost_saving, fig.acc_gain) == ("8/8", -0.56, 23.2, None)
    rows = [{"best_ppl_mean": 96.0, "gbitops_mean": 77.0}, {"best_ppl_mean": 97.0, "gbitops_mean": 100.0}]
    compare_with_papers(rows, [{"schedule": "cpt_cosine"}, {"schedule": "static"}], ["5-8/8", "8/8"],
                        [fig, None])
    assert rows[0]["paper"] == "-0.56 ppl, -23.20% cost vs 8/8"
    assert rows[0]["measured"] == "-1.00 ppl, -23.00% cost vs 8/8"
