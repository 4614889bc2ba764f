"""The image classifier: in-graph normalisation, backbone units, pooled features, a new head.

Input is RGB NCHW on the 0..255 scale (uint8 or float). Scaling and normalisation are part of
the module, so training, evaluation and the exported ONNX graph share them by construction.
"""

from __future__ import annotations

import torch
from torch import nn

from transferkit.models.backbones import Backbone, build_backbone


class ImageClassifier(nn.Module):
    def __init__(self, backbone: Backbone, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(backbone.mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(backbone.std).view(1, 3, 1, 1) * 255.0)
        self.units = nn.ModuleList(backbone.units)
        self.unit_names = list(backbone.unit_names)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(backbone.num_features, num_classes))

    @property
    def num_units(self) -> int:
        return len(self.units)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() - self.mean) / self.std

    def forward_units(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        for unit in self.units[start:stop]:
            x = unit(x)
        return x

    def forward_top(self, features: torch.Tensor, start: int) -> torch.Tensor:
        """Logits from the activations entering unit ``start`` (``start == num_units``: pooled input)."""
        return self.head(self.pool(self.forward_units(features, start, self.num_units)))

    def trunk(self, images: torch.Tensor, cut: int) -> torch.Tensor:
        """Activations entering unit ``cut``: what the frozen bottom of the network produces.

        With every unit frozen (a linear probe) the activations are pooled here already, which
        makes cached features 49x smaller and changes nothing: pooling twice equals pooling once.
        """
        features = self.forward_units(self.normalize(images), 0, cut)
        return self.pool(features) if cut == self.num_units else features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_top(self.trunk(images, 0), 0)

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """The last units' activations, (batch, features, h, w): what the head pools."""
        return self.forward_units(self.normalize(images), 0, self.num_units)

    def class_maps(self, features: torch.Tensor) -> torch.Tensor:
        """Class activation maps (batch, classes, h, w) of a ``feature_map``.

        The head is a global average pool and one linear layer, so applying the linear layer at
        every position instead (a 1x1 convolution) and dividing by the number of positions gives
        maps that sum, over positions, to the logits exactly: the map says which part of the
        image contributed how much to each class's logit, with no gradients.
        """
        linear = self.head[-1]
        maps = nn.functional.conv2d(features, linear.weight[:, :, None, None], linear.bias)
        # Plain ints: the exported graph has one input size, so the count is a constant there.
        positions = int(features.shape[-2]) * int(features.shape[-1])
        return maps / positions


def build_classifier(architecture: str, weights: str, num_classes: int, dropout: float) -> ImageClassifier:
    return ImageClassifier(build_backbone(architecture, weights), num_classes, dropout)
