import dagster as dg

from subterra_dagster.assets.loading import snapshot
from subterra_dagster.assets.partitions import workflows_partitions
from subterra_dagster.assets.tables import upstream
from subterra_dagster.assets.settings import RepairSettings
from subterra_dagster.resources import ClaudeResource, SettingsResource, StoreResource, TeacherResource, launch_training


READS = ('workflow_definitions', 'trained_weights', 'eval_runs', 'eval_scenarios', 'validated_dataset', 'workflow_paths')  # the tables this asset reads (assets.tables)


@dg.asset(
    partitions_def=workflows_partitions, deps=upstream("promoted_model", READS), group_name="repair", kinds={"pytorch", "duckdb"},
    pool="subterra_training",  # dagster_instance.yaml: one training at a time (a repair round trains)
)
def promoted_model(
    context: dg.AssetExecutionContext,
    config: RepairSettings,
    settings: SettingsResource,
    store: StoreResource,
    teacher: TeacherResource,
    claude: ClaudeResource,
    pipes_subprocess_client: dg.PipesSubprocessClient,
) -> dg.MaterializeResult:
    """Repair rounds: training conversations through the failing clusters of ``validation``,
    training continued from the current weights, the candidate re-evaluated on the same validation
    scenarios and promoted only if strict pass improves and no cluster grows (no test set is read
    by any of it). Records which model serves the workflow, and why.

    A candidate is played by the same users as the compile's evaluation (Claude, if Claude played
    the user there), so the gate compares like with like."""
    from dataclasses import replace
    from pathlib import Path

    import polars as pl

    from subterra.claude_user import users_like
    from subterra.evaluation import EvalConfig
    from subterra.paths import paths_from_table
    from subterra.promotion import PROMOTIONS_SCHEMA
    from subterra.repair import REPAIR_SETS, repair_rounds
    from subterra.training import TrainConfig

    db = store.get()
    paths = settings.get()
    wf = snapshot(db, context.partition_key)
    repair = config.repair_config()
    trained = db.read("trained_weights", wf.id).row(0, named=True)
    eval_config = replace(EvalConfig.from_json(db.read("eval_runs", wf.id).row(0, named=True)["config"]), routes=(repair.route,),
                          sets=REPAIR_SETS, natural=False)
    current = db.read("eval_scenarios", wf.id).filter((pl.col("route") == repair.route) & pl.col("set").is_in(REPAIR_SETS))
    if not current.height:
        raise dg.Failure(f"{wf.id}: route {repair.route} was not evaluated on validation; nothing to gate a promotion on")
    try:  # the candidate is played by the users that played the compile's evaluation
        users = users_like(current, claude.get(), paths.claude_dir, wf.id, say=context.log.info)
    except ValueError as exc:
        raise dg.Failure(f"{wf.id}: {exc}") from exc
    outcome = repair_rounds(
        wf, db.read("validated_dataset", wf.id), current, paths_from_table(db.read("workflow_paths", wf.id)), teacher.get(),
        TrainConfig.from_json(Path(db.located(trained["model_dir"])) / "train_config.json"), trained["model_dir"], repair,
        eval_config, users,
        train_round=lambda round_config, config_file: launch_training(context, pipes_subprocess_client, round_config, config_file)[1],
        folders=lambda tag: (paths.run_dir(wf.id, tag), str(paths.model_dir(wf.id, tag))),
        say=context.log.info, locate=db.located,
    )
    decisions, changes, scores = outcome.decisions, outcome.changes, outcome.scores
    table = pl.DataFrame(decisions, schema=PROMOTIONS_SCHEMA)
    db.replace_partition("promotions", wf.id, table)
    if changes:
        db.replace_partition("repair_changes", wf.id, pl.concat(changes).with_columns(pl.lit(wf.id).alias("workflow")))
        db.replace_partition("repair_scores", wf.id, pl.concat(scores))
    else:  # no round ran: an earlier run's rounds are not this model's
        db.delete_partition("repair_changes", wf.id)
        db.delete_partition("repair_scores", wf.id)
    last = decisions[-1]
    shown = table.select("round", "promoted", "strict_before", "strict_after", "reason")
    metadata = {
        "promoted_model": dg.MetadataValue.path(last["model_dir"]),
        "promoted_round": int(table.filter(pl.col("model_dir") == last["model_dir"])["round"].min()),
        "reason": last["reason"],
        "decisions": dg.MetadataValue.md(shown.to_pandas().to_markdown(index=False, floatfmt=".3f")),
    }
    if changes:
        moved = pl.concat(changes).filter(pl.col("change") != 0).select("round", "cluster", "before", "after", "change")
        metadata["cluster_changes"] = dg.MetadataValue.md(moved.to_pandas().to_markdown(index=False) if moved.height else "none")
    return dg.MaterializeResult(metadata=metadata)
