"""``subterra``: the core's commands (``subterra.cli``) plus those that materialize the asset graph
in-process: compile | ladder | gallery.

    python -m subterra_dagster compile data/workflows/travel_booking.yaml
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from subterra.cli import _settings, cmd_report, print_ladder
from subterra.cli import build_parser as core_parser

_VIA_CLI = {"subterra/via": "cli"}  # runs of `subterra compile`: the lock covers them, and frees itself if one dies


_RUNNING = ("STARTING", "STARTED", "CANCELING")  # a run that is executing (queued ones wait for this one)
def _run(file: str, assets_name: str, run_config: dict | None = None, full: bool = False) -> tuple[int, str | None]:
    """Materialize the named asset list (``COMPILE_ASSETS`` or ``LADDER_ASSETS``) for the workflow
    in ``file``, under the workflow's compile lock; (exit status, workflow)."""
    from subterra.locks import LockBusy, file_lock
    from subterra.workflow import WorkflowError, load_workflow

    settings = _settings()
    source = Path(file)
    try:
        wf = load_workflow(source)
    except WorkflowError as exc:
        print(exc, file=sys.stderr)
        return 1, None
    try:
        with file_lock(settings.compile_lock(wf.id), wait=False):  # never two `subterra compile` of one workflow
            status = _materialize(settings, source, wf, assets_name, run_config, full=full)
            why = None if status or full else _full_recompile_due(settings, wf.id)
            if why:  # what the incremental_fallback sensor does for the sensor's and the UI's runs
                print(f"{why}; recompiling {wf.id} in full")
                status = _materialize(settings, settings.workflow_file(wf.id), wf, assets_name, run_config, full=True)
            return status, wf.id
    except LockBusy:
        print(f"{wf.id}: another `subterra compile` of this workflow is running; try again when it ends", file=sys.stderr)
        return 1, wf.id


def _full_recompile_due(settings, workflow: str) -> str | None:
    """Why the compile just made should be done again in full (an incremental recompile that did
    not hold), unless falling back is off (``SUBTERRA_RECOMPILE_FALLBACK=0``)."""
    from subterra_dagster.resources import RecompileResource
    from subterra.serving import full_recompile_due
    from subterra.store import Store

    if not RecompileResource().falls_back():
        return None
    return full_recompile_due(Store(settings.db_path), workflow)


def _with_recompile(run_config: dict | None, recompile: dict) -> dict:
    """``run_config`` (a profile's) with the recompile mode of the stages that honour it added."""
    ops = {op: {"config": dict(value.get("config", {}))} for op, value in (run_config or {}).get("ops", {}).items()}
    for op, value in recompile["ops"].items():
        ops.setdefault(op, {"config": {}})["config"].update(value["config"])
    return {**(run_config or {}), "ops": ops}


def _compiled_before(settings, workflow: str) -> bool:
    """Has ``workflow`` a trained model in the database (else this compile is its first)?"""
    import duckdb

    from subterra.store import Store

    try:
        return Store(settings.db_path).read("trained_weights", workflow).height > 0
    except (FileNotFoundError, LookupError, duckdb.Error):  # no database, table or row yet
        return False


def _materialize(settings, source: Path, wf, assets_name: str, run_config: dict | None = None, full: bool = False) -> int:
    """Copy the workflow file into the data folder if needed and materialize the named asset list
    for its partition in-process (refused while a sensor or UI run of the workflow executes)."""
    import os

    import dagster as dg

    import subterra_dagster.assets as asset_lists
    from subterra.atomic import atomic_path

    instance = dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else dg.DagsterInstance.ephemeral()
    running = [run for run in instance.get_runs(filters=dg.RunsFilter(
        tags={"dagster/partition": wf.id}, statuses=[dg.DagsterRunStatus[s] for s in _RUNNING])) if not run.tags.get("subterra/via")]
    if running:  # a run the sensor or the UI started (the run queue keeps those to one per workflow)
        print(f"{wf.id}: run {running[0].run_id} of this workflow is {running[0].status.value.lower()}; "
              f"try again when it ends", file=sys.stderr)
        return 1
    target = settings.workflow_file(wf.id)
    if source.resolve() != target.resolve():
        with atomic_path(target) as tmp:  # the sensor never sees half a copy
            shutil.copyfile(source, tmp)
        print(f"copied {source} to {target}")
        # the workflow's natural sets travel with it: WORKFLOWS/../natural/{test,validation}/ID.yaml
        for kind in ("test", "validation"):
            natural = source.resolve().parent.parent / "natural" / kind / f"{wf.id}.yaml"
            into = settings.natural_dir / kind / f"{wf.id}.yaml"
            if natural.exists() and natural.resolve() != into.resolve():
                into.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(into) as tmp:
                    shutil.copyfile(natural, tmp)
                print(f"copied {natural} to {into}")
    from subterra_dagster.definitions import build_definitions

    defs = build_definitions(str(settings.data_dir), recompile="full" if full else "")
    instance.add_dynamic_partitions(asset_lists.workflows_partitions.name, [wf.id])
    resources = {key: value for key, value in defs.resources.items()}
    mode = resources["recompile"].get() if _compiled_before(settings, wf.id) else "first compile"
    print(f"compiling {wf.id} ({len(wf.nodes)} nodes, hash {wf.short_hash}) into {settings.data_dir} ({mode})")
    result = dg.materialize(
        getattr(asset_lists, assets_name), partition_key=wf.id, resources=resources, instance=instance, tags=_VIA_CLI,
        run_config=_with_recompile(run_config, resources["recompile"].run_config()), raise_on_error=False,
    )
    if not result.success:
        for event in result.all_events:
            if event.is_failure:
                print(event.message, file=sys.stderr)
        print(f"compile of {wf.id} failed; the last good model (if any) is untouched", file=sys.stderr)
        return 1
    return 0


