"""The one retry condition the flows' I/O tasks share: retry what may pass on retry
(``orchestration.TransientError``: a data pull, a promotion lock, a server that did not answer),
never a deterministic failure."""

from __future__ import annotations

from transferkit.orchestration import TransientError


def retry_transient(task, task_run, state) -> bool:
    """Prefect's ``retry_condition_fn``: True only for a ``TransientError``."""
    try:
        state.result()
    except TransientError:
        return True
    except Exception:
        return False
    return False
