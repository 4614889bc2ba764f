"""Where benchmark results go: ``benchmarks/results/<name>.json`` and a short ``.md`` table, also printed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transferkit.io import write_json, write_text

RESULTS = Path(__file__).parent / "results"


def write_results(name: str, result: dict[str, Any], markdown_lines: list[str]) -> None:
    write_json(RESULTS / f"{name}.json", result)
    write_text(RESULTS / f"{name}.md", "\n".join(markdown_lines) + "\n")
    print("\n".join(markdown_lines))
