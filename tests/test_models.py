"""Models: output shapes for every dataset shape, parameter counts of the CIFAR ResNets."""

from __future__ import annotations

import pytest
import torch

from cprec.config import ModelConfig
from cprec.data import DatasetInfo
from cprec.models import MODELS, build_model


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("shape", [(1, 8, 10), (1, 28, 10), (3, 32, 100)])
def test_output_shape(name: str, shape: tuple[int, int, int]) -> None:
    """Every registered model maps a (2, C, S, S) batch to (2, classes) logits for each dataset shape."""
    c, size, classes = shape
    model = build_model(ModelConfig(name=name), DatasetInfo("x", c, size, classes))
    assert model(torch.randn(2, c, size, size)).shape == (2, classes)


def test_resnet_depths_and_parameters() -> None:
    """ResNet-20 (6n+2, n=3, 16/32/64 channels, 1x1 shortcuts) has ~0.27M parameters."""
    r20 = build_model(ModelConfig(name="resnet20"), DatasetInfo("x", 3, 32, 10))
    assert 0.26e6 < sum(p.numel() for p in r20.parameters()) < 0.28e6
    convs = lambda m: sum(isinstance(x, torch.nn.Conv2d) for x in m.modules())  # noqa: E731
    for depth in (20, 38, 56, 74, 110):
        m = build_model(ModelConfig(name=f"resnet{depth}"), DatasetInfo("x", 3, 32, 10))
        assert convs(m) == depth - 1 + 2  # 6n+1 3x3 convs + two 1x1 shortcut convs


def test_unknown_model_is_a_config_error() -> None:
    """An unknown model name is a ConfigError that lists the models to choose from."""
    from cprec.errors import ConfigError

    with pytest.raises(ConfigError, match="choose one of"):
        build_model(ModelConfig(name="vgg"), DatasetInfo("x", 3, 32, 10))
