import dagster as dg

from subterra_dagster.assets.loading import snapshot
from subterra_dagster.assets.partitions import workflows_partitions
from subterra_dagster.assets.tables import upstream
from subterra_dagster.assets.settings import EvalSettings
from subterra_dagster.resources import ClaudeResource, SettingsResource, StoreResource
from subterra.routes import DEPLOYED, FRONTIER_ROUTE


CHECK = "deployed_route_holds"


READS = ('workflow_definitions', 'trained_weights', 'validated_dataset')  # the tables this asset reads (assets.tables)


@dg.asset(partitions_def=workflows_partitions, deps=upstream("eval_scores", READS), group_name="compile", kinds={"duckdb"},
          check_specs=[dg.AssetCheckSpec(CHECK, asset="eval_scores", blocking=False,
                                         description="the deployed route's validation strict pass is above the floor and "
                                                     "not far below the last good model's (a warning: a compile "
                                                     "that came out broken, one transition wrong everywhere, shows "
                                                     "here, and the last good model goes on serving; an "
                                                     "incremental recompile holds only within "
                                                     "incremental_max_drop of the model it continues, else a "
                                                     "full recompile follows)")])
def eval_scores(
    context: dg.AssetExecutionContext,
    config: EvalSettings,
    settings: SettingsResource,
    store: StoreResource,
    claude: ClaudeResource,
) -> dg.MaterializeResult:
    """Every route on the held-out sets, played by the same users: the base model with the procedure
    in its prompt, and the compiled model with none; each free or on a prefilled form. The test sets
    (``natural``: people's lines played as scripts, ``test_unseen``, ``holdout``: seen phrasings)
    are reported; only ``validation`` decides (the check below, repair, promotion).

    With Claude (the claude resource): Claude can play the user, the frontier route (Claude with
    the procedure in context) plays the same scenarios, and a judge scores every conversation on
    the five criteria; the route ``frontier`` rows and the ``judge_*`` columns sit beside the
    objective scores, with each route's % of frontier quality.

    A model whose deployed route holds on validation becomes the workflow's last good model
    (``good_models``); one that does not is kept out of service while a good one is there."""
    import polars as pl

    from subterra.evaluation import aggregate, evaluate, failure_summary, headline
    from subterra.natural import load_natural_sets
    from subterra.routes import local_routes
    from subterra.serving import GOOD_MODELS, good_model_frame, holds, last_good_model, serving_model
    from subterra.simulator import SCRIPTED
    from subterra.student import base_model_dir

    db = store.get()
    wf = snapshot(db, context.partition_key)
    trained_rows = db.read("trained_weights", wf.id)
    trained = trained_rows.row(0, named=True)
    base_dir = base_model_dir(trained["base_model"], str(settings.get().data_dir))
    routes = local_routes(config.routes, base_dir, db.located(trained["model_dir"]))
    skipped = [r for r in config.routes if r not in {route.name for route in routes}]
    if skipped:
        context.log.warning(f"{wf.id}: no pretrained base model ({trained['base_model']}): skipping {', '.join(skipped)}")
    rows = db.read("validated_dataset", wf.id)
    eval_config = config.eval_config()
    setup = claude.get()
    answers = users = None
    if any(setup.uses(part) for part in ("user", "judge", "frontier")):
        from subterra.claude_spool import answers_for
        from subterra.claude_user import claude_users

        answers = answers_for(setup, settings.get().claude_dir, wf.id, say=context.log.info)
        users = claude_users(answers, setup.settings.user_model) if setup.uses("user") else None
    users = users or SCRIPTED
    natural, problems = load_natural_sets(wf, settings.get().natural_dir) if eval_config.natural else ({}, [])
    for problem in problems:  # a broken or outdated natural file is reported and skipped, never fatal
        context.log.warning(f"{wf.id}: natural set skipped: {problem}")
    from subterra.progress import Progress

    meters = {r.name: Progress(f"eval {r.name}", context.log.info) for r in routes}
    result = evaluate(
        routes, wf, rows, eval_config, users=users, natural=natural,
        progress=lambda route, done, total: meters[route](done, total),
    )
    scenarios = result.scenarios
    played = [r.name for r in routes]
    if setup.uses("frontier"):
        from subterra.frontier import ROUTE as FRONTIER
        from subterra.frontier import evaluate_frontier

        frontier = evaluate_frontier(
            answers, wf, rows, setup.settings.frontier_model, eval_config, users,
            progress=Progress("frontier route", context.log.info),
        )
        scenarios = pl.concat([scenarios, frontier.scenarios], how="diagonal_relaxed")
        played.append(FRONTIER)
    if setup.uses("judge"):
        from subterra.judge import judge_scenarios

        judges = [setup.settings.judge_model] + ([setup.settings.second_judge_model] if setup.settings.second_judge_model else [])
        scenarios = judge_scenarios(answers, wf, scenarios, rows, judges)
    from subterra.frontier import versus_frontier

    scores = versus_frontier(aggregate(scenarios))
    good = last_good_model(db, wf.id)
    last_good = good["strict_pass"] if good is not None and good["model_dir"] != trained["model_dir"] else None
    strict = deployed_strict(scores)
    continued = trained.get("recompile") == "incremental" and bool(trained.get("continued_from"))
    gate = config.gate()
    max_drop = min(gate.max_drop, gate.incremental_max_drop) if continued else gate.max_drop
    passed, why = holds(strict, last_good, gate.min_strict_pass, max_drop, continued=continued)
    run = pl.DataFrame([{
        "workflow": wf.id, "config": eval_config.to_json(), "routes": played, "user_simulator": users.name,
        "base_model": trained["base_model"], "base_dir": base_dir, "compiled_dir": trained["model_dir"],
        "strict_pass": strict, "holds": passed, "verdict": why,
    }], schema_overrides={"base_dir": pl.String, "strict_pass": pl.Float64})
    frames = {"eval_scenarios": scenarios, "eval_scores": scores, "eval_runs": run}
    if passed:  # in the same transaction: a model is good exactly when its eval says it held
        frames[GOOD_MODELS] = good_model_frame(trained_rows, strict, why)
    db.replace_partitions(wf.id, frames)
    serving = serving_model(db, wf.id)
    failures = failure_summary(scenarios.filter(pl.col("route") != FRONTIER_ROUTE))
    metadata = {
        "headline": dg.MetadataValue.md(headline(scores.filter(pl.col("route") == DEPLOYED))),
        "natural_sets": ", ".join(sorted(natural)) or "none (no data/natural file for this workflow)",
        "scores": dg.MetadataValue.md(scores.rename(BATCH_LATENCY).to_pandas().to_markdown(index=False, floatfmt=".3f")
                                      + "\n\n" + batch_latency_note(eval_config.batch_size)),
        "where_failures_start": dg.MetadataValue.md(failures.head(20).to_pandas().to_markdown(index=False) if failures.height else "none"),
        "routes": ", ".join(played),
        "claude": dg.MetadataValue.json(setup.status()),
    }
    for row in scores.iter_rows(named=True):
        metadata[f"{row['route']}_{row['set']}_strict_pass"] = row["strict_pass"]
        if row.get("pct_of_frontier_quality") is not None and row["route"] != FRONTIER_ROUTE:
            metadata[f"{row['route']}_{row['set']}_pct_of_frontier_quality"] = row["pct_of_frontier_quality"]
    if answers is not None:
        metadata["claude_answers_requested"] = dg.MetadataValue.json(dict(answers.received))
        metadata["claude_answers_kept_from_before"] = dg.MetadataValue.json(dict(answers.reused))
    metadata["serving"] = dg.MetadataValue.path(serving.model_dir)
    metadata["serving_why"] = serving.why
    if not passed:
        context.log.warning(f"{wf.id}: {why}; serving {serving.model_dir}: {serving.why}"
                            + ("; a full recompile is due" if continued else ""))
    check = dg.AssetCheckResult(
        check_name=CHECK, passed=passed, severity=dg.AssetCheckSeverity.WARN, description=f"{wf.id}: {why}",
        # the thresholds as text: settings, not measurements (the UI plots numbers over time)
        metadata={"workflow": wf.id, "strict_pass": strict, "last_good_strict_pass": last_good,
                  "floor": dg.MetadataValue.text(f"{gate.min_strict_pass:g}"), "max_drop": dg.MetadataValue.text(f"{max_drop:g}"), "recompile": trained.get("recompile") or "full", "verdict": why,
                  "serving": serving.model_dir},
    )
    return dg.MaterializeResult(metadata=metadata, check_results=[check])


# the eval plays its conversations as rows of one batch: a turn's latency there is a batch's, not a user's
BATCH_LATENCY = {"latency_p50_ms": "batch_turn_p50_ms", "latency_p95_ms": "batch_turn_p95_ms"}
def batch_latency_note(batch: int) -> str:
    return (f"batch_turn_p50/p95_ms: per turn while up to {batch} conversations share each forward pass "
            "(the eval's batch), not what one user waits; `subterra serve`'s latency is measured by "
            "`python -m bench.bench_serve`.")


def deployed_strict(scores) -> float | None:
    """The deployed route's validation strict pass in an eval_scores frame, if it has one: the
    gate reads validation, never a test set."""
    import polars as pl

    rows = scores.filter((pl.col("route") == DEPLOYED) & (pl.col("set") == "validation"))
    return float(rows["strict_pass"][0]) if rows.height else None
