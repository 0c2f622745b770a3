"""Corpus generation by the offline teacher, and writing it: Parquet and DuckDB.

A full build of travel_booking's corpus (the compile's default settings) against an incremental
build after a one-node text edit, which takes the conversations of every path the edit did not
touch from the previous corpus; then the corpus written as Parquet and into DuckDB (the store's
transactional partition replace).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench.common import WORKFLOWS, header, ratio_line
from subterra.corpus import CorpusConfig, build_corpus
from subterra.incremental import Reuse
from subterra.paths import path_nodes, select_paths
from subterra.store import Store
from subterra.teacher import TemplateTeacher
from subterra.workflow import Workflow, load_workflow

# the synthetic_corpus asset's defaults
CONFIG = CorpusConfig(holdout_scenarios=200)
EDITED_NODE = "payment"


def one_node_edit(wf: Workflow, node: str) -> Workflow:
    """``wf`` with one say line of ``node`` reworded."""
    definition = wf.to_dict()
    say = definition["nodes"][node]["say"]
    definition["nodes"][node]["say"] = [say[0].rstrip(".!?") + ", please."] + say[1:]
    return Workflow.from_dict(definition)


def main() -> None:
    header("corpus: offline teacher throughput, incremental reuse, Parquet and DuckDB writes")
    wf = load_workflow(WORKFLOWS / "travel_booking.yaml")
    paths = select_paths(wf).paths
    teacher = TemplateTeacher()
    t = time.perf_counter()
    corpus = build_corpus(wf, paths, teacher, CONFIG)
    full_seconds = time.perf_counter() - t
    print(f"travel_booking: {len(paths)} paths, {corpus.height:,} conversations in {full_seconds:.2f} s "
          f"({corpus.height / full_seconds:,.0f} conversations/s, "
          f"{sum(len(m) for m in corpus['messages']) / full_seconds / 2**20:.2f} MiB of text/s)")
    edited = one_node_edit(wf, EDITED_NODE)
    through = sum(EDITED_NODE in path_nodes(wf, p) for p in paths)
    reuse = Reuse(corpus)
    t = time.perf_counter()
    again = build_corpus(edited, paths, teacher, CONFIG, reuse=reuse)
    incremental_seconds = time.perf_counter() - t
    print(f"one-node text edit of '{EDITED_NODE}' ({through}/{len(paths)} paths go through it): "
          f"{reuse.generated:,} conversations written, {reuse.reused:,} reused")
    ratio_line("corpus build after the edit", "incremental", incremental_seconds, "full", full_seconds, "s",
               higher_is_better=False)
    assert again.equals(build_corpus(edited, paths, teacher, CONFIG)), "incremental corpus differs from a full build"
    print("incremental corpus == full build of the edited workflow: yes")

    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / "corpus.parquet"
        t = time.perf_counter()
        corpus.write_parquet(target)
        parquet_seconds = time.perf_counter() - t
        store = Store(Path(folder) / "bench.duckdb")
        store.replace_partition("synthetic_corpus", wf.id, corpus)  # the table exists, as on a recompile
        t = time.perf_counter()
        store.replace_partition("synthetic_corpus", wf.id, corpus)
        duckdb_seconds = time.perf_counter() - t
        size = target.stat().st_size
    print(f"Parquet write: {parquet_seconds * 1000:.0f} ms ({size / 2**20:.2f} MiB, {corpus.height / parquet_seconds:,.0f} rows/s)")
    print(f"DuckDB partition replace: {duckdb_seconds * 1000:.0f} ms ({corpus.height / duckdb_seconds:,.0f} rows/s)")
    ratio_line("write", "Parquet", parquet_seconds, "DuckDB replace", duckdb_seconds, "s", higher_is_better=False)
    ratio_line("write vs generation", "DuckDB replace", duckdb_seconds, "teacher generation", full_seconds, "s",
               higher_is_better=False)


if __name__ == "__main__":
    main()
