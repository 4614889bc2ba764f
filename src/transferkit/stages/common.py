"""What every stage shares: the entry point that turns errors into messages, and the thread count."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

import torch

from transferkit.config import Params, load_params
from transferkit.errors import TransferkitError
from transferkit.reporting import console, report_error

__all__ = ["ERRORS_PNG", "RELIABILITY_PNG", "configure_threads", "console", "main", "run_stage"]

# evaluate's reliability diagram (in paths.evaluate); export puts a copy next to the model card.
RELIABILITY_PNG = "reliability.png"
# evaluate's error gallery, likewise copied beside the model card.
ERRORS_PNG = "errors.png"


def configure_threads(threads: int) -> int:
    """Use ``threads`` (0 = every core) for PyTorch; returns the count used."""
    count = threads or os.cpu_count() or 1
    torch.set_num_threads(count)
    return count


def run_stage(run: Callable[[Params], Any], params_path: str = "params.yaml") -> int:
    """Load params, run the stage, and map user-facing errors to a message and an exit code."""
    try:
        run(load_params(params_path))
    except TransferkitError as error:
        return report_error(error)
    return 0


def main(run: Callable[[Params], Any]) -> None:
    parser = argparse.ArgumentParser(description=(run.__module__ or "").rsplit(".", 1)[-1] + " stage")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    sys.exit(run_stage(run, parser.parse_args().params))
