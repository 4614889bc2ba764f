"""The Dask task runner that study cells and tuning trials fan out on.

A ``LocalCluster`` of single-threaded worker processes by default (one per parallel job, the
cores shared between them), or an existing cluster the user operates (``tcp://HOST:8786``).
Worker processes, not threads: a cell owns its PyTorch thread pool, and a worker that dies (out
of memory, killed) takes only its own cell down; Dask reruns that task on another worker.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dask
from distributed import LocalCluster
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect_dask import DaskTaskRunner

from transferkit.errors import ConfigError


def dask_task_runner(workers: int, address: str | None = None) -> DaskTaskRunner:
    """A runner on ``address`` when given, else on a fresh local cluster of ``workers`` processes."""
    if address:
        if not address.startswith(("tcp://", "tls://", "ws://", "wss://", "inproc://", "ucx://")):
            raise ConfigError(
                f"--dask-address {address!r} is not a Dask scheduler address; expected e.g. tcp://HOST:8786"
            )
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(
        cluster_class=local_cluster,
        cluster_kwargs={
            "n_workers": workers,
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": None,  # no bokeh dashboard (and no port) on a batch run
            "silence_logs": logging.ERROR,
        },
    )


# Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=64 KiB (so that pandas-style workloads
# return memory). PyTorch training then spends about half its CPU time in the kernel re-faulting
# freed pages: a finetune cell ran 2x slower than in-process (benchmarks/dask_overhead.py).
# Unset, glibc's own adaptive threshold applies, as in any other process.
WORKER_ENVIRON = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}


def local_cluster(**kwargs: Any) -> LocalCluster:
    """A ``LocalCluster`` whose worker processes keep glibc's default memory trimming."""
    with dask.config.set(WORKER_ENVIRON):
        return LocalCluster(**kwargs)


def threads_per_job(workers: int, address: str | None) -> int | None:
    """PyTorch threads per cell: the local cores split between the local workers; a remote
    cluster's workers keep their own setting (None)."""
    if address or workers == 1:
        return None
    return max(1, (os.cpu_count() or 1) // workers)


@contextmanager
def shared_prefect_api() -> Iterator[None]:
    """Make the Dask workers report to this process's Prefect API.

    With no ``PREFECT_API_URL`` configured, Prefect starts a temporary server per process, so each
    worker would start its own (seconds each, and the task runs scattered over databases nobody
    sees). This starts the one this process would use anyway and hands its URL to the workers
    through the settings prefect-dask ships with every task.
    """
    if PREFECT_API_URL.value():
        yield
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start()
    with temporary_settings({PREFECT_API_URL: server.api_url}):
        yield
