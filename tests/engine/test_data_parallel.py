"""Issue 24: every kind of run that outgrows one device trains data parallel. For each newly
supported kind (ImageFolder, a language model, learned precision, dynamic loss scaling),
2 gloo processes against 1: the ledger counts the global batch once, one run dir, one
summary; the ranks agree on what must be one (p, the loss scale, skipped steps); and a
group stopped after a mid-window checkpoint resumes to where the uninterrupted group ends."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from cprec.engine.data_parallel import DataParallelPlugin
from cprec.tasks.base import shard_bounds
from cprec.tasks.imagefolder import EpochBatches, generate_folder
from tests.helpers import read_summary, results, run_cli

ONE_THREAD = {"OMP_NUM_THREADS": "1"}
LM = ["model=lstm", "dataset=tiny_shakespeare", "model.hidden=32", "model.dropout=0", "dataset.bptt=16",
      "trainer.batch_size=6", "trainer.steps=12", "trainer.eval_every=6", "trainer.checkpoint_every=4",
      "dataset.test_subset=1500", "trainer.progress=false"]
LDP = ["model=mlp", "schedule=ldp", "schedule.bounds=config", "trainer.steps=24", "trainer.eval_every=12",
       "trainer.checkpoint_every=8", "trainer.progress=false"]
DYNAMIC = ["model=mlp", "schedule=static", "quant=fp8_e4m3", "loss_scale=dynamic",
           "loss_scale.init_scale=1073741824", "loss_scale.growth_interval=2", "trainer.steps=24",
           "trainer.eval_every=12", "trainer.checkpoint_every=8", "trainer.progress=false"]


def imagefolder(root: Path) -> list[str]:
    return ["dataset=imagefolder", f"dataset.root={root}", "model=torchvision", "dataset.image_size=32",
            "dataset.resize=36", "dataset.workers=1", "trainer.batch_size=6", "trainer.steps=8",
            "trainer.eval_every=4", "trainer.checkpoint_every=3", "trainer.progress=false",
            "schedule.cycles=2", "schedule.bounds=config"]


def train(args: list[str], tmp_path: Path, name: str, devices: int) -> Path:
    out = run_cli(["train", *args, f"trainer.devices={devices}", f"hydra.run.dir={name}"], tmp_path,
                  env=ONE_THREAD)
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp_path / name


def one_and_two(args: list[str], tmp_path: Path) -> tuple[Path, Path]:
    """The run in 1 process and in 2; the 2-process run dir holds one run's files."""
    one, two = train(args, tmp_path, "one", 1), train(args, tmp_path, "two", 2)
    assert read_summary(two)["world_size"] == 2 and read_summary(two)["status"] == "completed"
    assert not (two / "outputs").exists() and len(list(tmp_path.glob("*/summary.json"))) == 2
    assert len(results(one)[1]) == len(results(two)[1])
    return one, two


def same_ledger(one: Path, two: Path) -> None:
    assert json.loads((one / "cost.json").read_text()) == json.loads((two / "cost.json").read_text())
    assert read_summary(one)["gbitops"] == read_summary(two)["gbitops"]


def ranks(run_dir: Path) -> list[dict]:
    return torch.load(run_dir / "checkpoint.pt", weights_only=False)["ranks"]


def resumes_to_the_end(run_dir: Path, tmp_path: Path) -> None:
    """A copy of the finished group's dir, as if killed after its previous checkpoint (mid
    window), resumed by the same command: it ends where the uninterrupted group ended."""
    cut = tmp_path / "cut"
    shutil.copytree(run_dir, cut)
    (cut / "summary.json").unlink()
    (cut / "checkpoint.prev.pt").replace(cut / "checkpoint.pt")
    out = run_cli(["train", f"resume={cut}"], tmp_path, env=ONE_THREAD)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resumed from" in (cut / "train.log").read_text()
    assert results(cut) == results(run_dir)


