"""Subterra's Dagster definitions: every asset, check, job, sensor and resource, assembled here."""

import os
from pathlib import Path

import dagster as dg

from subterra_dagster.assets import LADDER_ASSETS
from subterra_dagster.jobs import compile_workflow, ladder_workflow
from subterra_dagster.resources import (ClaudeResource, RecompileResource, SettingsResource, StoreResource, TeacherResource,
                       training_process_client)
from subterra_dagster.sensors import incremental_fallback_sensor, workflow_files_sensor

# runs report their progress in the run log; Hugging Face's progress bars ("Loading weights",
# "Writing model shards") and datasets' would only reach the daemon's console (read at import)
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # "Dropping fully masked examples", "Map"


def build_definitions(data_dir: str = "", db_path: str = "", recompile: str = "") -> dg.Definitions:
    """Everything, with the data folder and database given (default: ``SUBTERRA_DATA_DIR`` or ``./data``,
    and the database inside the data folder), and how the sensor recompiles a changed workflow
    (default: ``SUBTERRA_RECOMPILE`` or ``incremental``; ``full`` retrains from scratch)."""
    if data_dir and not db_path:
        db_path = str(Path(data_dir) / "subterra.duckdb")
    return dg.Definitions(
        assets=LADDER_ASSETS,
        jobs=[compile_workflow, ladder_workflow],
        sensors=[workflow_files_sensor, incremental_fallback_sensor],
        resources={
            "settings": SettingsResource(data_dir=data_dir),
            "store": StoreResource(db_path=db_path),
            "teacher": TeacherResource(),
            "claude": ClaudeResource(),
            "recompile": RecompileResource(mode=recompile),
            "pipes_subprocess_client": training_process_client(),
        },
    )


defs = build_definitions()
