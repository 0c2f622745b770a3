"""The core's commands: validate | chat | report | export | serve | train.

``subterra compile``, ``ladder`` and ``gallery`` materialize the asset graph: they are the Dagster
side's (``subterra_dagster.cli``, which the ``subterra`` command runs, adding them to these). The
only place in ``subterra/`` that imports Dagster is ``train`` (it speaks Dagster Pipes when the
asset launches it). Heavy imports happen inside each command, so ``subterra validate`` starts fast.
"""

from __future__ import annotations

import argparse
import json
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

    import torch

    # the forwards of every model share these threads; one core is left to the HTTP side (a thread
    # more on the small products of a small model mostly waits, spinning, on the others)
    torch.set_num_threads(args.torch_threads or max(1, (os.cpu_count() or 1) - 1))
    settings = _settings()
    config = ServerConfig(api_key=os.environ.get("SUBTERRA_API_KEY") or None, max_batch=args.max_batch,
                          max_concurrent=args.max_concurrent, log_text=args.log_text)
    deployment = Deployment(Store(settings.db_path), settings.data_dir, max_batch=config.max_batch,
                            refresh_seconds=config.refresh_seconds, keep_seconds=config.keep_seconds)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    workflows = deployment.workflows()
    print(f"serving {', '.join(workflows) or 'no compiled workflow yet (subterra compile FILE first)'} on "
          f"http://{args.host}:{args.port} (chat page: /, API: /v1/chat/completions; "
          f"{'API key required' if config.api_key else 'no API key set: SUBTERRA_API_KEY sets one'}; "
          f"{torch.get_num_threads()} torch threads)", flush=True)
    uvicorn.run(create_app(deployment, config), host=args.host, port=args.port, log_level="info",
                access_log=not args.no_access_log)
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
    p = sub.add_parser("serve", help="serve every compiled workflow over HTTP (OpenAI chat completions, a chat page)")
    p.add_argument("--host", default="127.0.0.1", help="the address to bind (default: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=32, help="requests to a workflow that share a forward pass (1: one at a time)")
    p.add_argument("--torch-threads", type=int, default=0,
                   help="CPU threads for the forward passes (default 0: every core but one, at least one)")
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
