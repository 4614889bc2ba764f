"""What every flow is asked to work on: a project folder, its params file and dotted overrides."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class ProjectRequest(BaseModel):
    """Typed flow parameters; unknown keys and wrong types are refused at submission."""

    model_config = ConfigDict(extra="forbid")

    project_dir: str = "."
    params_file: str = "params.yaml"
    overrides: dict[str, Any] = {}
