"""The README's one-machine loop, run as the README gives it, on a checkout like a user's.

The fenced bash block between README.md's `one-machine-loop` markers goes through `bash -e` as it
is written, with one substitution: the port 4200 becomes a free one, so the test can run beside a
real server. Its `&` lines (server, worker) are background jobs of that bash; the test kills their
process group at the end. Everything is real and on 127.0.0.1: the Prefect server, a process
worker, the pull step's git clone, DVC, the shrunk training run and the registry it promotes into.

The checkout is the project's own files (dvc.yaml, .dvc/config with its relative `../dvc-remote`,
prefect.yaml, flows, src) with the shrunk params, its data in the DVC cache and its pointer
committed as `make pipeline` leaves them, and an `origin` that cannot be reached, as a fresh
clone's GitHub remote is not from here. No test-only remote or config: what it needs the block
must provide.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import REPO, commit_tracked_data, make_project, run_tool, tool_env
from transferkit import orchestration
from transferkit.errors import DataError
from transferkit.registry import Registry
from transferkit.run_workspace import HOME_ENV, deployment_home, use_home_storage

pytestmark = pytest.mark.slow

START, END = "<!-- one-machine-loop:start -->", "<!-- one-machine-loop:end -->"
PORT = "4200"  # the README's port, replaced by a free one
UNREACHABLE_ORIGIN = "https://github.invalid/transferkit.git"


def readme_block() -> str:
    """The bash block between the README's markers, exactly as a reader copies it."""
    text = (REPO / "README.md").read_text()
    assert START in text and END in text, f"README.md lost the markers {START} ... {END}"
    between = text.split(START, 1)[1].split(END, 1)[0]
    block = re.fullmatch(r"\s*```bash\n(.*?)```\s*", between, re.DOTALL)
    assert block, "the README's one-machine loop is no longer one ```bash block between its markers"
    return block.group(1)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _stop(group: subprocess.Popen[bytes]) -> None:
    """SIGTERM the block's process group (bash and its background server and worker), SIGKILL what
    is left after 5 s. The flow run is over by then; a Prefect worker's graceful shutdown outlasted
    30 s on a loaded 2-core machine, and the teardown is not what this test checks."""
    for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 30)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group.pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                os.killpg(group.pid, 0)  # anyone left in the group?
            except ProcessLookupError:
                group.wait(timeout=30)
                return
            time.sleep(0.2)
    group.wait(timeout=30)


def users_checkout(tmp_path: Path, elpv_subset: Path) -> Path:
    project = make_project(tmp_path, elpv_subset, shared_dvc_cache=True)
    for name in ("flows", "deploy"):
        shutil.copytree(REPO / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "prefect.yaml", project / "prefect.yaml")
    commit_tracked_data(project)  # `dvc add`: the data in the DVC cache, its pointer committed
    run_tool(["git", "remote", "add", "origin", UNREACHABLE_ORIGIN], project)
    return project


