import dagster as dg

from subterra.settings import Settings
from subterra.store import Store


class StoreResource(dg.ConfigurableResource):
    """The DuckDB database (``data/subterra.duckdb`` unless configured)."""

    db_path: str = ""

    def get(self) -> Store:
        return Store(self.db_path or Settings.from_env().db_path)
