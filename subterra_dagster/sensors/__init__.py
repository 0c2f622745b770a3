from subterra_dagster.sensors.incremental_fallback import incremental_fallback_sensor
from subterra_dagster.sensors.workflow_files import workflow_files_sensor

__all__ = ["incremental_fallback_sensor", "workflow_files_sensor"]
