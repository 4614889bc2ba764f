"""An exported model in ONNX Runtime, configured entirely from its own metadata.

Execution providers follow the device setting; when CUDA (or TensorRT) was asked for and the
session came up without it, this fails, naming the missing library, instead of silently running
on the CPU. On a GPU the session runs through IO binding, so the outputs are allocated once on
the device and copied back in one transfer instead of ONNX Runtime's per-call staging; the same
binding code runs on the CPU device when asked, which is how CI covers it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from transferkit.contract import (
    DECISION_OUTPUT,
    HEATMAP_OUTPUT,
    INPUT_NAME,
    OOD_OUTPUT,
    OUTPUT_NAMES,
    REQUIRED_METADATA,
    read_metadata,
)
from transferkit.decision import DecisionRule
from transferkit.errors import ModelError
from transferkit.onnx_runtime import (
    CPU,
    CUDA,
    CpuArena,
    CudaOptions,
    create_session,
    cuda_unavailable_message,
    providers_for,
)
from transferkit.preprocessing import load_for_model


@dataclass
class Prediction:
    label: str
    probabilities: dict[str, float]
    decision: str | None = None  # the model's decision name (pass / flag / review); None without a rule
    reason: str | None = None  # why the decision is review (decision.REASONS); None otherwise
    ood_score: float | None = None  # the model's ood_score output; None for a model without it


@dataclass(frozen=True)
class Evidence:
    """One image's evidence map (h, w), for ``classes``, in calibrated-logit units."""

    classes: list[str]
    values: np.ndarray
    stride: float  # model-input pixels per map cell


