import dagster as dg

from assets.loading import snapshot
from assets.partitions import workflows_partitions
from assets.trained_weights import trained_weights
from resources import StoreResource


class EvalSettings(dg.Config):
    scenarios: int = 200  # per holdout
    batch_size: int = 100
    max_say_tokens: int = 64
    use_lexicon: bool = True  # copy constraint narrowed by the compile's lexicon of procedure words
    copy_runs: bool = True  # with the lexicon, a value is a whole run between procedure words


@dg.asset(partitions_def=workflows_partitions, deps=[trained_weights], group_name="compile", kinds={"duckdb"})
def eval_scores(context: dg.AssetExecutionContext, config: EvalSettings, store: StoreResource) -> dg.MaterializeResult:
    """The compiled model on both holdouts, with a scripted user and no procedure in its context."""
    from subterra.evaluation import EvalConfig, evaluate, failure_summary

    db = store.get()
    wf = snapshot(db, context.partition_key)
    model_dir = db.read("trained_weights", wf.id).row(0, named=True)["model_dir"]
    rows = db.read("validated_dataset", wf.id)
    result = evaluate(
        model_dir, wf, rows, EvalConfig(**config.model_dump()),
        progress=lambda done, total: context.log.info(f"eval: {done}/{total} scenarios"),
    )
    db.replace_partitions(wf.id, {"eval_scenarios": result.scenarios, "eval_scores": result.scores})
    failures = failure_summary(result.scenarios)
    metadata = {
        "scores": dg.MetadataValue.md(result.scores.to_pandas().to_markdown(index=False, floatfmt=".3f")),
        "where_failures_start": dg.MetadataValue.md(failures.head(20).to_pandas().to_markdown(index=False) if failures.height else "none"),
    }
    for row in result.scores.iter_rows(named=True):
        metadata[f"{row['holdout']}_strict_pass"] = row["strict_pass"]
        metadata[f"{row['holdout']}_partial_credit"] = row["partial_credit"]
    return dg.MaterializeResult(metadata=metadata)
