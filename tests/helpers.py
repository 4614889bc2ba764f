"""Helpers the tests share: the real params file shrunk for speed, a throw-away project copy, and
running the project's own command-line tools. Imported by tests and by conftest.py's fixtures.

Tests never invent a config: they load the project's params.yaml and shrink it (small images,
few epochs), as the lightning-hydra-template does.
"""

from __future__ import annotations

import ast
import atexit
import dataclasses
import io
import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image
from sklearn.metrics import f1_score

from transferkit import orchestration
from transferkit.config import Params, parse_params, set_dotted
from transferkit.contract import HEADLINE_METRICS, HEATMAP_OUTPUT, METADATA_PREFIX, OUTPUT_NAMES, model_metadata
from transferkit.decision import DecisionRule
from transferkit.export.onnx_export import export_onnx
from transferkit.models.classifier import build_classifier
from transferkit.study.store import cell_key, encode_labels, identity

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
# Content-keyed caches every test of a session may share, as a project's flow runs do: the frozen
# trunk's activations (keyed by the trunk graph and the prepared images) and, for the projects
# that ask for it, DVC's cache with its run cache (keyed by each stage's code, data and params).
SESSION_CACHE = Path(tempfile.mkdtemp(prefix="transferkit-test-cache-"))
atexit.register(shutil.rmtree, SESSION_CACHE, ignore_errors=True)
SUBSET_SIZE = 160

SHRINK: dict[str, Any] = {
    "data.image_size": 64,
    "train.epochs": 2,
    "train.batch_size": 16,
    "train.num_threads": 2,
    "gate.min_accuracy": 0.0,
    "gate.min_macro_f1": 0.0,
    "gate.max_slice_gap": 1.0,
    "gate.min_recall": 0.0,
    "gate.max_false_alarm": 1.0,
    "gate.max_review_fraction": 1.0,
}


def shrunk_raw(**overrides: Any) -> dict[str, Any]:
    """The repository's params.yaml as a dict, shrunk, with dotted ``overrides`` (a__b -> a.b)."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["paths"]["feature_cache"] = str(SESSION_CACHE / "features")
    for dotted, value in {**SHRINK, **{k.replace("__", "."): v for k, v in overrides.items()}}.items():
        set_dotted(raw, dotted, value)
    return raw


def shrunk_params(root: Path, **overrides: Any) -> Params:
    """Validated shrunk params whose paths all live under ``root``."""
    raw = shrunk_raw(**overrides)
    raw["paths"] = {key: str(root / value) for key, value in raw["paths"].items()}  # an absolute one stays
    raw["data"]["path"] = str(root / raw["data"]["path"])
    return parse_params(raw)


def tool_env() -> dict[str, str]:
    """The pipeline's subprocess environment, with unbuffered output for the logs."""
    return {**orchestration.tool_env(), "PYTHONUNBUFFERED": "1"}


def run_tool(
    args: list[str], cwd: Path, check: bool = True, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, cwd=cwd, env=env or tool_env(), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


def make_project(tmp_path: Path, elpv_subset: Path, shared_dvc_cache: bool = False) -> Path:
    """A throw-away copy of the project (git + DVC) with the ELPV subset and shrunk params.

    ``shared_dvc_cache``: the project's DVC cache is the session's (in ``.dvc/config.local``, which
    git ignores), so its run cache restores a stage another project already ran with the same
    code, data and params: what a flow test needs, not a test of which stages run.
    """
    root = tmp_path / "project"
    root.mkdir()
    for name in ("dvc.yaml", "src"):
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, root / name)
    (root / ".dvc").mkdir()
    for name in ("config", ".gitignore"):  # DVC's own ignores: .dvc/tmp (locks, run workspaces), cache
        shutil.copy(REPO / ".dvc" / name, root / ".dvc" / name)
    if shared_dvc_cache:
        (root / ".dvc" / "config.local").write_text(f"[cache]\n    dir = {SESSION_CACHE / 'dvc'}\n")
    shutil.copytree(elpv_subset, root / "data" / "raw" / "elpv")
    (root / "params.yaml").write_text(yaml.safe_dump(shrunk_raw(), sort_keys=False))
    # the real repo's ignores (registry, feature cache, checkpoints); data belongs to DVC
    (root / ".gitignore").write_text((REPO / ".gitignore").read_text() + "/data/raw/elpv\n")
    run_tool(["git", "init", "-q"], root)
    run_tool(["git", "add", "-A"], root)
    run_tool(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init"], root)
    return root


def commit_tracked_data(root: Path) -> None:
    """`dvc add` the raw data and commit the pointer, as the README tells a user to."""
    run_tool(["dvc", "add", "data/raw/elpv"], root)
    run_tool(["git", "add", "-A"], root)
    run_tool(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "track data"], root)


def set_params(root: Path, **overrides: Any) -> None:
    """Edit the copied project's params.yaml in place (a__b -> a.b)."""
    raw = yaml.safe_load((root / "params.yaml").read_text())
    for key, value in overrides.items():
        set_dotted(raw, key.replace("__", "."), value)
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def module_file(name: str) -> Path | None:
    """The source file of a transferkit module or package (None for anything else)."""
    if name != "transferkit" and not name.startswith("transferkit."):
        return None
    base = SRC.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(file: Path) -> set[str]:
    """Names of the modules ``file`` imports; ``from pkg import mod`` counts mod when it is a module."""
    package = ".".join(file.relative_to(SRC).with_suffix("").parts)
    if file.name != "__init__.py":
        package = package.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def closure(entry: str) -> set[Path]:
    """Every transferkit source file that importing ``entry`` loads, parent packages included."""
    seen: set[Path] = set()
    pending = [entry]
    while pending:
        name = pending.pop()
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ too
            file = module_file(".".join(parts[:depth]))
            if file is not None and file not in seen:
                seen.add(file)
                pending.extend(imported_modules(file))
    return seen