class OnnxClassifier:
    """A checked, exported transferkit model: the ONNX checker and the metadata contract pass."""

    def __init__(
        self,
        path: str | Path,
        device: str = "auto",
        threads: int = 0,
        tensorrt: bool = False,
        *,
        io_binding: bool | None = None,
        cuda: CudaOptions | None = None,
        cpu_arena: CpuArena = "private",
    ) -> None:
        """``io_binding`` None binds on a GPU only; True binds on the CPU too (the CPU twin in tests)."""
        import onnx

        path = Path(path)
        if not path.is_file():
            raise ModelError(f"model file not found: {path}")
        model_bytes = path.read_bytes()
        try:
            proto = onnx.load_from_string(model_bytes)
            onnx.checker.check_model(proto)
        except Exception as error:  # onnx raises DecodeError, ValidationError and others for damaged files
            raise ModelError(f"{path} is not a readable ONNX model: {error}") from None
        self.path = path
        self.sha256 = hashlib.sha256(model_bytes).hexdigest()
        self.metadata: dict[str, Any] = read_metadata(proto)
        missing = [key for key in REQUIRED_METADATA if key not in self.metadata]
        if missing:
            raise ModelError(f"{path} lacks transferkit metadata {missing}; export it with `transferkit export`")
        self.session = create_session(model_bytes, providers_for(device, tensorrt), threads, cuda, cpu_arena)
        self.providers: list[str] = self.session.get_providers()
        if device == "cuda" and CUDA not in self.providers:
            raise ModelError(cuda_unavailable_message(self.providers))
        self.on_gpu = self.providers[0] != CPU
        self.io_binding = self.on_gpu if io_binding is None else io_binding
        # The contract's outputs first, then whichever optional ones (decision, heatmap) this model has.
        self.output_names: list[str] = [o.name for o in self.session.get_outputs()]
        self.class_names: list[str] = list(self.metadata["class_names"])
        self.image_size = int(self.metadata["image_size"])
        self.resize = str(self.metadata["resize"])
        self.rule, self.decision_names = self._decision_rule()

    def _decision_rule(self) -> tuple[DecisionRule | None, list[str] | None]:
        """The rule behind the ``decision`` output and the names its codes index (None, None without one)."""
        if DECISION_OUTPUT not in self.output_names:
            return None, None
        described = self.metadata.get(DECISION_OUTPUT)
        try:
            return DecisionRule.from_metadata(described, self.class_names), list(described["names"])
        except (TypeError, KeyError, ValueError) as error:  # absent, or not the shape the exporter writes
            raise ModelError(
                f"{self.path} has a {DECISION_OUTPUT!r} output but its {DECISION_OUTPUT!r} metadata is missing or "
                f"broken ({error!r}); re-export the model with `transferkit export`"
            ) from None

    @property
    def has_heatmap(self) -> bool:
        return HEATMAP_OUTPUT in self.output_names

    def require_heatmap(self) -> None:
        """Refuse, saying what to do, when this model cannot explain its predictions."""
        if not self.has_heatmap:
            raise ModelError(
                f"{self.path.name} has no {HEATMAP_OUTPUT!r} output (outputs: {self.output_names}): it was exported "
                "before transferkit added class maps, or it is an ensemble; re-export a single model with "
                "`transferkit export` to get heatmaps"
            )

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits, probabilities) for uint8 NCHW images at the model's resolution."""
        outputs = self.run_all(images)
        return outputs[OUTPUT_NAMES[0]], outputs[OUTPUT_NAMES[1]]

    def run_all(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Every output of the model, by name, for uint8 NCHW images at the model's resolution."""
        images = np.ascontiguousarray(images, dtype=np.uint8)
        if not self.io_binding:
            return dict(zip(self.output_names, self.session.run(self.output_names, {INPUT_NAME: images}), strict=True))
        # Outputs are allocated on the session's device and copied back in one transfer.
        binding = self.session.io_binding()
        binding.bind_cpu_input(INPUT_NAME, images)
        for name in self.output_names:
            binding.bind_output(name, "cuda" if self.on_gpu else "cpu")
        self.session.run_with_iobinding(binding)
        return dict(zip(self.output_names, binding.copy_outputs_to_cpu(), strict=True))

    def logits(self, images: np.ndarray) -> np.ndarray:
        return self.run(images)[0]

    def preprocess(self, source: str | Path | bytes, max_pixels: int | None = None) -> np.ndarray:
        return load_for_model(source, self.image_size, self.resize, max_pixels)

    def label(
        self,
        probabilities: np.ndarray,
        decision: int | None = None,
        reason: str | None = None,
        ood_score: float | None = None,
    ) -> Prediction:
        """One image's probabilities (and decision code, when the model has one) as a named prediction."""
        return Prediction(
            self.class_names[int(probabilities.argmax())],
            dict(zip(self.class_names, map(float, probabilities), strict=True)),
            None if decision is None or self.decision_names is None else self.decision_names[int(decision)],
            reason,
            None if ood_score is None else float(ood_score),
        )

    def labels(self, outputs: dict[str, np.ndarray]) -> list[Prediction]:
        """Named predictions for a batch from ``run_all``'s outputs: the decision, why it is review (from
        the rule and the ood_score output, as decision.py says) and the ood_score, where the model has them."""
        probabilities = outputs[OUTPUT_NAMES[1]]
        codes = outputs.get(DECISION_OUTPUT)
        ood = outputs.get(OOD_OUTPUT)
        ood = None if ood is None else ood.reshape(len(probabilities))
        reasons = [None] * len(probabilities)
        if codes is not None and self.rule is not None:
            reasons = self.rule.reasons(codes, ood)
        return [
            self.label(p, None if codes is None else int(codes[i]), reasons[i], None if ood is None else float(ood[i]))
            for i, p in enumerate(probabilities)
        ]

    def predict(self, images: np.ndarray) -> list[Prediction]:
        return self.labels(self.run_all(images))

    def explain(self, outputs: dict[str, np.ndarray]) -> list[Evidence]:
        """Each image's evidence map from ``run_all``'s outputs: for the rule's positive classes (what a
        flag is about), or for the predicted class when the model has no positive classes."""
        from transferkit.heatmap import evidence  # loads matplotlib (its colours): only when explaining

        self.require_heatmap()
        maps, probabilities = outputs[HEATMAP_OUTPUT], outputs[OUTPUT_NAMES[1]]
        stride = float(self.metadata.get(HEATMAP_OUTPUT, {}).get("stride", self.image_size / maps.shape[2]))
        explained = []
        for image_maps, image_probabilities in zip(maps, probabilities, strict=True):
            classes = (
                list(self.rule.positive) if self.rule and self.rule.positive else [int(image_probabilities.argmax())]
            )
            explained.append(Evidence([self.class_names[c] for c in classes], evidence(image_maps, classes), stride))
        return explained

    def warm_up(self) -> None:
        """One inference on a blank image, checking the output contract (catches a model that loads but is wrong)."""
        logits, probabilities = self.run(np.zeros((1, *self.input_shape), dtype=np.uint8))
        expected = (1, len(self.class_names))
        if logits.shape != expected or probabilities.shape != expected:
            raise ModelError(
                f"{self.path}: outputs have shape {logits.shape}/{probabilities.shape}, expected {expected} "
                "from its class_names metadata; re-export the model"
            )
        if not (np.isfinite(probabilities).all() and abs(float(probabilities.sum()) - 1.0) < 1e-3):
            raise ModelError(f"{self.path}: warm-up probabilities are not a distribution: {probabilities.tolist()}")
