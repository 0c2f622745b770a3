from typing import Optional

import dagster as dg

from assets.loading import snapshot
from assets.partitions import workflows_partitions
from assets.repair_map import repair_map
from assets.trained_weights import launch_training
from resources import ClaudeResource, SettingsResource, StoreResource, TeacherResource
from subterra.routes import DEPLOYED


class RepairSettings(dg.Config):
    rounds: int = 1  # repair rounds (0: only record the compile's model as promoted)
    route: str = DEPLOYED  # whose failures are repaired and whose validation score gates promotion
    per_failure: int = 4  # training conversations per held-out failure of a cluster
    max_per_cluster: int = 24
    max_conversations: int = 400
    replay_ratio: float = 1.0  # original training conversations mixed in, per repair conversation
    offscript_rate: float = 0.15
    random_value_rate: float = 0.5
    seed: int = 0
    tolerance: int = 0  # a cluster may grow by this many failures without refusing the promotion
    epochs: float = 1.0  # training of a round, from the current weights
    learning_rate: Optional[float] = None  # None: the compile's
    max_tokens: int = 0  # compute budget of a round (0: no cap)
    max_steps: int = -1

    def repair_config(self):
        from subterra.repair import RepairConfig

        return RepairConfig(**{k: getattr(self, k) for k in RepairConfig.__dataclass_fields__})


@dg.asset(
    partitions_def=workflows_partitions, deps=[repair_map], group_name="repair", kinds={"pytorch", "duckdb"},
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

    from subterra.atomic import atomic_path
    from subterra.evaluation import EvalConfig, evaluate
    from subterra.paths import paths_from_table
    from subterra.promotion import PROMOTIONS_SCHEMA, decide, initial_row, promotion_row
    from subterra.repair import REPAIR_SETS, repair_conversations, repair_map as build_map, repair_training_set, training_phrasing
    from subterra.routes import local_routes
    from subterra.simulator import SCRIPTED
    from subterra.training import TrainConfig

    db = store.get()
    paths = settings.get()
    wf = snapshot(db, context.partition_key)
    route = config.route
    trained = db.read("trained_weights", wf.id).row(0, named=True)
    eval_config = replace(EvalConfig.from_json(db.read("eval_runs", wf.id).row(0, named=True)["config"]), routes=(route,),
                          sets=REPAIR_SETS, natural=False)
    current = db.read("eval_scenarios", wf.id).filter((pl.col("route") == route) & pl.col("set").is_in(REPAIR_SETS))
    if not current.height:
        raise dg.Failure(f"{wf.id}: route {route} was not evaluated on validation; nothing to gate a promotion on")
    users = SCRIPTED
    simulator = current["user_simulator"][0] if "user_simulator" in current.columns else SCRIPTED.name
    if simulator != SCRIPTED.name:
        setup = claude.get()
        if not setup.uses("user") or simulator != f"claude:{setup.settings.user_model}":
            raise dg.Failure(f"{wf.id}: the evaluation's user was {simulator}; the claude resource does not play that user "
                             "now, so a candidate could not be compared on the same users (rerun eval_scores first)")
        from subterra.claude_spool import answers_for
        from subterra.claude_user import claude_users

        users = claude_users(answers_for(setup, paths.claude_dir, wf.id, say=context.log.info), setup.settings.user_model)
    current_dir = trained["model_dir"]
    decisions = [initial_row(wf.id, current_dir, route, current)]
    changes, scores = [], []
    corpus = db.read("validated_dataset", wf.id)
    train = corpus.filter(pl.col("split") == "train").drop("n_tokens")
    held_texts = set(corpus.filter(pl.col("split").is_in(REPAIR_SETS))["messages"])  # a repair conversation is none of these
    spoken = training_phrasing(train)  # repair users speak the compile's phrasings (core or wide)
    workflow_paths = paths_from_table(db.read("workflow_paths", wf.id))
    compile_config = TrainConfig.from_json(Path(db.located(current_dir)) / "train_config.json")
    for round_no in range(1, config.rounds + 1):
        clusters = build_map(current).filter(pl.col("route") == route)
        if not clusters.height:
            context.log.info(f"round {round_no}: no held-out failure left on {route}; nothing to repair")
            break
        repair = repair_conversations(wf, clusters, workflow_paths, teacher.get(), held_texts, round_no, config.repair_config(),
                                      phrasing=spoken)
        tag = f"{Path(trained['model_dir']).name}-repair{round_no}"  # the rounds of this compile's model
        run_dir = paths.run_dir(wf.id, tag)
        run_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(run_dir / "train.parquet") as tmp:
            repair_training_set(train, repair, config.repair_config()).write_parquet(tmp)
        with atomic_path(run_dir / "lexicon.parquet") as tmp:
            pl.concat([train.select(repair.columns), repair], how="vertical_relaxed").write_parquet(tmp)
        candidate_dir = str(paths.model_dir(wf.id, tag))
        round_config = replace(
            compile_config,
            init_from=db.located(current_dir),  # continued training: the current weights and their tokenizer
            train_data=str(run_dir / "train.parquet"),
            lexicon_data=str(run_dir / "lexicon.parquet"),
            output_dir=candidate_dir,
            checkpoint_dir="",
            epochs=config.epochs,
            learning_rate=config.learning_rate or compile_config.learning_rate,
            max_tokens=config.max_tokens,
            max_steps=config.max_steps,
        )
        context.log.info(
            f"round {round_no}: {repair.height} repair conversations through {clusters.height} clusters "
            f"(+ replay), training from {current_dir}"
        )
        _, result = launch_training(context, pipes_subprocess_client, round_config, run_dir / "train_config.json")
        evaluated = evaluate(
            local_routes([route], None, candidate_dir), wf, corpus, eval_config, users=users,
            progress=lambda name, done, total: context.log.info(f"round {round_no} eval {name}: {done}/{total}"),
        )
        decision = decide(current, evaluated.scenarios, route, config.tolerance)
        context.log.info(f"round {round_no}: {decision.reason}")
        if decision.promoted:
            current_dir, current = candidate_dir, evaluated.scenarios
        decisions.append(promotion_row(wf.id, round_no, candidate_dir, current_dir, route, decision))
        changes.append(decision.changes.with_columns(pl.lit(round_no).alias("round"), pl.lit(route).alias("route")))
        scores.append(
            evaluated.scores.with_columns(
                pl.lit(round_no).alias("round"),
                pl.lit(candidate_dir).alias("model_dir"),
                pl.lit(repair.height).alias("repair_conversations"),
                pl.lit(result.train_seconds).alias("train_seconds"),
                pl.lit(decision.promoted).alias("promoted"),
            )
        )
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
