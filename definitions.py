"""Subterra's Dagster definitions: every asset, check, job, sensor and resource, assembled here."""

import dagster as dg

from assets import COMPILE_ASSETS
from jobs import compile_workflow
from resources import SettingsResource, StoreResource, TeacherResource
from sensors import workflow_files_sensor


def build_definitions(data_dir: str = "", db_path: str = "") -> dg.Definitions:
    return dg.Definitions(
        assets=COMPILE_ASSETS,
        jobs=[compile_workflow],
        sensors=[workflow_files_sensor],
        resources={
            "settings": SettingsResource(data_dir=data_dir),
            "store": StoreResource(db_path=db_path),
            "teacher": TeacherResource(),
            "pipes_subprocess_client": dg.PipesSubprocessClient(),
        },
    )


defs = build_definitions()
