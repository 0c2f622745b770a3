"""Resources: every outside system the assets touch."""

from resources.claude import ClaudeResource
from resources.pipes import launch_training, training_process_client
from resources.recompile import RecompileResource
from resources.settings import SettingsResource
from resources.store import StoreResource
from resources.teacher import TeacherResource

__all__ = ["ClaudeResource", "RecompileResource", "SettingsResource", "StoreResource", "TeacherResource",
           "launch_training", "training_process_client"]