def png_bytes(size: tuple[int, int] = (40, 30), mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, 128).save(buffer, format="PNG")
    return buffer.getvalue()


def metric(client, name: str, default: float | None = None) -> float:
    """A sample from /metrics; ``default`` for a labelled series not yet created."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    if default is None:
        raise AssertionError(f"{name} not in /metrics")
    return default


def record_of(params_raw: dict[str, Any], finished: str = "2026-11-24T00:00:00+00:00") -> dict[str, Any]:
    params = parse_params(params_raw)
    labels, predicted = np.array([0, 1, 1, 0, 1]), np.array([0, 1, 0, 0, 1])
    return {
        "name": "2class-finetune-f1-s0",
        "key": cell_key(params),
        "finished": finished,
        "params": identity(params),
        "metrics": {"accuracy": 0.8, "macro_f1": float(f1_score(labels, predicted, average="macro"))},
        "test": {"labels": encode_labels(labels), "predicted": encode_labels(predicted)},
    }


def study_params(tmp_path: Path, elpv_subset: Path, **study: object) -> Path:
    raw = shrunk_raw()
    raw["data"]["path"] = str(elpv_subset)
    raw["study"] = {
        "strategies": ["linear", "finetune"],
        "fractions": [0.5, 1.0],
        "seeds": [0],
        "four_class": False,
        "overrides": {"train.epochs": 1},
        "root": str(tmp_path / "study"),
        "store": str(tmp_path / "store"),
        "report": str(tmp_path / "report"),
        "jobs": 2,
        **study,
    }
    file = tmp_path / "params.yaml"
    file.write_text(yaml.safe_dump(raw, sort_keys=False))
    return file


# Serving tests: real exported models (ImageNet Lite0 trunk, seeded heads) at a small input size.
IMAGE_SIZE = 64
CLASSES = ["functional", "defective"]
ADMIN_TOKEN = "test-admin-token"
# A decision rule on "defective" with a review band, as the export stage derives one on validation.
RULE = DecisionRule(positive=(1,), lower=0.2, upper=0.6, threshold=0.4)


def export_model(
    path: Path,
    head_seed: int,
    rule: DecisionRule | None = None,
    ood_images: tuple[list[Path], list[Path]] | None = None,
) -> Path:
    """Export Lite0 with ImageNet weights and a head seeded by ``head_seed``, with full transferkit
    metadata (and a ``decision`` output when ``rule`` is given). With ``ood_images`` (fit, reference)
    it also has the real ``embedding`` and ``ood_score`` outputs, as evaluate makes them: a
    Mahalanobis reference fitted on the first images, its threshold (``rule``'s, or ``RULE``'s)
    and the drift reference measured on the second."""
    from transferkit.contract import DRIFT_REFERENCE
    from transferkit.ood import fit_reference
    from transferkit.preprocessing import load_for_model

    torch.manual_seed(head_seed)
    model = build_classifier("efficientnet_lite0", "imagenet", num_classes=len(CLASSES), dropout=0.2).eval()
    meta = {
        "class_names": CLASSES,
        "image_size": IMAGE_SIZE,
        "resize": "bilinear",
        "architecture": "efficientnet_lite0",
        "weights": "imagenet",
        "strategy": "linear",
        "augment_preset": "orientation_free",
        "calibration": {"method": "none", "temperature": 1.0, "val_nll_before": 0.7, "val_nll_after": 0.7},
        "source": "elpv",
        "params_hash": f"seed{head_seed}",
        "data_hash": "test",
    }
    metadata = model_metadata(meta, dict.fromkeys(HEADLINE_METRICS, 0.5), "fp32")
    ood = None
    if ood_images is not None:
        fit, held_out = (
            torch.from_numpy(np.stack([load_for_model(p, IMAGE_SIZE, "bilinear") for p in paths]))
            for paths in ood_images
        )
        with torch.no_grad():
            embedded = [model.pool(model.feature_map(images)).flatten(1) for images in (fit, held_out)]
            confidence = torch.softmax(model.head(embedded[1]), dim=1).max(1).values.numpy()
        fit_embeddings, held_embeddings = (e.double().numpy() for e in embedded)
        ood = fit_reference("mahalanobis", fit_embeddings, np.zeros(len(fit_embeddings), int), 0, 0, 0)
        scores = ood.score(held_embeddings)
        ood = ood.with_threshold(scores, 0.95)
        rule = dataclasses.replace(rule or RULE, ood_threshold=ood.threshold)
        sample = {"confidence": confidence, "ood_score": scores}
        metadata[DRIFT_REFERENCE] = {"split": "val", **{k: sorted(map(float, v)) for k, v in sample.items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(export_onnx(model, IMAGE_SIZE, 17, metadata, rule=rule, ood=ood))
    return path


def as_older_export(source: Path, dest: Path) -> Path:
    """``source`` as an export from before the optional outputs: only ``logits`` and ``probabilities``
    in the graph and in the metadata, no ``heatmap`` key (the graph's unused nodes may stay)."""
    import onnx

    proto = onnx.load(str(source))
    kept = [output for output in proto.graph.output if output.name in OUTPUT_NAMES]
    del proto.graph.output[:]
    proto.graph.output.extend(kept)
    props = {entry.key: entry.value for entry in proto.metadata_props if entry.key != METADATA_PREFIX + HEATMAP_OUTPUT}
    props[METADATA_PREFIX + "outputs"] = json.dumps(list(OUTPUT_NAMES))
    del proto.metadata_props[:]
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(dest))
    return dest
