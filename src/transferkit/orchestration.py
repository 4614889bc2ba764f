"""The steps the Prefect flow runs, as plain functions (the flow in flows/ only adds Prefect).

Stages run through `dvc repro <stage>`, so DVC decides what is stale, skips what is not, and
`dvc.lock` stays the record of what ran; the flow never has a second code path.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from transferkit.config import Params, load_params, parse_params, set_dotted
from transferkit.data.reviewed import DROP_SUFFIX
from transferkit.errors import DataError, ExportError, GateFailed, TransferkitError
from transferkit.evaluation.gate import RuleResult, check_gate
from transferkit.io import atomic_write, read_json, sha256_file
from transferkit.registry import METRICS, Registry
from transferkit.review_drop import DataDrop
from transferkit.stages.common import RELIABILITY_PNG

STAGES = ("prepare", "train", "evaluate", "gate", "export")


class TransientError(TransferkitError):
    """An I/O step failed in a way that may pass on retry (remote storage, network, locks)."""


def tool_env() -> dict[str, str]:
    """This interpreter's bin first on PATH, so dvc.yaml's `python -m transferkit...` is ours."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("DVC_NO_ANALYTICS", "1")
    return env


def _run_python(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` in ``project``, importing transferkit from ``project``'s own ``src`` when it has
    one, so a run workspace executes the code it checked out, not the developer's working copy."""
    env = tool_env()
    if (project / "src" / "transferkit").is_dir():
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(project / "src"), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, *args], cwd=project, env=env, capture_output=True, text=True)


def run_dvc(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return _run_python(project, "-m", "dvc", *args)


def export_variant(run_dir: Path, params: Params, precision: str) -> dict[str, Path]:
    """Export the run's model again at ``precision`` (verified like any export) beside the main one.

    Not a DVC stage: a variant exists only to be registered next to the main model. Returns the
    registry's names for its files (``int8/model.onnx``, ...).
    """
    out = f"{params.paths.export}-{precision}"
    overrides = {"export.precision": precision, "paths.export": out, "paths.export_report": f"{out}/export.json"}
    variant_params = run_dir / f"params-{precision}.yaml"
    raw = params.model_dump(mode="json")
    for dotted, value in overrides.items():
        set_dotted(raw, dotted, value)
    raw = parse_params(raw, str(variant_params)).model_dump(mode="json")  # validated before it is written
    with atomic_write(variant_params, "w") as handle:
        YAML(typ="safe").dump(raw, handle)
    result = _run_python(run_dir, "-m", "transferkit.stages.export", "--params", variant_params.name)
    if result.returncode != 0:
        raise ExportError(
            f"the {precision} variant failed its export check; nothing was promoted:\n{result.stderr[-2000:]}"
        )
    files = ("model.onnx", "model_card.md", RELIABILITY_PNG, "export.json")
    return {f"{precision}/{name}": run_dir / out / name for name in files}


def apply_overrides(params_file: Path, overrides: dict[str, Any]) -> Params:
    """Validate dotted overrides, then write them into params.yaml (as `dvc exp run -S` does).

    The file is edited round-trip (comments kept) and only when a value really changes, so an
    unchanged run leaves params.yaml, and therefore DVC's view of the pipeline, untouched.
    """
    params = load_params(params_file, overrides)
    text = params_file.read_text()
    yaml = YAML()
    document = yaml.load(text)
    for dotted, value in overrides.items():
        set_dotted(document, dotted, value)
    if document != YAML(typ="safe").load(text):
        with atomic_write(params_file, "w") as handle:
            yaml.dump(document, handle)
    return params


def sync_data(project: Path, data_path: str) -> str:
    """Make sure the DVC-tracked raw data is present and recorded; return its DVC hash.

    Missing data is checked out from the DVC cache, or pulled into it from the configured remote
    (`dvc pull` does both); a changed or new data folder (a new data drop) is `dvc add`-ed, so the
    new version shows up in git and in `dvc.lock`.
    """
    data = project / data_path
    pointer = data.with_name(data.name + ".dvc")
    if not data.exists():
        if not pointer.is_file():
            raise DataError(
                f"{data_path} is missing and not DVC-tracked: run `transferkit data elpv` for the embedded "
                f"dataset, or put your images there and `dvc add {data_path}`"
            )
        pulled = run_dvc(project, "pull", str(pointer.relative_to(project)))
        if pulled.returncode != 0:
            detail = (pulled.stderr or pulled.stdout).strip().splitlines()[-1:] or ["no output"]
            output = (pulled.stderr + pulled.stdout).lower()
            if "no remote" in output:
                raise DataError(
                    f"{data_path} is missing and no DVC remote is configured: `dvc remote add -d NAME URL`, "
                    f"then `dvc pull {pointer.name}`"
                )
            if "missing-files" in output:  # the remote answered: it does not hold this version (no retry helps)
                md5 = YAML(typ="safe").load(pointer.read_text())["outs"][0]["md5"]
                cache = run_dvc(project, "cache", "dir").stdout.strip() or ".dvc/cache"
                raise DataError(
                    f"the DVC remote does not hold the version of {data_path} that {pointer.name} names ({md5}), "
                    f"nor does the DVC cache {cache}: run `dvc push` where that data is, or `dvc add {data_path}` "
                    "there and commit the pointer, then rerun"
                )
            raise TransientError(f"`dvc pull {pointer.name}` failed: {detail[0]}")
    else:
        status = run_dvc(project, "status", "--json", str(pointer.relative_to(project))) if pointer.is_file() else None
        if status is None or status.stdout.strip() not in ("", "{}"):
            added = run_dvc(project, "add", data_path)
            if added.returncode != 0:
                if "unable to acquire lock" in added.stderr.lower():  # another run's DVC holds the project
                    raise TransientError(f"`dvc add {data_path}` waits for another DVC process: {added.stderr.strip()}")
                raise DataError(f"`dvc add {data_path}` failed: {added.stderr.strip()}")
    return str(YAML(typ="safe").load(pointer.read_text())["outs"][0]["md5"])


def reviewed_drops(home: Path, params: Params) -> list[str]:
    """The reviewed drops (data/reviewed.py) in ``home``'s ``paths.reviewed``, relative to ``home``."""
    folder = home / params.paths.reviewed
    if not folder.is_dir():
        return []
    return sorted(
        p.relative_to(home).as_posix() for p in folder.iterdir() if p.is_dir() and p.name.endswith(DROP_SUFFIX)
    )


def ingest_reviewed(home: Path, drop: str) -> str:
    """Version a reviewed drop for a run: mark every label so far as ingested (the server's count
    of new labels, and with it the ``labels.ready`` event, starts again from there; the marker is
    in the version), then ``dvc add`` it. Its DVC hash, for the run's lineage."""
    DataDrop.at(home / drop).mark_ingested()
    return sync_data(home, drop)


def repro_stage(project: Path, stage: str, params: Params) -> str:
    """`dvc repro <stage>`; returns DVC's log. A failed gate becomes GateFailed with its rules."""
    result = run_dvc(project, "repro", stage)
    log = result.stdout + result.stderr
    if result.returncode == 0:
        return log
    if stage == "gate" and (project / params.paths.gate_report).is_file():
        failed = [RuleResult(**rule) for rule in read_json(project / params.paths.gate_report)["rules"]]
        _raise_failed_rules("the candidate did not pass the gate; nothing was promoted", failed)
    raise TransferkitError(f"`dvc repro {stage}` failed:\n{log[-3000:]}")


def stages_run(logs: list[str]) -> list[str]:
    """The stages DVC really ran (not skipped or restored from its run cache), in order."""
    ran = re.findall(r"Running stage '([^']+)'", "\n".join(logs))
    return list(dict.fromkeys(ran))


def _raise_failed_rules(headline: str, results: list[RuleResult]) -> None:
    failed = [r for r in results if not r.passed]
    if failed:
        raise GateFailed(headline + ":\n" + "\n".join(f"  - {r.describe()}" for r in failed))


def candidate_files(project: Path, params: Params) -> dict[str, Path]:
    export = project / params.paths.export
    return {
        "model.onnx": export / "model.onnx",
        "model_card.md": export / "model_card.md",
        RELIABILITY_PNG: export / RELIABILITY_PNG,
        METRICS: project / params.paths.evaluate / "metrics.json",
        "gate.json": project / params.paths.gate_report,
    }


def promote_candidate(
    run_dir: Path, params: Params, registry: Registry, record: dict[str, Any], variants: dict[str, Path] | None = None
) -> tuple[int, bool]:
    """Register the exported model of ``run_dir`` and make it production; returns (version, is_new).

    A candidate byte-identical to production (a rerun with nothing changed) is not registered
    again: the registry, like DVC, only records real changes. When production moved since the
    run's gate compared against it (another run promoted meanwhile), the candidate must still be
    no worse than the production of this moment. ``record`` (git commit, data hash, overrides)
    goes into the lineage with the effective params; ``variants`` (``export_variant``'s files)
    are registered beside the main model.
    """
    files = candidate_files(run_dir, params)
    production = registry.production()
    if production is not None:
        current = registry.version_dir(production) / "model.onnx"
        if sha256_file(current) == sha256_file(files["model.onnx"]):
            return production, False
        if params.gate.baseline_metrics != str(registry.version_dir(production) / METRICS):
            results = check_gate(read_json(files[METRICS]), params.gate, registry.production_metrics())
            moved = f"production moved to v{production} during this run and the candidate is worse than it"
            _raise_failed_rules(moved, results)
    lineage = {
        **record,
        "dvc_lock_sha256": hashlib.sha256((run_dir / "dvc.lock").read_bytes()).hexdigest(),
        "model_sha256": sha256_file(files["model.onnx"]),
        "params": params.model_dump(mode="json"),
        "precision": params.export.precision,
        "variants": sorted({name.split("/")[0] for name in variants or {}}),
    }
    version = registry.register({**files, **(variants or {})}, lineage)
    registry.promote(version)
    return version, True


def run_record_markdown(record: dict[str, Any]) -> str:
    """What a run ran: the revision, the data version and its overrides of the committed params."""
    overrides = "\n".join(f"| `{key}` | `{value!r}` |" for key, value in sorted(record["overrides"].items()))
    return "\n".join(
        [
            f"Git revision `{record['git_commit']}`, data `{record['data_hash']}`.",
            "",
            "| override | value |" if overrides else "No overrides: the committed params.",
            *(["|---|---|", overrides] if overrides else []),
        ]
    )


def comparison_markdown(candidate: dict[str, Any], production: dict[str, Any] | None, version: int) -> str:
    """Markdown table of the candidate's test metrics next to production's."""
    rows = ["| metric | candidate | production |", "|---|---|---|"]
    for key in ("accuracy", "macro_f1", "balanced_accuracy", "roc_auc", "ece", "slice_gap"):
        before = "-" if production is None or production.get(key) is None else f"{production[key]:.4f}"
        value = "-" if candidate.get(key) is None else f"{candidate[key]:.4f}"
        rows.append(f"| {key} | {value} | {before} |")
    return "\n".join([f"## Registry version v{version}", "", *rows])
