"""``subterra``: validate | compile | chat | report | train.

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


def cmd_compile(args) -> int:
    from subterra.locks import LockBusy, file_lock
    from subterra.workflow import WorkflowError, load_workflow

    settings = _settings()
    source = Path(args.file)
    try:
        wf = load_workflow(source)
    except WorkflowError as exc:
        print(exc, file=sys.stderr)
        return 1
    try:
        with file_lock(settings.compile_lock(wf.id), wait=False):  # never two `subterra compile` of one workflow
            return _compile(settings, source, wf, full=args.full)
    except LockBusy:
        print(f"{wf.id}: another `subterra compile` of this workflow is running; try again when it ends", file=sys.stderr)
        return 1


_RUNNING = ("STARTING", "STARTED", "CANCELING")  # a run that is executing (queued ones wait for this one)
_VIA_CLI = {"subterra/via": "cli"}  # runs of `subterra compile`: the lock covers them, and frees itself if one dies


def _compile(settings, source: Path, wf, full: bool = False) -> int:
    import os

    import dagster as dg

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
    from assets import COMPILE_ASSETS, workflows_partitions
    from definitions import build_definitions

    defs = build_definitions(str(settings.data_dir), recompile="full" if full else "")
    instance.add_dynamic_partitions(workflows_partitions.name, [wf.id])
    resources = {key: value for key, value in defs.resources.items()}
    mode = resources["recompile"].get()
    print(f"compiling {wf.id} ({len(wf.nodes)} nodes, hash {wf.short_hash}) into {settings.data_dir} ({mode})")
    result = dg.materialize(COMPILE_ASSETS, partition_key=wf.id, resources=resources, instance=instance, tags=_VIA_CLI,
                            run_config=resources["recompile"].run_config(), raise_on_error=False)
    if not result.success:
        for event in result.all_events:
            if event.is_failure:
                print(event.message, file=sys.stderr)
        print(f"compile of {wf.id} failed; the last good model (if any) is untouched", file=sys.stderr)
        return 1
    return cmd_report(argparse.Namespace(workflow=wf.id))


def cmd_report(args) -> int:
    import polars as pl

    from subterra.store import Store

    store = Store(_settings().db_path)
    pl.Config.set_tbl_cols(30)
    pl.Config.set_tbl_width_chars(200)
    pl.Config.set_float_precision(3)
    pl.Config.set_tbl_hide_dataframe_shape(True)
    try:
        scores = store.read("eval_scores", args.workflow)
        cost = store.read("cost_report", args.workflow)
        training = store.read("trained_weights", args.workflow)
    except (LookupError, FileNotFoundError) as exc:
        print(f"no report for {args.workflow}: {exc}", file=sys.stderr)
        return 1
    t = training.row(0, named=True)
    print(f"\n== {args.workflow}: model {t['model_dir']} ({t['params']:,} params, {t['steps']} steps, "
          f"{t['train_seconds']:.0f} s, {t['tokens_per_second']:.0f} tokens/s)")
    print("\n== eval_scores")
    print(scores.drop("workflow"))
    print("\n== cost_report (per conversation)")
    print(cost.select("route", "tokens_in", "tokens_out", "usd_per_conversation", "token_source"))
    c = cost.row(0, named=True)
    compile_parts = (f" (training ${c['training_cost_usd']:.4f} + teacher ${c['teacher_cost_usd']:.4f})"
                     if c.get("teacher_cost_usd") is not None else "")
    print(f"multiplier {c['multiplier']:.1f}x (price {c['price_factor']:.1f}x x volume {c['volume_factor']:.2f}x); "
          f"compile ${c['compile_cost_usd']:.4f}{compile_parts}; pays for itself after {c['breakeven_conversations']} conversations")
    if c.get("pct_of_frontier_quality") is not None:
        print(f"{c['pct_of_frontier_quality']:.1f}% of frontier quality (judged, holdout)")
    if c.get("claude_parts"):
        print("\n== Claude")
        for part, what in json.loads(c["claude_parts"]).items():
            print(f"{part}: {what}")
    return 0


def cmd_chat(args) -> int:
    from subterra.runtime import ChatSession
    from subterra.store import Store
    from subterra.workflow import Workflow

    store = Store(_settings().db_path)
    try:
        trained = store.read("trained_weights", args.workflow).row(0, named=True)
        model_dir = trained["model_dir"]
        # the definition the model was compiled from: a later compile that failed or was refused
        # (its workflow_definitions row is newer) leaves the model and its definition as they were
        definition = trained.get("definition") or store.read("workflow_definitions", args.workflow).row(0, named=True)["definition"]
        wf = Workflow.from_dict(json.loads(definition))
    except (LookupError, FileNotFoundError) as exc:
        print(f"no compiled model for {args.workflow}: {exc}", file=sys.stderr)
        return 1
    session = ChatSession(model_dir, wf)
    print(f"{wf.title or wf.id} (compiled model {model_dir}); empty line to quit")
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
    p.add_argument("--full", action="store_true",
                   help="write every conversation again and train from scratch (default: reuse what the change did not touch)")
    p.set_defaults(func=cmd_compile)
    p = sub.add_parser("chat", help="talk to a compiled workflow in the terminal")
    p.add_argument("workflow")
    p.add_argument("--forms", action="store_true", help="also show the form (node, slots) of every reply")
    p.set_defaults(func=cmd_chat)
    p = sub.add_parser("report", help="print a workflow's scores and cost report from DuckDB")
    p.add_argument("workflow")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("train", help="run the training script on a TrainConfig JSON")
    p.add_argument("--config", required=True)
    p.set_defaults(func=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
