"""Typed view of ``params.yaml``: every knob of the pipeline, validated before any work starts.

One ``load_params`` serves dvc stages, the CLI and (later) Prefect flows, so a typo in a key
fails the same way everywhere: one message naming the key and what is allowed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from transferkit.errors import ConfigError

Architecture = Literal[
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
    "resnet18",
    "resnet50",
    "vgg16",
    "mobilenet_v3_large",
    "efficientnet_b0",
]
Strategy = Literal["linear", "finetune", "gradual", "scratch"]
Device = Literal["auto", "cpu", "cuda"]
PositiveFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(gt=0, lt=1)]


class Section(BaseModel):
    """Base of every params section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitParams(Section):
    """Fractions of the labelled images per split; they must sum to 1."""

    train: Fraction = 0.65
    val: Fraction = 0.10
    test: Fraction = 0.25

    @model_validator(mode="after")
    def _fractions_sum_to_one(self) -> SplitParams:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(
                f"split fractions train+val+test must sum to 1, got {self.train}+{self.val}+{self.test}={total:g}"
            )
        return self


class DataParams(Section):
    source: Literal["elpv", "imagefolder"] = "elpv"
    path: str = "data/raw/elpv"
    classes: Literal[2, 4] = 2
    image_size: Annotated[int, Field(ge=32, le=1024)] = 300
    resize: Literal["bilinear", "bicubic", "nearest"] = "bilinear"
    split: SplitParams = SplitParams()
    seed: int = 42


class ModelParams(Section):
    architecture: Architecture = "efficientnet_lite0"
    weights: Literal["imagenet", "none"] = "imagenet"
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.2


AugmentPreset = Literal["auto", "natural", "orientation_free", "none"]


class AugmentParams(Section):
    """What the training images may be turned into without changing their class.

    ``preset`` decides the geometry (training/augment.py): ``natural`` horizontal flips (photos,
    anything with an up and a down), ``orientation_free`` all eight flips/quarter turns (solar
    cells, microscopy, aerial images), ``none``; ``auto`` follows the data: all eight views for
    ELPV, and for an ImageFolder source the views a probe finds to keep each class
    (training/orientation.py), which may be none of the named sets. The same preset drives the
    views the CPU path caches and the live augmentation of the full-network path, so the two
    cannot contradict each other. The magnitudes below are the jitter of every preset but
    ``none`` on the full-network path (a cache cannot hold it).
    """

    preset: AugmentPreset = "auto"
    affine_degrees: Annotated[float, Field(ge=0, le=45)] = 3.0
    affine_translate: Annotated[float, Field(ge=0, le=0.3)] = 0.02
    brightness: Annotated[float, Field(ge=0, le=1)] = 0.1
    contrast: Annotated[float, Field(ge=0, le=1)] = 0.1


class TrainParams(Section):
    """The documented recipe: these defaults and params.yaml agree (a test says so)."""

    strategy: Strategy = "finetune"
    device: Device = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    memory_format: Literal["auto", "channels_last", "contiguous"] = "auto"
    epochs: Annotated[int, Field(ge=1)] = 24
    batch_size: Annotated[int, Field(ge=1)] = 32
    lr: PositiveFloat = 1e-3
    backbone_lr_factor: Annotated[float, Field(gt=0, le=1)] = 0.3
    weight_decay: Annotated[float, Field(ge=0)] = 0.01
    warmup_epochs: Annotated[int, Field(ge=0)] = 1
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.1
    ema_epochs: Annotated[float, Field(ge=0)] = 2.0
    class_weighting: Literal["balanced", "none"] = "balanced"
    early_stopping_patience: Annotated[int, Field(ge=1)] = 5
    selection_metric: Literal["macro_f1", "accuracy", "loss"] = "macro_f1"
    frozen_units: Annotated[int, Field(ge=0)] = 12
    feature_cache: Literal["auto", "on", "off"] = "auto"
    unfreeze_every: Annotated[int, Field(ge=1)] = 2
    unfreeze_step: Annotated[int, Field(ge=1)] = 1
    augment: AugmentParams = AugmentParams()
    calibration: Literal["temperature", "none"] = "temperature"
    fraction: Annotated[float, Field(gt=0, le=1)] = 1.0
    seed: int = 0
    num_threads: Annotated[int, Field(ge=0)] = 0

    @model_validator(mode="after")
    def _strategy_is_consistent(self) -> TrainParams:
        if self.strategy == "scratch" and self.frozen_units:
            raise ValueError(
                "strategy 'scratch' trains every layer from random init, so frozen_units must be 0 "
                f"(got {self.frozen_units})"
            )
        return self


