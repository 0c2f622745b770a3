"""The DuckDB store: round trips (nested and list columns too), partition replace that touches
one workflow only and is all-or-nothing, schema evolution, and writers that queue."""

import threading

import duckdb
import polars as pl
import pytest

from subterra.store import Store


def frame(workflow: str, n: int, offset: int = 0) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "workflow": [workflow] * n,
            "conversation_id": [f"{workflow}-{i + offset}" for i in range(n)],
            "n_turns": [i + offset for i in range(n)],
            "nodes": [["greet", "ask_date"][: 1 + i % 2] for i in range(n)],
            "scenario": [{"seed": i, "values": {"destination": "Lima"}} for i in range(n)],
            "score": [0.5 * i for i in range(n)],
        }
    )


def test_round_trip_keeps_values_and_types(store):
    written = frame("a", 3)
    assert store.replace_partition("corpus", "a", written) == 3
    read = store.read("corpus", "a").sort("conversation_id")
    assert read.schema == written.schema
    assert read.to_dicts() == written.to_dicts()
    assert read["nodes"].to_list() == [["greet"], ["greet", "ask_date"], ["greet"]]
    assert store.tables() == ["corpus"]


def test_workflow_column_is_added_and_queryable_from_sql(store):
    store.replace_partition("eval_scores", "a", pl.DataFrame({"strict_pass": [0.9]}))
    assert store.query("select workflow, strict_pass from eval_scores").to_dicts() == [{"workflow": "a", "strict_pass": 0.9}]
    with duckdb.connect(str(store.db_path), read_only=True) as con:  # what `duckdb data/subterra.duckdb` sees
        assert con.execute("select count(*) from eval_scores where workflow = 'a'").fetchone() == (1,)


def test_replace_touches_only_its_own_workflow(store):
    store.replace_partition("corpus", "a", frame("a", 3))
    store.replace_partition("corpus", "b", frame("b", 2))
    store.replace_partition("corpus", "a", frame("a", 1, offset=10))
    assert store.read("corpus", "a")["conversation_id"].to_list() == ["a-10"]
    assert store.read("corpus", "b").height == 2


def test_refused_type_change_leaves_every_partition_whole(store):
    store.replace_partition("corpus", "a", frame("a", 3))
    store.replace_partition("corpus", "b", frame("b", 2))
    bad = frame("a", 2).with_columns(pl.Series("nodes", [{"x": 1}, {"x": 2}]))  # b's lists cannot become structs
    with pytest.raises(duckdb.Error):
        store.replace_partition("corpus", "a", bad)
    assert store.read("corpus", "a").sort("conversation_id").to_dicts() == frame("a", 3).to_dicts()
    assert store.read("corpus", "b").height == 2


def test_a_stage_writing_two_tables_changes_both_or_neither(store):
    checks = pl.DataFrame({"expectation": ["length"], "success": [True]})
    store.replace_partitions("a", {"corpus": frame("a", 3), "checks": checks})
    store.replace_partition("checks", "b", checks.with_columns(pl.lit("b").alias("workflow")))
    refused = pl.DataFrame({"expectation": ["length"], "success": [{"x": 1}]})  # b's booleans cannot become structs
    with pytest.raises(duckdb.Error):
        store.replace_partitions("a", {"corpus": frame("a", 1, offset=10), "checks": refused})
    assert store.read("corpus", "a").sort("conversation_id").to_dicts() == frame("a", 3).to_dicts()  # not the new rows
    assert store.read("checks", "a")["success"].to_list() == [True]
    written = store.replace_partitions("a", {"corpus": frame("a", 1, offset=10), "checks": checks})
    assert written == {"corpus": 1, "checks": 1} and store.read("corpus", "a")["conversation_id"].to_list() == ["a-10"]


CRASHING_WRITER = """
import sys, polars as pl
from subterra.store import Store
store = Store(sys.argv[1])
for batch in range(1000):
    store.replace_partition("big", "a", pl.DataFrame({"batch": [batch] * (300_000 + batch), "x": range(300_000 + batch)}))
    if batch == 0:
        print("ready", flush=True)
"""


def test_a_writer_killed_mid_replace_never_leaves_half_a_partition(store):
    import signal
    import subprocess
    import sys
    import time

    writer = subprocess.Popen([sys.executable, "-c", CRASHING_WRITER, str(store.db_path)], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "ready"
    time.sleep(1.0)
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=30)
    rows = store.query("select batch, count(*) as n from big where workflow = 'a' group by batch").to_dicts()
    assert len(rows) == 1  # one whole frame, never a mix of two
    assert rows[0]["n"] == 300_000 + rows[0]["batch"]


def test_rows_of_another_workflow_are_refused(store):
    with pytest.raises(ValueError, match="another workflow"):
        store.replace_partition("corpus", "a", frame("b", 1))
    with pytest.raises(ValueError, match="bad table name"):
        store.replace_partition("corpus; drop table x", "a", frame("a", 1))


def test_schema_change_keeps_other_workflows(store):
    store.replace_partition("scores", "a", pl.DataFrame({"workflow": ["a"], "score": [1]}))
    store.replace_partition("scores", "b", pl.DataFrame({"workflow": ["b"], "score": [0.25], "latency_ms": [12.0]}))
    assert store.read("scores", "a").to_dicts() == [{"workflow": "a", "score": 1.0, "latency_ms": None}]
    assert store.read("scores", "b").to_dicts() == [{"workflow": "b", "score": 0.25, "latency_ms": 12.0}]


def test_missing_table_or_partition_says_what_to_materialize(store):
    with pytest.raises(FileNotFoundError):
        store.read("corpus", "a")
    store.replace_partition("corpus", "a", frame("a", 1))
    with pytest.raises(LookupError, match="materialize"):
        store.read("paths", "a")
    with pytest.raises(LookupError, match="no rows for workflow 'b'"):
        store.read("corpus", "b")


def test_concurrent_writers_queue_instead_of_failing(store):
    errors = []

    def write(workflow: str) -> None:
        try:
            for round_ in range(5):
                Store(store.db_path).replace_partition("corpus", workflow, frame(workflow, 4, offset=round_))
                Store(store.db_path).read("corpus", workflow)
        except Exception as exc:  # collected, asserted below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in "abcd"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    counts = store.query("select workflow, count(*) as n from corpus group by 1 order by 1")
    assert counts.to_dicts() == [{"workflow": w, "n": 4} for w in "abcd"]


def test_concurrent_processes_queue(store, tmp_path):
    import subprocess
    import sys

    script = (
        "import sys, polars as pl\n"
        "from subterra.store import Store\n"
        "s = Store(sys.argv[1])\n"
        "for i in range(20):\n"
        "    s.replace_partition('t', sys.argv[2], pl.DataFrame({'i': list(range(i + 1))}))\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(store.db_path), w]) for w in ("p", "q")]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    assert store.query("select workflow, count(*) as n from t group by 1 order by 1").to_dicts() == [
        {"workflow": "p", "n": 20},
        {"workflow": "q", "n": 20},
    ]


def test_delete_partition_removes_one_workflows_rows(tmp_path):
    store = Store(tmp_path / "db.duckdb")
    store.delete_partition("t", "a")  # no table yet: nothing to do
    store.replace_partition("t", "a", pl.DataFrame({"x": [1, 2]}))
    store.replace_partition("t", "b", pl.DataFrame({"x": [3]}))
    store.delete_partition("t", "a")
    assert store.query("select workflow, x from t").rows() == [("b", 3)]
