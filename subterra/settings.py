"""Where Subterra keeps its files. Everything lives under one data folder (``./data`` by default,
``SUBTERRA_DATA_DIR`` to move it): workflow definitions in, database and models out."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    data_dir: Path

    @classmethod
    def from_env(cls) -> "Settings":
        return cls(Path(os.environ.get("SUBTERRA_DATA_DIR", "data")).resolve())

    @property
    def db_path(self) -> Path:
        return self.data_dir / "subterra.duckdb"

    @property
    def workflows_dir(self) -> Path:
        return self.data_dir / "workflows"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def runs_dir(self) -> Path:
        return self.data_dir / "runs"

    @property
    def claude_dir(self) -> Path:
        """Claude's answers, kept as they arrive (``claude_spool``)."""
        return self.data_dir / "claude"

    def workflow_file(self, workflow: str) -> Path:
        return self.workflows_dir / f"{workflow}.yaml"

    def model_dir(self, workflow: str, short_hash: str) -> Path:
        return self.models_dir / workflow / short_hash

    def run_dir(self, workflow: str, short_hash: str) -> Path:
        return self.runs_dir / workflow / short_hash