class EvaluateParams(Section):
    batch_size: Annotated[int, Field(ge=1)] = 64
    calibration_bins: Annotated[int, Field(ge=2, le=100)] = 15


class ReviewParams(Section):
    """The review band around the operating point, chosen on the validation split.

    With ``target_accuracy`` the band is the narrowest (most cells decided automatically) whose
    automatic decisions reach that accuracy; with ``max_fraction`` too, it may send at most that
    fraction to a person; with ``max_fraction`` alone it is the most accurate band within it.
    Both null: no band, every cell is passed or flagged.
    """

    target_accuracy: Annotated[float, Field(gt=0, le=1)] | None = 0.98
    max_fraction: Annotated[float, Field(ge=0, le=1)] | None = None


class OodParams(Section):
    """The out-of-distribution score (ood.py): a reference fitted on the training split's
    embeddings, a threshold on the validation split's scores. Above it, the decision is review."""

    method: Literal["mahalanobis", "knn"] | None = "mahalanobis"  # null: no ood_score output
    # The share of validation images that score below the threshold (the rest go to review).
    in_distribution_rate: Annotated[float, Field(gt=0.5, lt=1)] = 0.95
    k: Annotated[int, Field(ge=1)] = 10  # knn: the neighbour whose similarity counts
    bank_size: Annotated[int, Field(ge=16)] = 2048  # knn: training embeddings kept in the model


class DecisionParams(Section):
    """The operating point: which classes a line must catch, at what recall or false-alarm rate."""

    # auto: ELPV's every grade but "functional"; imagefolder: none (the review band alone decides)
    positive: Literal["auto"] | list[str] = "auto"
    target_recall: Fraction | None = 0.95
    target_false_alarm: Fraction | None = None
    # The threshold is the highest whose one-sided Clopper-Pearson bound at this confidence meets
    # the target on validation: 0.5 is the median (about the point estimate), higher is safer
    # and flags more.
    confidence: Annotated[float, Field(ge=0.5, lt=1)] = 0.5
    review: ReviewParams = ReviewParams()
    ood: OodParams = OodParams()

    @model_validator(mode="after")
    def _one_target(self) -> DecisionParams:
        if (self.target_recall is None) == (self.target_false_alarm is None):
            raise ValueError(
                "set exactly one of decision.target_recall and decision.target_false_alarm (the other to null), "
                f"got {self.target_recall} and {self.target_false_alarm}"
            )
        return self


class GateParams(Section):
    min_accuracy: Annotated[float, Field(ge=0, le=1)] = 0.85
    min_macro_f1: Annotated[float, Field(ge=0, le=1)] = 0.78
    max_slice_gap: Annotated[float, Field(ge=0, le=1)] = 0.12
    # On the test split at the operating point (decision.*); null turns a rule off. Recall and
    # false alarms apply where there are positive classes, the review fraction everywhere.
    min_recall: Annotated[float, Field(ge=0, le=1)] | None = 0.90
    max_false_alarm: Annotated[float, Field(ge=0, le=1)] | None = 0.5
    max_review_fraction: Annotated[float, Field(ge=0, le=1)] | None = 0.6
    baseline_metrics: str | None = None
    max_regression: Annotated[float, Field(ge=0, le=1)] = 0.01


class Int8Params(Section):
    """Static int8 quantization (export.precision: int8), calibrated on training images only."""

    calibration_images: Annotated[int, Field(ge=8)] = 256
    calibration_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    per_channel: bool = True
    keep_float: list[Literal["first_conv", "head"]] = []
    format: Literal["qdq", "qoperator"] = "qdq"
    # int8 moves probabilities far more than fp16 (the default model: up to 0.40), so it is held
    # to its own share of test decisions that differ from fp32 PyTorch's (the default: 0.137);
    # the export report gives the int8 model's own recall, false alarms and review fraction.
    max_decision_flips: Annotated[float, Field(ge=0, le=1)] = 0.2