@pytest.mark.slow
def test_imagefolder_two_ranks_stream_their_slices(tmp_path: Path) -> None:
    """ImageFolder over 2 ranks (1 loader worker each): the ledger of the global batch once,
    the whole val/ scored (accuracy in steps of 1/val images), exact resume."""
    root = generate_folder(tmp_path / "folder", 3, 8, 3)
    one, two = one_and_two(imagefolder(root), tmp_path)
    same_ledger(one, two)
    for record in results(two)[1]:
        assert round(record["test_acc"] * 9, 6).is_integer()
    resumes_to_the_end(two, tmp_path)


@pytest.mark.slow
def test_language_model_two_ranks_split_the_streams(tmp_path: Path) -> None:
    """The LSTM in fp32 over 2 ranks (3 streams each, each rank its own hidden state): the same
    ledger, and every metric equals 1 process's up to float summation order; exact resume
    from a checkpoint between evaluations (the hidden states restored per rank)."""
    one, two = one_and_two([*LM, "schedule=fp32"], tmp_path)
    same_ledger(one, two)
    for a, b in zip(results(one)[1], results(two)[1]):
        assert a.keys() == b.keys()
        for key in ("train_loss", "test_loss", "valid_loss", "test_ppl", "valid_ppl"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), key
        assert a["test_acc"] == b["test_acc"] and a["valid_acc"] == b["valid_acc"]
    states = [r["stream"]["state"] for r in ranks(two)]
    assert all(s.shape[-2] == 3 for s in states) and not torch.equal(states[0], states[1])
    resumes_to_the_end(two, tmp_path)


@pytest.mark.slow
def test_learned_precision_holds_one_p_on_every_rank(tmp_path: Path) -> None:
    """LDP over 2 ranks: p (and its optimizer) equal on both ranks after training, the bits
    learned; the cost near 1 process's (the ranks' rounding noise differs); exact resume."""
    one, two = one_and_two(LDP, tmp_path)
    p = [r["precision"]["p"] for r in ranks(two)]
    assert torch.equal(p[0], p[1]) and not torch.equal(p[0], torch.full_like(p[0], p[0][0].item()))
    assert read_summary(two)["gbitops"] == pytest.approx(read_summary(one)["gbitops"], rel=0.02)
    resumes_to_the_end(two, tmp_path)


@pytest.mark.slow
def test_dynamic_loss_scaling_skips_the_same_steps_on_every_rank(tmp_path: Path) -> None:
    """Dynamic loss scaling with E4M3 errors over 2 ranks: one scale and the same skipped steps
    on both ranks, and as many as 1 process skips (each rank's errors have one process's
    magnitude); the same ledger; exact resume."""
    one, two = one_and_two(DYNAMIC, tmp_path)
    same_ledger(one, two)
    rules = [r["plugins"]["loss_scale"]["rule"] for r in ranks(two)]
    assert rules[0] == rules[1] and rules[0]["skipped"] > 0
    assert read_summary(two)["skipped_steps"] == read_summary(one)["skipped_steps"]
    resumes_to_the_end(two, tmp_path)


def test_a_rank_streams_its_slice_of_every_global_batch() -> None:
    """ImageFolder's batch sampler: the ranks' slices tile each global batch in order."""
    whole = EpochBatches(10, 4, False, 0, 0, 0)
    parts = []
    for rank in range(3):
        sampler = EpochBatches(10, 4, False, 0, 0, 0)
        sampler.rank, sampler.world = rank, 3
        parts.append(sampler)
    for batch in zip(iter(whole), *map(iter, parts)):
        if batch[0][0][0] == 2:
            break
        assert batch[0] == [key for part in batch[1:] for key in part]


def test_a_rank_weights_its_loss_by_its_share_of_the_global_batch() -> None:
    """4 + 3 + 3 of 10: each rank's loss times local/global; DDP sums the gradients, so the
    sum is the global mean."""
    class Share:
        world = 3

        def __init__(self, rank: int) -> None:
            self.rank = rank

        def batch_share(self) -> tuple[int, int]:
            lo, hi = shard_bounds(10, self.rank, 3)
            return hi - lo, 10

    losses = [DataParallelPlugin(Share(r), False).loss(torch.tensor(1.0), None) for r in range(3)]
    assert [round(float(v), 6) for v in losses] == [0.4, 0.3, 0.3]
