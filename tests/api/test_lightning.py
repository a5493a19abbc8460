"""cprec.lightning.PrecisionCallback in a real lightning.Trainer on the digits (CPU)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import cprec
from cprec.cost import step_bitops
from cprec.errors import CprecError
from cprec.quant import layer_bits, quant_layers

pl = pytest.importorskip("lightning.pytorch")
from cprec.lightning import PrecisionCallback  # noqa: E402 (after the skip)


class DigitsModule(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                                 nn.Linear(64, 10))
        self.seen_bits: list[tuple[int, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        x, y = batch
        self.seen_bits.append(next(iter(layer_bits(self).values())))  # the first layer's, this step
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


class Records(pl.loggers.Logger):
    """A logger that keeps what it is given (Lightning's own CSV logger writes files)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict] = []

    name, version = "records", 0

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        self.rows.append(dict(metrics))

    def log_hyperparams(self, params, *args, **kwargs) -> None:  # noqa: ANN001 (Lightning's)
        pass


def digits_loader(batch: int) -> torch.utils.data.DataLoader:
    from sklearn.datasets import load_digits

    d = load_digits()
    data = torch.utils.data.TensorDataset(torch.tensor(d.images / 16.0, dtype=torch.float32),
                                          torch.tensor(d.target))
    return torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True, drop_last=True,
                                       generator=torch.Generator().manual_seed(0))


def fit(module: pl.LightningModule, callback: PrecisionCallback, steps: int) -> Records:
    records = Records()
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=records, log_every_n_steps=1,
                         callbacks=[callback], enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(module, digits_loader(32))
    return records


@pytest.mark.slow
def test_the_callback_quantizes_sets_the_schedules_bits_charges_and_logs() -> None:
    steps = 12
    sched = cprec.schedule("cpt_cosine", steps, cycles=2)
    module, callback = DigitsModule(), PrecisionCallback(sched)
    records = fit(module, callback, steps)
    assert len(quant_layers(module)) == 2  # first and middle Linear; the classifier stays fp32
    expected = [sched.bits(s) for s in range(steps)]
    assert module.seen_bits == expected and len(set(expected)) > 2  # the bits moved, step by step
    logged = [r for r in records.rows if "bits_fw" in r]
    assert [(int(r["bits_fw"]), int(r["bits_bw"])) for r in logged] == expected
    macs = callback.ledger.ledger.macs
    bits = [{n: ((fw, bw) if n != "net.5" else (32, 32)) for n in macs} for fw, bw in expected]
    total = sum(step_bitops(macs, b, 32) for b in bits)
    assert callback.ledger.bitops == total and logged[-1]["gbitops"] == pytest.approx(total / 1e9)


@pytest.mark.slow
def test_a_schedule_shorter_than_the_training_is_refused_in_one_line() -> None:
    with pytest.raises(CprecError, match=r"the trainer runs 12 optimizer steps but the schedule covers 6"):
        fit(DigitsModule(), PrecisionCallback(cprec.schedule("static", 6)), 12)


def test_the_callback_takes_a_cprec_schedule() -> None:
    with pytest.raises(CprecError, match="takes a cprec.schedule"):
        PrecisionCallback("cpt_cosine")