class ExportParams(Section):
    opset: Annotated[int, Field(ge=13, le=21)] = 17
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    parity_tolerance: PositiveFloat = 1e-4
    fp16_parity_tolerance: PositiveFloat = 0.05
    # fp16 keeps about three significant digits, and its rounding grows through the backbone's
    # blocks in proportion to the activations: the check allows this fraction of the largest
    # |reference logit| where that is more than fp16_parity_tolerance.
    fp16_relative_tolerance: PositiveFloat = 0.02
    max_accuracy_drop: Annotated[float, Field(ge=0, le=1)] = 0.005
    # The fraction of test images whose decision (pass / flag / review) differs from the one
    # fp32 PyTorch's probabilities give, at every precision.
    max_decision_flips: Annotated[float, Field(ge=0, le=1)] = 0.01
    int8: Int8Params = Int8Params()


class PathParams(Section):
    """Every output location of the pipeline; dvc.yaml interpolates the same values."""

    prepared: str = "data/prepared"
    data_report: str = "reports/data.json"
    data_summary: str = "reports/data.md"
    # Where prepare finds reviewed drops, <name>-reviewed/<class>/<image> (data/reviewed.py).
    reviewed: str = "data/raw"
    train: str = "models/train"
    checkpoints: str = "models/checkpoints"
    feature_cache: str = ".feature-cache"
    train_reports: str = "reports/train"
    evaluate: str = "reports/evaluate"
    test_logits: str = "models/evaluate/test_logits.npy"
    test_embeddings: str = "models/evaluate/test_embeddings.npy"
    ood_reference: str = "models/evaluate/ood_reference.npz"
    drift_reference: str = "models/evaluate/drift_reference.json"
    gate_report: str = "reports/gate.json"
    export: str = "models/export"
    export_report: str = "reports/export.json"


class StudyParams(Section):
    """The strategy x data-fraction grid of ``transferkit study`` (not a pipeline stage).

    Every cell is the pipeline's own params plus ``overrides`` (dotted keys, e.g. a smaller
    image size for a CPU run) and its strategy, training fraction and seed. ``root`` holds the
    cells' working files (gitignored); ``store`` their records, which are committed. The grid
    ran at 224 px and 12 epochs, before the default moved to 300 px and 24 epochs on its recipe
    search: ``overrides`` keeps it there, so its 72 committed cells stay its cells (a changed
    recipe is a new grid).
    """

    strategies: list[Strategy] = ["linear", "finetune", "gradual", "scratch"]
    fractions: list[Annotated[float, Field(gt=0, le=1)]] = [0.05, 0.1, 0.25, 0.5, 1.0]
    seeds: list[int] = [0, 1, 2]
    four_class: bool = True
    overrides: dict[str, Any] = {"data.image_size": 224, "train.epochs": 12}
    root: str = "studies/default"
    store: str = "docs/study/cells"
    report: str = "docs/study"
    jobs: Annotated[int, Field(ge=1)] = 1


