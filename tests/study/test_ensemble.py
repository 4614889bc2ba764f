"""`transferkit ensemble`: real models trained on the shrunk config, one shared trunk in one ONNX
graph with test-time augmentation, served through the usual contract; models that do not share
a trunk are refused with nothing written."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.helpers import REPO, run_tool, shrunk_params
from transferkit.config import Params
from transferkit.contract import read_metadata
from transferkit.data.cache import PreparedData
from transferkit.serving.onnx_model import OnnxClassifier
from transferkit.stages import prepare, train
from transferkit.study.recipes import ensemble_tries
from transferkit.training.checkpoint import MODEL

pytestmark = pytest.mark.slow

TRANSFERKIT = [sys.executable, "-m", "transferkit.cli"]


def trained(params: Params, name: str, weights: str = "imagenet", **train_updates: object) -> Path:
    """Train one model of ``params`` with ``weights`` and ``train_updates`` into its own folder; its checkpoint."""
    out = Path(params.paths.train).parent / name
    updated = params.model_copy(
        update={
            "train": params.train.model_copy(update=train_updates),
            "paths": params.paths.model_copy(
                update={"train": str(out), "checkpoints": str(out / "ckpt"), "train_reports": str(out / "reports")}
            ),
            "model": params.model.model_copy(update={"weights": weights}),
        }
    )
    train.run(updated)
    return out / MODEL


def ensemble_command(tmp_path: Path, params: Params, members: list[Path], *options: str) -> list[str]:
    """`transferkit ensemble` of ``members`` on ``params`` (written to a file), into tmp_path/ensemble."""
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params.model_dump(mode="json")))
    out = ["--out", str(tmp_path / "ensemble")]
    return [*TRANSFERKIT, "ensemble", *map(str, members), "-p", str(params_file), *out, *options]


def test_tops_on_one_trunk_export_as_one_graph_with_tta(tmp_path: Path, elpv_subset: Path) -> None:
    params = shrunk_params(tmp_path, data__path=str(elpv_subset), train__epochs=1)
    prepare.run(params)
    members = [trained(params, f"seed{seed}", seed=seed) for seed in (0, 1)]
    members.append(trained(params, "linear", strategy="linear"))  # all units frozen: shares the finetune trunk
    run = run_tool(ensemble_command(tmp_path, params, members, "--tta", "--record", str(tmp_path / "tries")), REPO)
    out = tmp_path / "ensemble"
    report = json.loads((out / "ensemble.json").read_text())
    assert report["shared_cut"] == params.train.frozen_units and report["tta_views"] == list(range(8))
    assert len(report["members_alone"]) == 3 and report["parity"]["passed"]
    assert "ensemble + TTA: test accuracy" in run.stderr

    # Kept as a recipe try: the members' recipes and seeds, read back from their checkpoints.
    (kept,) = ensemble_tries(tmp_path / "tries")
    assert kept["member_seeds"] == [0, 1, 0] and kept["tta_views"] == 8
    assert [m["train"]["strategy"] for m in kept["members"]] == ["finetune", "finetune", "linear"]
    assert kept["metrics"]["accuracy"] == report["ensemble"]["accuracy"]
    assert str(tmp_path) not in (tmp_path / "tries" / "ensemble.json").read_text()  # no machine paths

    # The graph keeps the contract: the server's classifier loads it, warms up, and its predictions
    # on the test split are the ones the report measured.
    model = OnnxClassifier(out / "model.onnx", device="cpu")
    model.warm_up()
    assert read_metadata(model.path)["ensemble"]["tta_views"] == list(range(8))
    prepared = PreparedData.load(params.paths.prepared)
    test = prepared.indices("test")
    accuracy = float((model.logits(prepared.images_chw(test).numpy()).argmax(1) == prepared.labels(test)).mean())
    assert np.isclose(accuracy, report["ensemble"]["accuracy"])


def test_models_without_a_common_trunk_are_refused(tmp_path: Path, elpv_subset: Path) -> None:
    params = shrunk_params(tmp_path, data__path=str(elpv_subset), train__epochs=1)
    prepare.run(params)
    # Frozen units from random init: the same cut as the first model, but not the same trunk.
    members = [trained(params, "imagenet"), trained(params, "random", weights="none")]
    result = run_tool(ensemble_command(tmp_path, params, members), REPO, False)
    assert result.returncode == 2 and "member 1 differs from member 0" in result.stderr
    assert f"below the shared cut {params.train.frozen_units}" in result.stderr
    assert not (tmp_path / "ensemble").exists()
