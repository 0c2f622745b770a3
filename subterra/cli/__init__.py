"""``subterra``: validate | compile | ladder | chat | report | train.

The only place in ``subterra/`` that imports Dagster (``compile`` materializes the asset graph
in-process; ``train`` speaks Dagster Pipes when launched by the asset). Heavy imports happen
inside each command, so ``subterra validate`` starts fast.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path


def cmd_validate(args) -> int:
    from subterra.workflow import validate_file

    bad = 0
    for name in args.files:
        faults = validate_file(name)
        for fault in faults:
            print(fault)
        if faults:
            bad += 1
        else:
            print(f"{name}: ok")
    return 1 if bad else 0


def _settings():
    from subterra.settings import Settings

    return Settings.from_env()


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
    from resources import RecompileResource
    from subterra.serving import full_recompile_due
    from subterra.store import Store

    if not RecompileResource().falls_back():
        return None
    return full_recompile_due(Store(settings.db_path), workflow)


_RUNNING = ("STARTING", "STARTED", "CANCELING")  # a run that is executing (queued ones wait for this one)
_VIA_CLI = {"subterra/via": "cli"}  # runs of `subterra compile`: the lock covers them, and frees itself if one dies


def _with_recompile(run_config: dict | None, recompile: dict) -> dict:
    """``run_config`` (a profile's) with the recompile mode of the stages that honour it added."""
    ops = {op: {"config": dict(value.get("config", {}))} for op, value in (run_config or {}).get("ops", {}).items()}
    for op, value in recompile["ops"].items():
        ops.setdefault(op, {"config": {}})["config"].update(value["config"])
    return {**(run_config or {}), "ops": ops}


def _compiled_before(settings, workflow: str) -> bool:
    import duckdb

    from subterra.store import Store

    try:
        return Store(settings.db_path).read("trained_weights", workflow).height > 0
    except (LookupError, duckdb.Error):  # no database, table or row yet
        return False


def _materialize(settings, source: Path, wf, assets_name: str, run_config: dict | None = None, full: bool = False) -> int:
    """Copy the workflow file into the data folder if needed and materialize the named asset list
    for its partition in-process (refused while a sensor or UI run of the workflow executes)."""
    import os

    import dagster as dg

    import assets as asset_lists
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
    from definitions import build_definitions

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


def print_ladder(workflow: str) -> int:
    import polars as pl

    from subterra.cost import FRONTIER, MEASURED
    from subterra.ladder import format_ladder
    from subterra.store import Store

    store = Store(_settings().db_path)
    try:
        table = store.read("ladder", workflow)
        training = store.read("trained_weights", workflow).row(0, named=True)
        cost = store.read("cost_report", workflow)
        corpus = store.query("select split, count(*) as n from validated_dataset where workflow = ? group by split order by split", [workflow])
    except (LookupError, FileNotFoundError) as exc:
        print(f"no ladder for {workflow}: {exc}", file=sys.stderr)
        return 1
    print(f"\n== ladder: {workflow}, base model {training['base_model']} ({training['params']:,} params)")
    print("corpus: " + ", ".join(f"{s} {n}" for s, n in corpus.iter_rows()))
    print(f"training: {training['train_conversations']} conversations, {training['train_tokens']:,} tokens, "
          f"{training['steps']} steps, {training['train_seconds']:.0f} s ({training['tokens_per_second']:.0f} tokens/s, {training['device']})")
    print(format_ladder(table))
    frontier = cost.filter(pl.col("route").is_in([FRONTIER, MEASURED]))
    for r in frontier.iter_rows(named=True):
        print(f"{r['route']} on {r['set']}: ${r['usd_per_conversation']:.5f}/conversation "
              f"({r['tokens_in'] + r['tokens_out']:,.0f} tokens: {r['token_source']})")
    try:
        for r in store.read("promotions", workflow).sort("round").iter_rows(named=True):
            print(f"round {r['round']}: {r['reason']}")
        changes = store.read("repair_changes", workflow).filter(pl.col("change") != 0)
        if changes.height:
            print("clusters changed by repair (failures before -> after):")
            for r in changes.sort(["round", "change"]).iter_rows(named=True):
                print(f"  round {r['round']}: {r['cluster']}: {r['before']} -> {r['after']}")
    except LookupError:
        pass
    print(f"\nsame rows: duckdb {store.db_path} \"select * from ladder where workflow = '{workflow}'\"")
    return 0


def cmd_report(args) -> int:
    import os

    from subterra.report import format_report
    from subterra.serving import serving_model
    from subterra.store import Store

    settings = _settings()
    store = Store(settings.db_path)
    try:
        scores = store.read("eval_scores", args.workflow)
        cost = store.read("cost_report", args.workflow)
        training = store.read("trained_weights", args.workflow).row(0, named=True)
        serving = serving_model(store, args.workflow)
    except (LookupError, FileNotFoundError) as exc:
        print(f"no report for {args.workflow}: {exc}", file=sys.stderr)
        return 1
    model = os.path.relpath(training["model_dir"]) if os.path.isabs(training["model_dir"]) else training["model_dir"]
    print(format_report(args.workflow, scores, cost, training, f"{serving.why}", model, os.path.relpath(settings.db_path)))
    c = cost.row(0, named=True)
    if c.get("pct_of_frontier_quality") is not None:
        print(f"{c['pct_of_frontier_quality']:.1f}% of frontier quality (judged, holdout)")
    if c.get("claude_parts"):
        print("\n== Claude")
        for part, what in json.loads(c["claude_parts"]).items():
            print(f"{part}: {what}")
    return 0


def cmd_export(args) -> int:
    """Write a model and its form schema for a GPU serving engine (``subterra.export``)."""
    from subterra.export import export_model
    from subterra.serving import serving_model
    from subterra.store import Store
    from subterra.workflow import Workflow, load_workflow

    settings = _settings()
    try:
        given = load_workflow(args.workflow) if Path(args.workflow).is_file() else None  # a file, else an id
        workflow = given.id if given else args.workflow
        if args.model_dir:  # these weights, with the workflow file given or the data folder's
            model_dir, wf = args.model_dir, given or load_workflow(settings.workflow_file(workflow))
        else:
            # the model that serves, with the definition it was compiled from (as `subterra chat`)
            serving = serving_model(Store(settings.db_path), workflow)
            model_dir, wf = serving.model_dir, Workflow.from_dict(serving.definition)
            if given and given.content_hash != wf.content_hash:
                print(f"{args.workflow} differs from the definition the serving model of {workflow} was compiled "
                      f"from; exporting the compiled one ({wf.short_hash})")
        written = export_model(model_dir, wf, args.out)
    except (LookupError, FileNotFoundError) as exc:
        print(f"no compiled model for {args.workflow}: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # a workflow file's faults, a bad id, an export folder refused
        print(exc, file=sys.stderr)
        return 1
    print(f"exported {wf.id} ({model_dir}) to {written['out_dir']}: {len(written['model_files'])} model files, "
          f"{Path(written['serving']).name}, {Path(written['readme']).name}")
    return 0


def cmd_chat(args) -> int:
    from subterra.runtime.chat import ChatSession
    from subterra.serving import serving_model
    from subterra.store import Store
    from subterra.workflow import Workflow

    store = Store(_settings().db_path)
    try:
        # the model that serves (a repair round's promoted one, the compile's own, or the last good
        # one when the last compile did not hold), with the definition it was compiled from: a later
        # compile that failed, was refused or did not hold leaves the model and its definition as they were
        serving = serving_model(store, args.workflow)
    except (LookupError, FileNotFoundError) as exc:
        print(f"no compiled model for {args.workflow}: {exc}", file=sys.stderr)
        return 1
    model_dir, why, wf = serving.model_dir, serving.why, Workflow.from_dict(serving.definition)
    session = ChatSession(model_dir, wf)
    print(f"{wf.title or wf.id} (compiled model {model_dir}): {why}; empty line to quit")
    while not session.ended:
        try:
            text = input("you> ").strip()
        except EOFError:
            break
        if not text:
            break
        form = session.respond(text)
        print(f"bot> {form.say}")
        if args.forms:
            print(f"     [{form.node}] {json.dumps(form.slots)}")
    return 0


def cmd_serve(args) -> int:
    import logging
    import os

    import uvicorn

    from subterra.deployment import Deployment
    from subterra.server import ServerConfig, create_app
    from subterra.store import Store

    settings = _settings()
    config = ServerConfig(api_key=os.environ.get("SUBTERRA_API_KEY") or None, max_batch=args.max_batch,
                          max_concurrent=args.max_concurrent, log_text=args.log_text)
    deployment = Deployment(Store(settings.db_path), settings.data_dir, max_batch=config.max_batch,
                            refresh_seconds=config.refresh_seconds, keep_seconds=config.keep_seconds)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    workflows = deployment.workflows()
    print(f"serving {', '.join(workflows) or 'no compiled workflow yet (subterra compile FILE first)'} on "
          f"http://{args.host}:{args.port} (chat page: /, API: /v1/chat/completions; "
          f"{'API key required' if config.api_key else 'no API key set: SUBTERRA_API_KEY sets one'})", flush=True)
    uvicorn.run(create_app(deployment, config), host=args.host, port=args.port, log_level="info",
                access_log=not args.no_access_log)
    return 0


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


def cmd_train(args) -> int:
    from subterra.cli.train import main as train_main

    return train_main(["--config", args.config])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="subterra", description="Compile a workflow into small-model weights.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("validate", help="check workflow files; report every fault with file and line")
    p.add_argument("files", nargs="+")
    p.set_defaults(func=cmd_validate)
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
    p = sub.add_parser("chat", help="talk to a workflow's promoted model in the terminal")
    p.add_argument("workflow")
    p.add_argument("--forms", action="store_true", help="also show the form (node, slots) of every reply")
    p.set_defaults(func=cmd_chat)
    p = sub.add_parser("report", help="print a workflow's scores and cost report from DuckDB")
    p.add_argument("workflow")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("export", help="write a workflow's model and form schema for a GPU serving engine (vLLM, SGLang)")
    p.add_argument("workflow", help="a workflow file or id")
    p.add_argument("--out", required=True, help="the folder to write (new, empty, or an earlier export)")
    p.add_argument("--model-dir", default="", help="export these weights (default: the model that serves the workflow)")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("gallery", help="compile every workflow of the given folders with the defaults; print one table")
    p.add_argument("places", nargs="*", default=["data/workflows", "data/gallery/workflows"],
                   help="workflow files or folders of them (default: the shipped examples and the gallery)")
    p.add_argument("--only", default="", help="comma-separated workflow ids to compile (default: all)")
    p.add_argument("--no-compile", action="store_true", help="only print the table of what is compiled already")
    p.set_defaults(func=cmd_gallery)

    p = sub.add_parser("serve", help="serve every compiled workflow over HTTP (OpenAI chat completions, a chat page)")
    p.add_argument("--host", default="127.0.0.1", help="the address to bind (default: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=32, help="requests to a workflow that share a forward pass (1: one at a time)")
    p.add_argument("--max-concurrent", type=int, default=256, help="requests in progress at once; more are answered 429")
    p.add_argument("--log-text", action="store_true", help="log the users' messages and the says (off: no user text in logs)")
    p.add_argument("--no-access-log", action="store_true", help="no line per request (method, path, status)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("train", help="run the training script on a TrainConfig JSON")
    p.add_argument("--config", required=True)
    p.set_defaults(func=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
