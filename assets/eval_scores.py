import dagster as dg

from assets.loading import snapshot
from assets.partitions import workflows_partitions
from assets.trained_weights import trained_weights
from resources import SettingsResource, StoreResource
from subterra.routes import ROUTES


class EvalSettings(dg.Config):
    scenarios: int = 200  # per holdout
    batch_size: int = 100  # rows per lockstep batch (fewer if the KV cache would pass max_cache_gb)
    max_cache_gb: float = 4.0
    max_say_tokens: int = 64
    max_form_tokens: int = 160  # free-generation routes: the whole form
    extra_turns: int = 4
    routes: list[str] = list(ROUTES)  # the base-model routes need a pretrained base model
    use_lexicon: bool = True  # copy constraint narrowed by the compile's lexicon of procedure words
    copy_runs: bool = True  # with the lexicon, a value is a whole run between procedure words
    torch_threads: int = 0  # CPU threads (0: every core)

    def eval_config(self):
        from subterra.evaluation import EvalConfig

        return EvalConfig(**{**self.model_dump(), "routes": tuple(self.routes)})


@dg.asset(partitions_def=workflows_partitions, deps=[trained_weights], group_name="compile", kinds={"duckdb"})
def eval_scores(
    context: dg.AssetExecutionContext, config: EvalSettings, settings: SettingsResource, store: StoreResource
) -> dg.MaterializeResult:
    """Every route on both holdouts, played by the same scripted users: the base model with the
    procedure in its prompt, and the compiled model with none; each free or on a prefilled form."""
    import polars as pl

    from subterra.evaluation import evaluate, failure_summary
    from subterra.routes import local_routes
    from subterra.student import base_model_dir

    db = store.get()
    wf = snapshot(db, context.partition_key)
    trained = db.read("trained_weights", wf.id).row(0, named=True)
    base_dir = base_model_dir(trained["base_model"], str(settings.get().data_dir))
    routes = local_routes(config.routes, base_dir, trained["model_dir"])
    skipped = [r for r in config.routes if r not in {route.name for route in routes}]
    if skipped:
        context.log.warning(f"{wf.id}: no pretrained base model ({trained['base_model']}): skipping {', '.join(skipped)}")
    rows = db.read("validated_dataset", wf.id)
    result = evaluate(
        routes, wf, rows, config.eval_config(),
        progress=lambda route, done, total: context.log.info(f"eval {route}: {done}/{total} scenarios"),
    )
    db.replace_partition("eval_scenarios", wf.id, result.scenarios)
    db.replace_partition("eval_scores", wf.id, result.scores)
    db.replace_partition("eval_runs", wf.id, pl.DataFrame([{
        "workflow": wf.id, "config": config.eval_config().to_json(), "routes": [r.name for r in routes],
        "base_model": trained["base_model"], "base_dir": base_dir, "compiled_dir": trained["model_dir"],
    }], schema_overrides={"base_dir": pl.String}))
    failures = failure_summary(result.scenarios)
    metadata = {
        "scores": dg.MetadataValue.md(result.scores.to_pandas().to_markdown(index=False, floatfmt=".3f")),
        "where_failures_start": dg.MetadataValue.md(failures.head(20).to_pandas().to_markdown(index=False) if failures.height else "none"),
        "routes": ", ".join(r.name for r in routes),
    }
    for row in result.scores.iter_rows(named=True):
        metadata[f"{row['route']}_{row['holdout']}_strict_pass"] = row["strict_pass"]
    return dg.MaterializeResult(metadata=metadata)