def test_the_readme_one_machine_loop_promotes_a_model_on_a_fresh_checkout(tmp_path: Path, elpv_subset) -> None:
    project = users_checkout(tmp_path, elpv_subset)
    block = readme_block()
    assert PORT in block, "the test gives the README's server a free port by replacing 4200"
    port = str(_free_port())
    env = {key: value for key, value in tool_env().items() if not key.startswith("TRANSFERKIT_")}
    env.pop("PREFECT_API_URL", None)  # the block says where the server is
    log_path = tmp_path / "block.log"
    with log_path.open("wb") as log:  # a file, not a pipe: the background jobs keep their stdout open
        block_run = subprocess.Popen(
            ["bash", "-e", "-x", "-c", block.replace(PORT, port)],
            cwd=project,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # one process group: bash and its `&` jobs
        )
    api = f"http://127.0.0.1:{port}/api"
    try:
        try:
            returncode = block_run.wait(timeout=600)
        except subprocess.TimeoutExpired:
            returncode = None
        output = log_path.read_text(errors="replace")
        assert returncode == 0, f"the README block exited {returncode}:\n{output[-6000:]}"
        assert "Executing deployment step: git_clone" in output  # the run executed a clone of the commit

        # the -gpu deployments, as docs/orchestration.md deploys them: registration only (no cluster)
        server_env = {**env, "PREFECT_HOME": str(project / ".prefect"), "PREFECT_API_URL": api}
        pool = ["transferkit-gpu", "--type", "kubernetes"]
        template = ["--base-job-template", "deploy/kubernetes-gpu-job-template.json"]
        run_tool(["prefect", "work-pool", "create", *pool, *template], project, env=server_env, timeout=120)
        image_env = {**server_env, "TRANSFERKIT_IMAGE": "registry.example/transferkit:test"}
        run_tool(["prefect", "--no-prompt", "deploy", "--name", "*-gpu"], project, env=image_env, timeout=120)
        registered = {d["name"]: d for d in httpx.post(f"{api}/deployments/filter", json={}, timeout=30).json()}
    finally:
        _stop(block_run)

    assert set(registered) == {f"{n}{s}" for n in ("nightly-retrain", "strategy-study", "tune") for s in ("", "-gpu")}
    gpu, local = registered["tune-gpu"], registered["nightly-retrain"]
    assert gpu["work_pool_name"] == "transferkit-gpu"
    assert gpu["job_variables"]["image"] == "registry.example/transferkit:test"
    clone = "prefect.deployments.steps.git_clone"
    assert gpu["pull_steps"][0][clone]["repository"] == UNREACHABLE_ORIGIN  # a pod clones the remote
    folder = str(project.resolve())
    assert local["pull_steps"][0][clone]["repository"] == folder  # this machine clones this folder
    assert local["job_variables"]["env"] == {"TRANSFERKIT_HOME": folder}  # and keeps its state here

    # the promotion is in the checkout's registry (`transferkit registry list` there shows it) ...
    registry = Registry(project / "models/registry", "elpv-defects")
    assert registry.production() == 1
    head = run_tool(["git", "rev-parse", "HEAD"], project).stdout.strip()
    assert registry.show(1)["lineage"]["git_commit"] == head  # the run trained the deployed commit
    # ... and the run changed nothing git tracks
    assert run_tool(["git", "status", "--porcelain"], project).stdout == ""


def test_a_deployments_clone_takes_the_data_from_its_home_checkout(tmp_path: Path, monkeypatch) -> None:
    """The pull step's clone with the repository's own .dvc/config: the data comes from the home
    checkout's DVC cache, else from its `../dvc-remote` (resolved in the home, not in the clone),
    else the error names the fix."""
    home = tmp_path / "checkout"
    (home / ".dvc").mkdir(parents=True)
    for name in ("config", ".gitignore"):
        shutil.copy(REPO / ".dvc" / name, home / ".dvc" / name)
    (home / "data/raw/elpv").mkdir(parents=True)
    (home / "data/raw/elpv/cell.png").write_bytes(b"not really a png")
    run_tool(["git", "init", "-q"], home)
    commit_tracked_data(home)
    monkeypatch.setenv(HOME_ENV, str(home))

    def fresh_clone(name: str) -> Path:
        run_tool(["git", "clone", "-q", str(home), name], tmp_path)
        clone = tmp_path / name
        use_home_storage(clone, deployment_home(clone))
        return clone

    assert deployment_home(home) == home.resolve()
    # (from the home's cache: the README loop's test above)
    run_tool(["dvc", "push", "-q"], home)  # to the committed remote, `../dvc-remote`: home's own
    assert (home / "dvc-remote").is_dir()
    shutil.rmtree(home / ".dvc/cache")
    clone = fresh_clone("from-remote")
    assert not (clone / "dvc-remote").exists()
    orchestration.sync_data(clone, "data/raw/elpv")
    assert (clone / "data/raw/elpv/cell.png").read_bytes() == b"not really a png"

    shutil.rmtree(home / ".dvc/cache")
    shutil.rmtree(home / "dvc-remote")
    with pytest.raises(DataError, match=r"nor does the DVC cache .*checkout/\.dvc/cache: run `dvc push`"):
        orchestration.sync_data(fresh_clone("from-nowhere"), "data/raw/elpv")
