"""What every stage shares: the entry point that turns errors into messages, and the device."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

import torch

from transferkit.config import Params, load_params
from transferkit.errors import ConfigError, TransferkitError
from transferkit.reporting import console, report_error

__all__ = ["configure_threads", "console", "main", "resolve_device", "run_stage"]


def resolve_device(setting: str) -> torch.device:
    if setting == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


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
