"""End to end: a full travel_booking compile, then an incremental recompile after a one-node text
edit, then a full recompile of the same edited workflow (the baseline the incremental one must
match on the holdouts). Long (tens of minutes on a 2-core CPU): ``make bench-e2e``.

Each compile is the real pipeline (every asset, in-process Dagster, training through Pipes) into
a temporary data folder (``--data-dir`` to keep it). Prints the wall time of each compile and of
each stage, the incremental/full ratio, and both compiles' holdout scores side by side.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from bench.common import WORKFLOWS, header, ratio_line

WORKFLOW = "travel_booking"
EDIT = ("Last step, {passenger_name}: card payment or miles?", "Final step, {passenger_name}: card payment or miles?")
EDITED_NODE = "payment"


def compile_once(data_dir: Path, instance, mode: str) -> tuple[float, dict[str, float]]:
    import dagster as dg

    from assets import COMPILE_ASSETS
    from definitions import build_definitions

    resources = dict(build_definitions(str(data_dir)).resources)
    run_config = {"ops": {op: {"config": {"recompile": mode}} for op in ("synthetic_corpus", "trained_weights")}}
    started = time.perf_counter()
    result = dg.materialize(COMPILE_ASSETS, partition_key=WORKFLOW, resources=resources, instance=instance,
                            run_config=run_config, raise_on_error=True)
    seconds = time.perf_counter() - started
    stages: dict[str, float] = {}
    began: dict[str, float] = {}
    for entry in instance.all_logs(result.run_id):
        event = entry.dagster_event
        if event is None or not event.step_key:
            continue
        if event.event_type_value == "STEP_START":
            began[event.step_key] = entry.timestamp
        elif event.event_type_value == "STEP_SUCCESS":
            stages[event.step_key] = entry.timestamp - began[event.step_key]
    return seconds, stages


def scores(data_dir: Path):
    """(eval scores per holdout of the deployed route, the training row) of the last compile."""
    import polars as pl

    from subterra.routes import DEPLOYED
    from subterra.store import Store

    store = Store(data_dir / "subterra.duckdb")
    table = (store.read("eval_scores", WORKFLOW).filter(pl.col("route") == DEPLOYED)
             .select("holdout", "strict_pass", "partial_credit", "slot_accuracy").sort("holdout"))
    training = store.read("trained_weights", WORKFLOW).select("recompile", "steps", "train_seconds", "changed_conversations")
    return table, training.row(0, named=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="keep the compiles here (default: a temporary folder)")
    args = parser.parse_args()
    import dagster as dg

    from assets import workflows_partitions
    from subterra.paths import path_nodes, select_paths
    from subterra.workflow import load_workflow

    header("end to end: full compile, incremental recompile after a one-node edit, full recompile")
    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="subterra-e2e-")).resolve()
    (data_dir / "workflows").mkdir(parents=True, exist_ok=True)
    source = data_dir / "workflows" / f"{WORKFLOW}.yaml"
    shutil.copyfile(WORKFLOWS / f"{WORKFLOW}.yaml", source)
    print(f"data folder: {data_dir}")
    report = {}
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(workflows_partitions.name, [WORKFLOW])
        report["full"] = compile_once(data_dir, instance, "full")
        before = scores(data_dir)
        text = source.read_text()
        assert text.count(EDIT[0]) == 1, "the edited line is not in the workflow file"
        source.write_text(text.replace(*EDIT))
        wf = load_workflow(source)
        paths = select_paths(wf).paths
        through = sum(EDITED_NODE in path_nodes(wf, p) for p in paths)
        print(f"edit: one say line of '{EDITED_NODE}' ({through}/{len(paths)} paths go through it)")
        report["incremental"] = compile_once(data_dir, instance, "incremental")
        incremental = scores(data_dir)
        report["full (edited)"] = compile_once(data_dir, instance, "full")
        full_edited = scores(data_dir)
    for name, (seconds, stages) in report.items():
        print(f"{name}: {seconds:.0f} s  (" + ", ".join(f"{k} {v:.0f} s" for k, v in stages.items()) + ")")
    print(f"full compile of {WORKFLOW}: {report['full'][0] / 60:.1f} minutes (target: at most 10)")
    ratio = report["incremental"][0] / report["full (edited)"][0]
    ratio_line("recompile after the edit", "incremental", report["incremental"][0], "full", report["full (edited)"][0], "s",
               higher_is_better=False)
    print(f"incremental / full wall time: {ratio:.0%} (target: at most 25%)")
    for name, (table, training) in (("first compile", before), ("incremental", incremental), ("full (edited)", full_edited)):
        print(f"\n{name}: training {training}")
        print(table)
    inc, full = incremental[0], full_edited[0]
    for a, b in zip(inc.iter_rows(named=True), full.iter_rows(named=True)):
        print(f"{a['holdout']}: strict pass incremental {a['strict_pass']:.3f} vs full {b['strict_pass']:.3f} "
              f"({(a['strict_pass'] - b['strict_pass']) * 100:+.1f} points; target: within 2)")


if __name__ == "__main__":
    main()
