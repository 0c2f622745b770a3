import dagster as dg

from subterra.settings import Settings


class SettingsResource(dg.ConfigurableResource):
    """The data folder: workflow files in, models and run files out."""

    data_dir: str = ""  # empty: SUBTERRA_DATA_DIR or ./data

    def get(self) -> Settings:
        from pathlib import Path

        return Settings(Path(self.data_dir).resolve()) if self.data_dir else Settings.from_env()
