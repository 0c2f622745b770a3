from sensors.workflow_files import workflow_files_sensor

__all__ = ["workflow_files_sensor"]
