"""``model=torchvision model.arch=<name>``: any torchvision classification model, untrained.

Built with ``torchvision.models.get_model(arch, num_classes=classes, weights=None)``, so its
layers are torchvision's own (its initialisation included) and the quantized-layer swap
(quant/modules.py) works on it like on cprec's models. torchvision is imported on first use.
"""

from __future__ import annotations

from torch import nn

from cprec.config import ModelConfig
from cprec.errors import ConfigError
from cprec.tasks.base import DatasetInfo

# models whose training forward returns auxiliary outputs unless told not to
NO_AUX = {"googlenet": {"aux_logits": False, "init_weights": True},
          "inception_v3": {"aux_logits": False, "init_weights": True}}


def classification_models() -> list[str]:
    """The names torchvision's classification model registry holds."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


class GrayAsRGB(nn.Module):
    """A torchvision model fed 1-channel images as RGB (the channel repeated three times)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x.expand(-1, 3, -1, -1))


def torchvision_model(cfg: ModelConfig, info: DatasetInfo) -> nn.Module:
    """The untrained ``model.arch`` for the dataset's classes; grayscale images enter as RGB."""
    import torchvision

    names = classification_models()
    if cfg.arch not in names:
        raise ConfigError("model.arch", cfg.arch, f"choose a torchvision classification model: {names}")
    if info.channels not in (1, 3):
        raise ConfigError("model.name", cfg.name, f"torchvision models take RGB (or grayscale) "
                          f"images; dataset {info.name} has {info.channels} channels")
    net = torchvision.models.get_model(cfg.arch, weights=None, num_classes=info.classes,
                                       **NO_AUX.get(cfg.arch, {}))
    return net if info.channels == 3 else GrayAsRGB(net)
