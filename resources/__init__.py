"""Resources: every outside system the assets touch."""

from resources.settings import SettingsResource
from resources.store import StoreResource
from resources.teacher import TeacherResource

__all__ = ["SettingsResource", "StoreResource", "TeacherResource"]