class SearchDimension(Section):
    """One searched key: a range (``low``..``high``, on a log scale with ``log: true``; ints stay
    ints) or a list of ``choices``."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _range_or_choices(self) -> SearchDimension:
        if self.choices is not None:
            if self.low is not None or self.high is not None or not self.choices:
                raise ValueError("give either non-empty choices or low and high, not both")
            return self
        if self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"a range needs low < high (got low={self.low}, high={self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0 (got {self.low})")
        return self


# Only these sections may be searched: tuning reuses the pipeline's prepared data.
TUNABLE_SECTIONS = ("train", "model")


class TuneParams(Section):
    """`transferkit tune`: an Optuna TPE search over dotted ``train.*``/``model.*`` keys.

    Trials optimise the validation score of ``train.selection_metric`` (never the test split),
    are pruned on it epoch by epoch, and share one study through Optuna's journal file, so
    workers on several machines can add trials to it.
    """

    space: dict[str, SearchDimension] = {
        "train.lr": SearchDimension(low=3e-4, high=3e-3, log=True),
        "train.backbone_lr_factor": SearchDimension(low=0.1, high=1.0, log=True),
        "train.label_smoothing": SearchDimension(low=0.0, high=0.2),
        "train.frozen_units": SearchDimension(choices=[8, 12, 14]),
    }
    trials: Annotated[int, Field(ge=1)] = 20
    jobs: Annotated[int, Field(ge=1)] = 1
    startup_trials: Annotated[int, Field(ge=0)] = 5
    prune_after_epochs: Annotated[int, Field(ge=0)] = 2
    pruning: bool = True
    enqueue: list[dict[str, Any]] = []
    overrides: dict[str, Any] = {}
    seed: int = 0
    study_name: str = "transferkit"
    root: str = "tune"

    @model_validator(mode="after")
    def _tunable_keys(self) -> TuneParams:
        for key in [*self.space, *(k for trial in self.enqueue for k in trial)]:
            if key.split(".")[0] not in TUNABLE_SECTIONS or "." not in key:
                raise ValueError(
                    f"{key}: only {'/'.join(s + '.*' for s in TUNABLE_SECTIONS)} keys can be tuned "
                    "(a trial reuses the pipeline's prepared data)"
                )
        for trial in self.enqueue:
            if set(trial) - set(self.space):
                raise ValueError(
                    f"enqueued trial {trial} sets keys outside tune.space: {sorted(set(trial) - set(self.space))}"
                )
        return self


class Params(Section):
    data: DataParams = DataParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    decision: DecisionParams = DecisionParams()
    gate: GateParams = GateParams()
    export: ExportParams = ExportParams()
    paths: PathParams = PathParams()
    study: StudyParams = StudyParams()
    tune: TuneParams = TuneParams()

    @model_validator(mode="after")
    def _scratch_starts_from_random_weights(self) -> Params:
        if self.train.strategy == "scratch" and self.model.weights != "none":
            raise ValueError(
                "strategy 'scratch' means training from random init: set model.weights: none "
                f"(got {self.model.weights!r})"
            )
        return self

    def section_hash(self, *sections: str) -> str:
        """Short stable hash of the named sections, recorded in checkpoints and model metadata."""
        payload = {name: getattr(self, name).model_dump(mode="json") for name in sections}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


# Keys of earlier releases, and what took their place (an old params file gets told, not just refused).
REPLACED_KEYS = {
    "train.cache_views": "the cached views follow train.augment.preset now",
    "train.augment.hflip": "flips and quarter turns follow train.augment.preset now",
    "train.augment.vflip": "flips and quarter turns follow train.augment.preset now",
    "train.augment.rot90": "flips and quarter turns follow train.augment.preset now",
    "train.ema_decay": "use train.ema_epochs, the EMA's horizon in epochs (0 = off)",
}


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Walk the pydantic model along ``loc`` (minus the bad key) and list the fields found there."""
    current: type[BaseModel] = model
    for part in loc[:-1]:
        annotation = current.model_fields[str(part)].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        current = annotation
    return sorted(current.model_fields)


def format_validation_error(error: ValidationError, source: str) -> str:
    """Turn pydantic's report into one line per bad key: ``section.key: what is wrong``."""
    lines = [f"invalid parameters in {source}:"]
    for item in error.errors():
        loc = tuple(item["loc"])
        key = ".".join(str(p) for p in loc) or "(top level)"
        if item["type"] == "extra_forbidden":
            allowed = ", ".join(_allowed_keys(Params, loc))
            replaced = f" ({REPLACED_KEYS[key]})" if key in REPLACED_KEYS else ""
            lines.append(f"  {key}: unknown key{replaced}; allowed keys here: {allowed}")
        else:
            lines.append(f"  {key}: {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)


def parse_params(raw: dict[str, Any], source: str = "params") -> Params:
    """Validate an already-loaded mapping; the single place that raises ConfigError for bad values."""
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, source)) from None


def load_params(path: str | Path = "params.yaml", overrides: dict[str, Any] | None = None) -> Params:
    """Read, merge dotted ``overrides`` (``{"train.epochs": 1}``) and validate the params file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file not found: {path}. Run from the project root or pass --params PATH.")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections (data, model, train, ...)")
    for dotted, value in (overrides or {}).items():
        set_dotted(raw, dotted, value)
    return parse_params(raw, str(path))


def set_dotted(mapping: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested dict, creating sections on the way (as ``dvc exp run -S`` does)."""
    *parents, leaf = dotted.split(".")
    node = mapping
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {dotted}: {part} is not a section")
    node[leaf] = value
