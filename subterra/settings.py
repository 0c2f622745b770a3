"""Where Subterra keeps its files. Everything lives under one data folder (``./data`` by default,
``SUBTERRA_DATA_DIR`` to move it): workflow definitions in, database and models out.

A file name is only ever built from a workflow id (``[a-z][a-z0-9_]{0,63}``) and a content hash
(hex; a repair round's candidate: ``HASH-repairN``): anything else (``../x``, ``/etc``, an empty name; a Dagster partition key is typed by
whoever adds the partition) is refused with ``ValueError``, so no path leaves the data folder.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from subterra.workflow import ID

# a content hash; a training of that content (its fingerprint's first 8 digits); a repair round of either
HASH = re.compile(r"[0-9a-f]{1,64}(-[0-9a-f]{8})?(-repair[1-9][0-9]{0,3})?")


def checked_id(workflow: str) -> str:
    """``workflow`` if it is a workflow id; ``ValueError`` otherwise (it would name a path)."""
    if not isinstance(workflow, str) or not ID.fullmatch(workflow):
        raise ValueError(f"{workflow!r} is not a workflow id ([a-z][a-z0-9_]{{0,63}}); no file is named after it")
    return workflow


def _checked_hash(short_hash: str) -> str:
    if not isinstance(short_hash, str) or not HASH.fullmatch(short_hash):
        raise ValueError(f"{short_hash!r} is not a content hash (hex, HASH-TRAINING, or either -repairN); no folder is named after it")
    return short_hash


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
    def natural_dir(self) -> Path:
        """People's conversations per workflow (``subterra.natural``): test/ and validation/."""
        return self.data_dir / "natural"

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
        return self.workflows_dir / f"{checked_id(workflow)}.yaml"

    def model_dir(self, workflow: str, short_hash: str) -> Path:
        return self.models_dir / checked_id(workflow) / _checked_hash(short_hash)

    def run_dir(self, workflow: str, short_hash: str) -> Path:
        return self.runs_dir / checked_id(workflow) / _checked_hash(short_hash)

    def compile_lock(self, workflow: str) -> Path:
        """The lock held by ``subterra compile`` of this workflow."""
        return self.data_dir / "locks" / f"{checked_id(workflow)}.compile.lock"
