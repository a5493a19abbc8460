"""Models: output shapes for every dataset shape; parameter counts, MACs and shortcut
placement of the CIFAR ResNets and of CPT's MobileNetV2 against formulas from CPT's code."""

from __future__ import annotations

import pytest
import torch

from cprec.config import ModelConfig
from cprec.models import LANGUAGE_MODELS, MODELS, build_model
from cprec.models.gnn import GRAPH_MODELS
from cprec.tasks.base import DatasetInfo


@pytest.mark.parametrize("name", sorted(set(MODELS) - set(GRAPH_MODELS) - set(LANGUAGE_MODELS)))
@pytest.mark.parametrize("shape", [(1, 8, 10), (1, 28, 10), (3, 32, 100)])
def test_output_shape(name: str, shape: tuple[int, int, int]) -> None:
    """Every registered image model maps a (2, C, S, S) batch to (2, classes) logits for each
    dataset shape (language and graph models: tests/test_config.py, test_lm.py, test_graph.py)."""
    c, size, classes = shape
    model = build_model(ModelConfig(name=name), DatasetInfo("x", c, size, classes))
    assert model(torch.randn(2, c, size, size)).shape == (2, classes)


# CPT's CIFAR MobileNetV2 table (cpt_cifar/models.py): (expansion, out channels, blocks, stride)
CPT_MOBILENETV2 = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                   (6, 160, 3, 2), (6, 320, 1, 1)]


def cpt_blocks() -> list[tuple[int, int, int, int]]:
    """(in, out, expansion, stride) of every block of CPT's MobileNetV2, in order."""
    blocks, cin = [], 32
    for t, cout, n, stride in CPT_MOBILENETV2:
        for i in range(n):
            blocks.append((cin, cout, t, stride if i == 0 else 1))
            cin = cout
    return blocks


def cpt_mobilenetv2_counts(classes: int, size: int = 32) -> tuple[int, int]:
    """(parameters, MACs per sample) of CPT's MobileNetV2 by formula: a conv has
    cin/groups * k * k * cout weights and that many MACs per output pixel, a BatchNorm 2 * c
    parameters; stem 3x3 3->32, per block 1x1 expand (also at t=1), 3x3 depthwise (stride s),
    1x1 project, a 1x1 shortcut conv + BN iff s == 1 and in != out; 1x1 320->1280; Linear."""
    side = size
    params, macs = 3 * 32 * 9 + 2 * 32, side * side * 32 * 3 * 9
    for cin, cout, t, stride in cpt_blocks():
        hidden = t * cin
        params += cin * hidden + 2 * hidden + 9 * hidden + 2 * hidden + hidden * cout + 2 * cout
        macs += side * side * cin * hidden
        side = (side - 1) // stride + 1  # 3x3, padding 1
        macs += side * side * (9 * hidden + hidden * cout)
        if stride == 1 and cin != cout:
            params += cin * cout + 2 * cout
            macs += side * side * cin * cout
    params += 320 * 1280 + 2 * 1280 + 1280 * classes + classes
    macs += side * side * 320 * 1280 + 1280 * classes
    return params, macs


def cifar_resnet_parameters(depth: int, classes: int) -> int:
    """Parameters of CPT's CIFAR ResNet-(6n+2) by formula: 3x3 stem 3->16 + BN; per block two
    3x3 convs + BNs and, where the stride or width changes, a 1x1 conv + BN shortcut; a Linear
    64 -> classes. (CPT's own module also holds an unused BatchNorm ``bn3`` in every block
    without a shortcut: 2 * width parameters each that never touch the result.)"""
    n = (depth - 2) // 6
    params, cin = 3 * 16 * 9 + 2 * 16, 16
    for stage, cout in enumerate((16, 32, 64)):
        for i in range(n):
            params += 9 * cin * cout + 9 * cout * cout + 4 * cout
            if stage > 0 and i == 0:
                params += cin * cout + 2 * cout
            cin = cout
    return params + 64 * classes + classes


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_resnet_depths_and_parameters() -> None:
    """CIFAR ResNets 20..152 (CPT's list: 38, 74, 110, 152) have CPT's parameter count by
    formula (ResNet-20: 0.27M), 6n+1 3x3 convs and two 1x1 shortcut convs."""
    convs = lambda m: sum(isinstance(x, torch.nn.Conv2d) for x in m.modules())  # noqa: E731
    for depth in (20, 38, 56, 74, 110, 152):
        for classes in (10, 100):
            m = build_model(ModelConfig(name=f"resnet{depth}"), DatasetInfo("x", 3, 32, classes))
            assert n_params(m) == cifar_resnet_parameters(depth, classes), (depth, classes)
        assert convs(m) == depth - 1 + 2  # 6n+1 3x3 convs + two 1x1 shortcut convs
    assert cifar_resnet_parameters(20, 10) == 272_474


