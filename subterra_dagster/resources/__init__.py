"""Resources: every outside system the assets touch."""

from subterra_dagster.resources.claude import ClaudeResource
from subterra_dagster.resources.pipes import launch_training, training_process_client
from subterra_dagster.resources.recompile import RecompileResource
from subterra_dagster.resources.settings import SettingsResource
from subterra_dagster.resources.store import StoreResource
from subterra_dagster.resources.teacher import TeacherResource

__all__ = ["ClaudeResource", "RecompileResource", "SettingsResource", "StoreResource", "TeacherResource",
           "launch_training", "training_process_client"]
