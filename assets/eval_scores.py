import dagster as dg

from assets.loading import snapshot
from assets.partitions import workflows_partitions
from assets.trained_weights import trained_weights
from resources import ClaudeResource, SettingsResource, StoreResource


class EvalSettings(dg.Config):
    scenarios: int = 200  # per holdout
    batch_size: int = 100
    max_say_tokens: int = 64
    use_lexicon: bool = True  # copy constraint narrowed by the compile's lexicon of procedure words
    copy_runs: bool = True  # with the lexicon, a value is a whole run between procedure words


@dg.asset(partitions_def=workflows_partitions, deps=[trained_weights], group_name="compile", kinds={"duckdb"})
def eval_scores(
    context: dg.AssetExecutionContext,
    config: EvalSettings,
    settings: SettingsResource,
    store: StoreResource,
    claude: ClaudeResource,
) -> dg.MaterializeResult:
    """The compiled model on both holdouts, with no procedure in its context.

    With Claude (the claude resource): Claude can play the user, the frontier route (Claude with
    the procedure in context) plays the same scenarios, and a judge scores every conversation on
    the five criteria; the route ``frontier`` rows and the ``judge_*`` columns sit beside the
    objective scores, with each route's % of frontier quality."""
    import polars as pl

    from subterra.evaluation import EvalConfig, aggregate, evaluate, failure_summary
    from subterra.simulator import SCRIPTED

    db = store.get()
    wf = snapshot(db, context.partition_key)
    model_dir = db.read("trained_weights", wf.id).row(0, named=True)["model_dir"]
    rows = db.read("validated_dataset", wf.id)
    eval_config = EvalConfig(**config.model_dump())
    setup = claude.get()
    answers = users = None
    if any(setup.uses(part) for part in ("user", "judge", "frontier")):
        from subterra.claude_spool import answers_for
        from subterra.claude_user import claude_users

        answers = answers_for(setup, settings.get().claude_dir, wf.id, say=context.log.info)
        users = claude_users(answers, setup.settings.user_model) if setup.uses("user") else None
    result = evaluate(
        model_dir, wf, rows, eval_config, users=users or SCRIPTED,
        progress=lambda done, total: context.log.info(f"eval: {done}/{total} scenarios"),
    )
    scenarios = result.scenarios
    if setup.uses("frontier"):
        from subterra.frontier import evaluate_frontier

        frontier = evaluate_frontier(
            answers, wf, rows, setup.settings.frontier_model, eval_config, users or SCRIPTED,
            progress=lambda done, total: context.log.info(f"frontier route: {done}/{total} scenarios"),
        )
        scenarios = pl.concat([scenarios, frontier.scenarios], how="diagonal_relaxed")
    if setup.uses("judge"):
        from subterra.judge import judge_scenarios

        judges = [setup.settings.judge_model] + ([setup.settings.second_judge_model] if setup.settings.second_judge_model else [])
        scenarios = judge_scenarios(answers, wf, scenarios, rows, judges)
    from subterra.frontier import versus_frontier

    scores = versus_frontier(aggregate(scenarios))
    db.replace_partitions(wf.id, {"eval_scenarios": scenarios, "eval_scores": scores})
    failures = failure_summary(scenarios.filter(pl.col("route") != "frontier"))
    metadata = {
        "scores": dg.MetadataValue.md(scores.to_pandas().to_markdown(index=False, floatfmt=".3f")),
        "where_failures_start": dg.MetadataValue.md(failures.head(20).to_pandas().to_markdown(index=False) if failures.height else "none"),
        "claude": dg.MetadataValue.json(setup.status()),
    }
    for row in scores.iter_rows(named=True):
        prefix = "" if row["route"] != "frontier" else "frontier_"
        metadata[f"{prefix}{row['holdout']}_strict_pass"] = row["strict_pass"]
        metadata[f"{prefix}{row['holdout']}_partial_credit"] = row["partial_credit"]
        if row.get("pct_of_frontier_quality") is not None and row["route"] != "frontier":
            metadata[f"{row['holdout']}_pct_of_frontier_quality"] = row["pct_of_frontier_quality"]
    if answers is not None:
        metadata["claude_answers_requested"] = dg.MetadataValue.json(dict(answers.received))
        metadata["claude_answers_kept_from_before"] = dg.MetadataValue.json(dict(answers.reused))
    return dg.MaterializeResult(metadata=metadata)
