"""A flow run's own workspace: a git worktree of the committed revision, sharing the DVC cache.

Chosen over ``dvc exp run --temp``: a temp experiment starts from the workspace *with* its
uncommitted edits and leaves its outputs in an experiment ref that must be applied to the
workspace to be promoted, whereas a detached worktree of HEAD is exactly "what is committed",
its outputs are plain files the promotion reads, and deleting it leaves no trace. The worktree
sits in ``.dvc/tmp/runs/`` (ignored by DVC's own .gitignore) and uses the project's DVC cache,
so the run cache restores every stage whose inputs did not change, and the project's feature
cache. A run's overrides are written into the worktree's params.yaml only.

A deployed run on this machine executes in a throw-away clone of the checkout it was deployed
from (prefect.yaml's pull step); ``deployment_home`` and ``use_home_storage`` keep its data, DVC
cache, feature cache and registry in that checkout, not in the clone.

A run holds an exclusive ``flock`` on ``<id>.lock`` beside its workspace ``<id>/`` for its
lifetime; the kernel releases it when the process dies, even by SIGKILL, so the next run deletes
workspaces whose lock it can take (left by killed runs) and never one that is in use.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from transferkit.config import Params, load_params
from transferkit.errors import DataError, TransferkitError
from transferkit.orchestration import apply_overrides, run_dvc

RUNS_DIR = Path(".dvc/tmp/runs")
# Set by prefect.yaml's process deployments to the checkout they were deployed from.
HOME_ENV = "TRANSFERKIT_HOME"


def _git(project: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=project, capture_output=True, text=True)
    if result.returncode != 0:
        raise TransferkitError(f"`git {' '.join(args)}` failed in {project}: {result.stderr.strip()}")
    return result.stdout.strip()


def _try_lock(path: Path) -> IO[Any] | None:
    """The open, exclusively locked ``path``, or None when another live process holds it."""
    handle = path.open("a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def remove_stale_workspaces(project: Path) -> list[Path]:
    """Delete workspaces that no live run holds (a killed run's), and git's record of them."""
    removed = []
    runs = project / RUNS_DIR
    for lock_file in sorted(runs.glob("*.lock")) if runs.is_dir() else []:
        lock = _try_lock(lock_file)
        if lock is None:
            continue  # a live run holds it
        workspace = lock_file.with_suffix("")
        shutil.rmtree(workspace, ignore_errors=True)
        lock_file.unlink()
        lock.close()
        removed.append(workspace)
    subprocess.run(["git", "worktree", "prune"], cwd=project, capture_output=True)
    return removed


@dataclass(frozen=True)
class RunWorkspace:
    project: Path
    path: Path
    revision: str
    home: Path  # where the shared caches live: ``project``, or the checkout a deployment's clone came from

    def apply(self, params_file: str, overrides: dict[str, Any]) -> Params:
        """The committed params plus ``overrides``, validated and written into this workspace only.

        The feature cache stays the project's (it is keyed by content, and ``paths`` are no stage's
        params), so a run that retrains does not recompute the frozen trunk's activations.
        """
        committed = load_params(self.path / params_file)
        shared_cache = {"paths.feature_cache": str(self.home / committed.paths.feature_cache)}
        return apply_overrides(self.path / params_file, {**shared_cache, **overrides})

    def link_data(self, data_path: str, origin: Path | None = None) -> None:
        """Check out the current DVC-tracked data version of the project (or of ``origin``, the
        checkout that versioned it: a reviewed drop is added where the server wrote it) from the
        shared cache."""
        pointer = Path(data_path).with_name(Path(data_path).name + ".dvc")
        source = (origin or self.project) / pointer
        if not source.is_file():
            raise DataError(f"{data_path} is not DVC-tracked in {self.project}; run `dvc add {data_path}` there")
        (self.path / pointer).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, self.path / pointer)
        result = run_dvc(self.path, "checkout", str(pointer))
        if result.returncode != 0:
            raise DataError(f"cannot check out {data_path} from the DVC cache: {result.stderr.strip()[-500:]}")


def dvc_cache_dir(project: Path) -> Path:
    """The project's DVC cache folder, whichever config sets it."""
    result = run_dvc(project, "cache", "dir")
    return Path(result.stdout.strip()) if result.returncode == 0 and result.stdout.strip() else project / ".dvc/cache"