def cmd_compile(args) -> int:
    run_config = None
    if args.config:  # a Dagster run config: {"ops": {stage: {"config": {...}}}}, e.g. a corpus setting
        import yaml

        run_config = yaml.safe_load(Path(args.config).read_text())
    status, workflow = _run(args.file, "COMPILE_ASSETS", run_config, full=args.full)
    return status or cmd_report(argparse.Namespace(workflow=workflow))


def cmd_ladder(args) -> int:
    """Compile, evaluate every route, repair, promote, and print the ladder (a profile's scale)."""
    from subterra.profiles import PROFILES

    profile = PROFILES[args.profile]
    if args.routes:  # e.g. only the deployed route: the compiled agent's numbers without the base model's routes
        from dataclasses import replace

        profile = replace(profile, eval={**profile.eval, "routes": [r.strip() for r in args.routes.split(",") if r.strip()]})
    if not args.report_only:
        print(f"profile {profile.name}: {profile.description}")
        print("  " + ", ".join(f"{k}={v}" for k, v in profile.sizes().items()))
        status, workflow = _run(args.file, "LADDER_ASSETS", profile.run_config(), full=args.full)
        if status:
            return status
    else:
        from subterra.workflow import load_workflow

        workflow = load_workflow(args.file).id
    return print_ladder(workflow)


def cmd_gallery(args) -> int:
    """Compile every workflow of the given folders with the defaults; print one table of their test numbers."""
    import time

    from subterra.gallery import gallery_table
    from subterra.store import Store

    files = []
    for place in args.places:
        path = Path(place)
        files += sorted(path.glob("*.yaml")) if path.is_dir() else [path]
    if args.only:
        wanted = {name.strip() for name in args.only.split(",")}
        files = [f for f in files if f.stem in wanted]
    results = []
    for file in files:
        started = time.perf_counter()
        if args.no_compile:
            from subterra.workflow import load_workflow

            status, workflow, minutes = 0, load_workflow(file).id, None
        else:
            status, workflow = _run(str(file), "COMPILE_ASSETS", None)
            minutes = (time.perf_counter() - started) / 60
        store = Store(_settings().db_path)
        try:
            scores = None if status else store.read("eval_scores", workflow)
            paths = store.read("workflow_paths", workflow).height
        except (LookupError, FileNotFoundError):
            scores, paths = None, "?"
        results.append({"workflow": workflow, "paths": paths, "minutes": minutes, "scores": scores,
                        **({"note": "not compiled"} if args.no_compile else {})})
        print(f"\n{gallery_table(results)}\n", flush=True)  # the table so far, after each compile
    return 0 if all(r["scores"] is not None for r in results) else 1



def build_parser() -> argparse.ArgumentParser:
    parser = core_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    p = sub.add_parser("compile", help="compile a workflow end to end (in-process Dagster materialization)")
    p.add_argument("file")
    p.add_argument("--config", default="", help="a YAML run config of stage settings: ops: {synthetic_corpus: {config: {...}}}")
    p.add_argument("--full", action="store_true",
                   help="write every conversation again and train from scratch (default: reuse what the change did not touch)")
    p.set_defaults(func=cmd_compile)
    p = sub.add_parser("ladder", help="compile, evaluate every route, repair, promote; print the ladder table")
    p.add_argument("file")
    p.add_argument("--profile", default="quick", choices=["quick", "full"])
    p.add_argument("--report-only", action="store_true", help="only print the ladder already in DuckDB")
    p.add_argument("--routes", default="", help="comma-separated routes to evaluate (default: the profile's, all four)")
    p.add_argument("--full", action="store_true",
                   help="write every conversation again and train from scratch (default: reuse what the change did not touch)")
    p.set_defaults(func=cmd_ladder)
    p = sub.add_parser("gallery", help="compile every workflow of the given folders with the defaults; print one table")
    p.add_argument("places", nargs="*", default=["data/workflows", "data/gallery/workflows"],
                   help="workflow files or folders of them (default: the shipped examples and the gallery)")
    p.add_argument("--only", default="", help="comma-separated workflow ids to compile (default: all)")
    p.add_argument("--no-compile", action="store_true", help="only print the table of what is compiled already")
    p.set_defaults(func=cmd_gallery)

    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
