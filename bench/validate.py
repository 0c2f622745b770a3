"""Measure a runtime choice on validation only: the same compiled model, played on the validation
sets (generated ``validation`` and people's ``validation_natural``) once per variant.

    python -m bench.validate travel_booking --set courtesy_values=false --set courtesy_values=true

Each ``--set`` is one variant (``key=value[,key=value]`` of the eval's settings, ``EvalConfig``);
the first is the baseline the others are compared with. The test sets are never played here: a
choice made on them would no longer be measured by them.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import polars as pl

from subterra.evaluation import EvalConfig, evaluate
from subterra.natural import load_natural_sets
from subterra.routes import DEPLOYED, local_routes
from subterra.serving import serving_model
from subterra.settings import Settings
from subterra.store import Store
from subterra.workflow import Workflow


def _value(text: str):
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def variant(spec: str) -> dict:
    return {k: _value(v) for k, v in (part.split("=", 1) for part in spec.split(",") if part)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workflow")
    parser.add_argument("--set", action="append", default=[], dest="variants", help="key=value[,key=value]: one variant")
    parser.add_argument("--model", default="", help="a compiled model folder (default: the one serving)")
    parser.add_argument("--scenarios", type=int, default=200)
    parser.add_argument("--dump", default="", help="write every variant's played conversations to this parquet file")
    parser.add_argument("--changed", action="store_true",
                        help="list the conversations whose strict pass a variant changed, with where each now fails")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    store = Store(settings.db_path)
    model = args.model or serving_model(store, args.workflow).model_dir
    trained = store.read("trained_weights", args.workflow).filter(pl.col("model_dir") == model)
    definition = (trained if trained.height else store.read("trained_weights", args.workflow))["definition"][0]
    wf = Workflow.from_dict(json.loads(definition))
    rows = store.read("validated_dataset", args.workflow)
    natural, problems = load_natural_sets(wf, settings.natural_dir)
    for problem in problems:
        print(f"skipped: {problem}")
    natural = {k: v for k, v in natural.items() if k == "validation_natural"}  # never a test set
    base = EvalConfig(scenarios=args.scenarios, batch_size=400, sets=("validation",), routes=(DEPLOYED,))
    print(f"{wf.id}: model {model}")
    baseline = None
    base_passed: dict[str, bool] = {}
    played = []
    for spec in args.variants or [""]:
        config = replace(base, **variant(spec))
        started = time.perf_counter()
        result = evaluate(local_routes([DEPLOYED], None, model), wf, rows, config, natural=natural)
        seconds = time.perf_counter() - started
        scores = {r["set"]: r for r in result.scores.iter_rows(named=True)}
        line = []
        for name in (*config.sets, "validation_natural"):
            r = scores.get(name)
            if r is None:
                continue
            delta = "" if baseline is None else f" ({(r['strict_pass'] - baseline[name]) * 100:+.1f} points)"
            line.append(f"{name} {r['strict_pass']:.3f} [{r['strict_pass_low']:.3f}-{r['strict_pass_high']:.3f}] "
                        f"n {r['scenarios']}, partial {r['partial_credit']:.3f}{delta}")
        if baseline is None:
            baseline = {k: v["strict_pass"] for k, v in scores.items()}
        print(f"  {spec or 'defaults'}: " + "; ".join(line) + f"  ({seconds:.0f} s)")
        played.append(result.scenarios.with_columns(pl.lit(spec or "defaults").alias("variant")))
        passed = {r["scenario_id"]: (r["strict_pass"], r["first_error"]) for r in result.scenarios.iter_rows(named=True)}
        if not base_passed:
            base_passed = {k: v[0] for k, v in passed.items()}
        elif args.changed:
            for sid, (ok, error) in sorted(passed.items()):
                if sid in base_passed and ok != base_passed[sid]:
                    print(f"    {'now passes' if ok else 'now fails'}: {sid} {'' if ok else error}")
    if args.dump:
        pl.concat(played, how="diagonal_relaxed").write_parquet(args.dump)
        print(f"conversations: {args.dump}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