def share_dvc_cache(workspace: Path, cache: Path) -> None:
    """Point the workspace's DVC at ``cache``, linking files rather than copying them.

    Hardlinks make the data checkout and the run cache's restores nearly free (measured in
    docs/benchmarks.md); DVC makes linked files read-only and unlinks outputs before a stage
    rewrites them, so the shared cache cannot be edited through the workspace.
    """
    for args in (("cache", "dir", "--local", str(cache)), ("config", "--local", "cache.type", "reflink,hardlink,copy")):
        result = run_dvc(workspace, *args)
        if result.returncode != 0:
            raise TransferkitError(f"cannot share the DVC cache with the run workspace: {result.stderr.strip()}")


def deployment_home(project: Path) -> Path:
    """The checkout whose data, caches and registry a run in ``project`` uses.

    ``$TRANSFERKIT_HOME`` when set, else ``project`` itself (a flow called in a checkout, a run in
    a pod). prefect.yaml's process deployments set it to the folder they were deployed from, whose
    clone the run executes in. An explicit variable rather than "the clone's ``origin`` when that
    is a local folder": a developer's second checkout cloned from a local folder must keep its own
    registry, not promote into the other checkout's.
    """
    home = os.environ.get(HOME_ENV)
    if not home:
        return project.resolve()
    path = Path(home).resolve()
    if not (path / ".dvc").is_dir():
        raise DataError(
            f"${HOME_ENV} is {home}, which is not a DVC project: it names the checkout a deployment was "
            "made from (prefect.yaml sets it); unset it to use the run's own folder"
        )
    return path


def dvc_remotes(project: Path) -> dict[str, str]:
    """The project's DVC remotes and their URLs as DVC resolves them, ``config.local`` winning."""
    result = run_dvc(project, "config", "--list")  # project level first, then local
    remotes = {}
    for line in result.stdout.splitlines():
        key, _, url = line.partition("=")
        if key.startswith("remote.") and key.endswith(".url"):
            remotes[key[len("remote.") : -len(".url")]] = url
    return remotes


def use_home_storage(project: Path, home: Path) -> None:
    """Point a deployment's clone (``project``) at the DVC storage of its home checkout.

    The cache: after `make pipeline` (or `dvc add`) it holds the data version the committed pointer
    names and the run cache of every stage that ran, so a run on this machine needs no `dvc push`
    and restores unchanged stages. The remotes that are local folders: the committed
    `../dvc-remote` is relative to `.dvc/`, so a clone would resolve it to its own empty folder;
    the clone's ``config.local`` gets home's resolved URL instead, so data pushed there is found
    too. Remotes on shared storage (s3://, ssh://) name the same place from anywhere and are left
    as they are, so a pod's clone (no home) pulls from them as before.
    """
    if project.resolve() == home:
        return
    share_dvc_cache(project, dvc_cache_dir(home))
    ours = dvc_remotes(project)
    for name, url in dvc_remotes(home).items():
        if "://" not in url and ours.get(name) != url:
            result = run_dvc(project, "remote", "add", "--local", "--force", name, url)
            if result.returncode != 0:
                raise TransferkitError(f"cannot point the run's DVC remote {name} at {url}: {result.stderr.strip()}")


@contextlib.contextmanager
def run_workspace(project: Path, home: Path | None = None) -> Iterator[RunWorkspace]:
    """A fresh worktree of HEAD for one run, removed afterwards whatever happens; its feature cache
    is ``home``'s (default: ``project``'s), its DVC cache whatever ``project``'s DVC uses."""
    project = project.resolve()
    remove_stale_workspaces(project)
    revision = _git(project, "rev-parse", "HEAD")
    path = project / RUNS_DIR / uuid.uuid4().hex[:12]
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = _try_lock(path.with_suffix(".lock"))  # before the worktree exists, so no cleaner takes it
    try:
        _git(project, "worktree", "add", "--detach", "--force", str(path), revision)
        share_dvc_cache(path, dvc_cache_dir(project))
        yield RunWorkspace(project, path, revision, (home or project).resolve())
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=project, capture_output=True)
        shutil.rmtree(path, ignore_errors=True)
        path.with_suffix(".lock").unlink(missing_ok=True)
        if lock is not None:
            lock.close()
