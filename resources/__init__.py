"""Resources: every outside system the assets touch."""

from resources.recompile import RecompileResource
from resources.settings import SettingsResource
from resources.store import StoreResource
from resources.teacher import TeacherResource

__all__ = ["RecompileResource", "SettingsResource", "StoreResource", "TeacherResource"]
