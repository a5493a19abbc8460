"""Every layer type cprec quantizes takes the scaled path: the LSTM's gates, the
Transformer's projections, GCN/SAGE transforms (Linear) and convolutions (Conv2d)."""

from __future__ import annotations

import pytest
import torch

from cprec.config import ModelConfig
from cprec.models import build_model
from cprec.models.gnn import Graph
from cprec.numerics.scaled_step import ScaledFormats
from cprec.quant import quant_layers, quantize_model, set_precision
from cprec.quant.quantizers import ScaledQuantizer
from cprec.quant.recipe import LayerRecipe
from cprec.quant.telemetry import COUNT
from cprec.tasks.base import DatasetInfo


def scaled(model: torch.nn.Module) -> ScaledFormats:
    quantize_model(model, ScaledQuantizer(LayerRecipe.uniform("mxfp4"), telemetry=True))
    set_precision(model, 4, 4)
    return ScaledFormats(model)


def graph_inputs() -> tuple[torch.Tensor, Graph]:
    edges = torch.tensor([[0, 1, 1, 2, 2, 3], [1, 0, 2, 1, 3, 2]])
    return torch.randn(4, 40), Graph(edges, 4)


CASES = {
    "lstm": (ModelConfig(name="lstm", hidden=32), DatasetInfo("tiny_shakespeare", 1, 8, 20),
             lambda: (torch.randint(0, 20, (3, 8)),)),
    "transformer_lm": (ModelConfig(name="transformer_lm", hidden=32, heads=2),
                       DatasetInfo("tiny_shakespeare", 1, 8, 20), lambda: (torch.randint(0, 20, (3, 8)),)),
    "gcn": (ModelConfig(name="gcn", hidden=32), DatasetInfo("cora", 40, 1, 3), graph_inputs),
    "sage": (ModelConfig(name="sage", hidden=32), DatasetInfo("cora", 40, 1, 3), graph_inputs),
    "resnet20": (ModelConfig(name="resnet20"), DatasetInfo("cifar10", 3, 8, 10),
                 lambda: (torch.randn(2, 3, 8, 8),)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_every_quantized_layer_runs_its_three_gemms_scaled(name: str) -> None:
    torch.manual_seed(0)
    cfg, info, inputs = CASES[name]
    model = build_model(cfg, info)
    plugin = scaled(model)
    out = model(*inputs())
    logits = out[0] if isinstance(out, tuple) else out
    logits.float().pow(2).mean().backward()
    plugin.after_update(True)
    figures = plugin.metrics()["quant_telemetry"]
    assert set(figures) == set(quant_layers(model)) and figures
    for layer, operands in figures.items():
        assert {"forward.w", "forward.x", "weight_grad.dy", "weight_grad.x"} <= set(operands), layer
        assert all(f["sqnr_db"] is None or 5 < f["sqnr_db"] < 40 for f in operands.values())
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_lstm_gates_quantize_the_recurrent_input_each_step() -> None:
    """hh sees h at every time step: its forward.x counts T quantizations of (B, H)."""
    cfg, info, inputs = CASES["lstm"]
    torch.manual_seed(0)
    model = build_model(cfg, info)
    scaled(model)
    hh = model.rnns[0].hh
    x = inputs()[0]
    model(x)[0].sum().backward()
    sums = hh.gemms.telemetry.sums["forward.x"]
    assert int(sums[COUNT]) == x.shape[1] * x.shape[0] * 32  # T steps x batch x hidden elements