def test_cpt_mobilenetv2_is_cpts_architecture() -> None:
    """cpt_mobilenetv2 has CPT's parameter count (2,296,922 for 10 classes, by formula) and
    MACs (the ledger's measurement), an expansion conv in every block, ReLU not ReLU6, no
    dropout, and a shortcut conv exactly where CPT puts one (stride 1, widths differ: blocks
    0, 1, 10, 16); the torchvision-style mobilenetv2 is a different network."""
    from cprec.cost import measure_macs
    from cprec.models.mobilenetv2 import CPTBlock

    for classes in (10, 100):
        m = build_model(ModelConfig(name="cpt_mobilenetv2"), DatasetInfo("x", 3, 32, classes))
        params, macs = cpt_mobilenetv2_counts(classes)
        assert n_params(m) == params
        assert sum(measure_macs(m, torch.zeros(1, 3, 32, 32)).values()) == macs
    assert cpt_mobilenetv2_counts(10)[0] == 2_296_922
    blocks = [b for b in m.modules() if isinstance(b, CPTBlock)]
    assert [(b.conv1.in_channels, b.conv3.out_channels, b.conv1.out_channels // b.conv1.in_channels,
             b.conv2.stride[0]) for b in blocks] == cpt_blocks()
    with_conv = [i for i, b in enumerate(blocks) if b.shortcut is not None]
    assert with_conv == [i for i, (cin, cout, _, s) in enumerate(cpt_blocks()) if s == 1 and cin != cout]
    assert with_conv == [0, 1, 10, 16]
    kinds = {type(x) for x in m.modules()}
    assert torch.nn.ReLU in kinds and not kinds & {torch.nn.ReLU6, torch.nn.Dropout}
    torchvision_style = build_model(ModelConfig(name="mobilenetv2"), DatasetInfo("x", 3, 32, 10))
    assert n_params(torchvision_style) != cpt_mobilenetv2_counts(10)[0]


@pytest.mark.parametrize("stride,cin,cout,residual", [(1, 8, 8, "identity"), (1, 8, 12, "conv"),
                                                      (2, 8, 8, "none"), (2, 8, 12, "none")])
def test_cpt_block_residual(stride: int, cin: int, cout: int, residual: str) -> None:
    """CPT's block adds x at stride 1 with equal widths, BN(conv1x1(x)) at stride 1 with other
    widths, nothing at stride 2: with the main branch zeroed the block returns exactly that."""
    from cprec.models.mobilenetv2 import CPTBlock

    block = CPTBlock(cin, cout, 6, stride).eval()
    torch.nn.init.zeros_(block.conv3.weight)  # main branch -> BN(0) = 0 at fresh statistics
    x = torch.randn(2, cin, 6, 6)
    with torch.no_grad():
        out = block(x)
        expected = {"identity": x, "none": torch.zeros_like(out),
                    "conv": block.shortcut(x) if block.shortcut is not None else None}[residual]
    assert (block.shortcut is not None) == (residual == "conv")
    assert torch.equal(out, expected)


def test_unknown_model_is_a_config_error() -> None:
    """An unknown model name is a ConfigError that lists the models to choose from."""
    from cprec.errors import ConfigError

    with pytest.raises(ConfigError, match="choose one of"):
        build_model(ModelConfig(name="vgg"), DatasetInfo("x", 3, 32, 10))
