"""The DuckDB database: one table per asset, a ``workflow`` column in each.

A partition's rows are replaced in one transaction (delete this workflow's rows, insert the new
ones; several tables at once when a stage writes more than one), so a crash never leaves half a
partition, nor one table of a stage new and another old. DuckDB lets one process write a file at a time
and refuses (rather than waits for) a second, so every connection first takes an advisory file
lock beside the database: exclusive to write, shared to read. Writers in different threads and
processes (two Dagster runs at once) therefore queue instead of failing; readers wait for a write
in progress. Connections are short: open, do one thing, close.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import polars as pl

from subterra.locks import file_lock

_TABLE = re.compile(r"[a-z][a-z0-9_]{0,63}")
_WRITE_LOCK = threading.Lock()


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class Store:
    """One DuckDB file (``data/subterra.duckdb``), read and written a partition at a time."""

    def __init__(self, db_path: str | Path):
        self.db_path = Path(db_path)

    @contextmanager
    def _connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        if read_only and not self.db_path.exists():
            raise FileNotFoundError(f"{self.db_path}: no database yet (compile a workflow first)")
        with file_lock(self.db_path.with_name(self.db_path.name + ".lock"), shared=read_only):
            con = duckdb.connect(str(self.db_path), read_only=read_only)
            try:
                yield con
            finally:
                con.close()

    @staticmethod
    def _check(table: str) -> str:
        if not _TABLE.fullmatch(table):
            raise ValueError(f"bad table name {table!r}")
        return table

    def replace_partition(self, table: str, workflow: str, frame: pl.DataFrame) -> int:
        """Replace ``workflow``'s rows of ``table`` by ``frame``, in one transaction.

        The table is created from the frame's schema if missing. If a stage's schema has moved
        on (a newer Subterra), new columns are added and changed types converted, so the rows of
        every other workflow stay. ``frame`` gets a ``workflow`` column if it has none and must
        not hold rows of another workflow. Returns the number of rows written."""
        return self.replace_partitions(workflow, {table: frame})[table]

    def replace_partitions(self, workflow: str, frames: dict[str, pl.DataFrame]) -> dict[str, int]:
        """Replace ``workflow``'s rows of several tables in one transaction: a stage that writes
        two tables (rows and their checks, scores and their scenarios) never leaves one new and
        the other old. Returns the rows written per table."""
        incoming = {}
        for table, frame in frames.items():
            table = self._check(table)
            if "workflow" not in frame.columns:
                frame = frame.with_columns(pl.lit(workflow, dtype=pl.String).alias("workflow"))
            if frame.height and set(frame["workflow"].unique()) != {workflow}:
                raise ValueError(f"{table}: rows for another workflow than {workflow!r}")
            incoming[table] = frame
        with _WRITE_LOCK, self._connect() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                for table, frame in incoming.items():
                    con.register("incoming", frame.to_arrow())
                    con.execute(f"CREATE TABLE IF NOT EXISTS {table} AS SELECT * FROM incoming LIMIT 0")
                    self._evolve(con, table)
                    con.execute(f"DELETE FROM {table} WHERE workflow = ?", [workflow])
                    con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM incoming")
                    con.unregister("incoming")
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return {table: frame.height for table, frame in incoming.items()}

    def delete_partition(self, table: str, workflow: str) -> None:
        """Remove ``workflow``'s rows of ``table`` (a stage that produced nothing this time)."""
        table = self._check(table)
        with _WRITE_LOCK, self._connect() as con:
            if self._exists(con, table):
                con.execute(f"DELETE FROM {table} WHERE workflow = ?", [workflow])

    @staticmethod
    def _evolve(con: duckdb.DuckDBPyConnection, table: str) -> None:
        have = {name: kind for name, kind, *_ in con.execute(f"DESCRIBE {table}").fetchall()}
        for name, kind, *_ in con.execute("DESCRIBE SELECT * FROM incoming").fetchall():
            if kind == '"NULL"' or kind == "NULL":
                continue  # an all-null column fits any type
            if name not in have:
                con.execute(f"ALTER TABLE {table} ADD COLUMN {_quote(name)} {kind}")
            elif have[name] != kind:
                con.execute(f"ALTER TABLE {table} ALTER COLUMN {_quote(name)} SET DATA TYPE {kind}")

    def located(self, path: str) -> str:
        """Where a folder this database recorded (a model's, ``models/WORKFLOW/NAME``) is now: a
        relative path is under the database's folder (the data folder); an absolute one recorded
        in a data folder since moved or copied is taken from this one when it is there."""
        recorded = Path(path)
        if not recorded.is_absolute():
            return str(self.db_path.parent / recorded)
        parts = recorded.parts
        if "models" in parts:
            here = self.db_path.parent.joinpath(*parts[len(parts) - 1 - parts[::-1].index("models"):])
            if here.exists():
                return str(here)
        return path

    def read(self, table: str, workflow: str) -> pl.DataFrame:
        """This workflow's rows of ``table``; ``LookupError`` if the asset was never materialized for it."""
        table = self._check(table)
        with self._connect(read_only=True) as con:
            if not self._exists(con, table):
                raise LookupError(f"table {table} does not exist yet: materialize its asset first")
            frame = con.execute(f"SELECT * FROM {table} WHERE workflow = ?", [workflow]).pl()
        if frame.height == 0:
            raise LookupError(f"table {table} has no rows for workflow {workflow!r}: materialize its asset first")
        return frame

    def query(self, sql: str, params: list | None = None) -> pl.DataFrame:
        """Any read-only SQL over the database."""
        with self._connect(read_only=True) as con:
            return con.execute(sql, params or []).pl()

    def tables(self) -> list[str]:
        """Names of the tables written so far."""
        if not self.db_path.exists():
            return []
        with self._connect(read_only=True) as con:
            return [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables ORDER BY 1").fetchall()]

    @staticmethod
    def _exists(con: duckdb.DuckDBPyConnection, table: str) -> bool:
        return bool(con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [table]).fetchone()[0])
