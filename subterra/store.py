"""The DuckDB database: one table per asset, a ``workflow`` column in each.

A partition's rows are replaced in one transaction (delete this workflow's rows, insert the new
ones), so a crash never leaves half a partition; writers in this process are serialised, and
DuckDB itself allows one writing process at a time.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

import duckdb
import polars as pl

_TABLE = re.compile(r"[a-z][a-z0-9_]{0,63}")
_LOCK = threading.Lock()


class Store:
    def __init__(self, db_path: str | Path):
        self.db_path = Path(db_path)

    def _connect(self, read_only: bool = False) -> duckdb.DuckDBPyConnection:
        if read_only and not self.db_path.exists():
            raise FileNotFoundError(f"{self.db_path}: no database yet (compile a workflow first)")
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        return duckdb.connect(str(self.db_path), read_only=read_only)

    @staticmethod
    def _check(table: str) -> str:
        if not _TABLE.fullmatch(table):
            raise ValueError(f"bad table name {table!r}")
        return table

    def replace_partition(self, table: str, workflow: str, frame: pl.DataFrame) -> int:
        """Replace ``workflow``'s rows of ``table`` by ``frame`` (which must have that workflow only)."""
        table = self._check(table)
        if "workflow" not in frame.columns:
            frame = frame.with_columns(pl.lit(workflow).alias("workflow"))
        if frame.height and set(frame["workflow"].unique()) != {workflow}:
            raise ValueError(f"{table}: rows for another workflow than {workflow!r}")
        arrow = frame.to_arrow()
        with _LOCK, self._connect() as con:
            con.register("incoming", arrow)
            con.execute("BEGIN TRANSACTION")
            try:
                con.execute(f"CREATE TABLE IF NOT EXISTS {table} AS SELECT * FROM incoming LIMIT 0")
                existing = [r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()]
                if existing != frame.columns:
                    # the stage's schema changed (a new Subterra version): the table starts afresh
                    con.execute(f"CREATE OR REPLACE TABLE {table} AS SELECT * FROM incoming LIMIT 0")
                con.execute(f"DELETE FROM {table} WHERE workflow = ?", [workflow])
                con.execute(f"INSERT INTO {table} SELECT * FROM incoming")
                con.execute("COMMIT")
            except Exception:
                con.execute("ROLLBACK")
                raise
        return frame.height

    def read(self, table: str, workflow: str) -> pl.DataFrame:
        table = self._check(table)
        with self._connect(read_only=True) as con:
            if not self._exists(con, table):
                raise LookupError(f"table {table} does not exist yet: materialize its asset first")
            frame = con.execute(f"SELECT * FROM {table} WHERE workflow = ?", [workflow]).pl()
        if frame.height == 0:
            raise LookupError(f"table {table} has no rows for workflow {workflow!r}: materialize its asset first")
        return frame

    def query(self, sql: str, params: list | None = None) -> pl.DataFrame:
        with self._connect(read_only=True) as con:
            return con.execute(sql, params or []).pl()

    def tables(self) -> list[str]:
        if not self.db_path.exists():
            return []
        with self._connect(read_only=True) as con:
            return [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables ORDER BY 1").fetchall()]

    @staticmethod
    def _exists(con, table: str) -> bool:
        return bool(con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [table]).fetchone()[0])
