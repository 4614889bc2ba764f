"""Where a flow's command runs: the request's project, or the checkout a deployment came from."""

from __future__ import annotations

from pathlib import Path

import pytest
from flows.run_requests import ProjectRequest

from transferkit.errors import DataError
from transferkit.run_workspace import HOME_ENV


def test_a_deployed_run_works_in_its_home_checkout_not_in_its_clone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clone, home = tmp_path / "clone", tmp_path / "home"
    (home / ".dvc").mkdir(parents=True)
    clone.mkdir()
    request = ProjectRequest(project_dir=str(clone))
    monkeypatch.delenv(HOME_ENV, raising=False)
    assert request.project() == clone.resolve()
    monkeypatch.setenv(HOME_ENV, str(home))
    assert request.project() == home.resolve()
    monkeypatch.setenv(HOME_ENV, str(clone))  # not a DVC project: named, with what to do
    with pytest.raises(DataError, match=rf"\${HOME_ENV} is .*not a DVC project.*unset it"):
        request.project()
