"""gate: stop the pipeline (non-zero exit) when the evaluated model breaks a quality rule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transferkit.config import Params
from transferkit.errors import GateFailed
from transferkit.evaluation.gate import check_gate, gate_report, load_baseline
from transferkit.io import read_json, write_json
from transferkit.stages.common import console, main


def run(params: Params) -> dict[str, Any]:
    metrics = read_json(Path(params.paths.evaluate) / "metrics.json")
    results = check_gate(metrics, params.gate, load_baseline(params.gate.baseline_metrics))
    report = gate_report(results)
    write_json(params.paths.gate_report, report)
    for result in results:
        console.print(("[green]pass[/] " if result.passed else "[red]FAIL[/] ") + result.describe(), highlight=False)
    failed = [r for r in results if not r.passed]
    if failed:
        raise GateFailed(
            "the model did not pass the quality gate, so it will not be exported:\n"
            + "\n".join(f"  - {r.describe()}" for r in failed)
            + "\nImprove the model (train.*) or, deliberately, relax gate.* in params.yaml."
        )
    return report


if __name__ == "__main__":
    main(run)
