import dagster as dg

from subterra_dagster.assets.partitions import workflows_partitions
from subterra_dagster.assets.tables import upstream
from subterra_dagster.resources import SettingsResource, StoreResource


READS = ()  # the tables this asset reads (assets.tables)


@dg.asset(partitions_def=workflows_partitions, deps=upstream("serving_model", READS, after=('eval_scores', 'promoted_model')), group_name="compile", kinds={"duckdb"})
def serving_model(context: dg.AssetExecutionContext, settings: SettingsResource, store: StoreResource) -> dg.MaterializeResult:
    """Which model serves the workflow (what ``subterra serve`` and ``subterra chat`` load), why,
    since when, and its scores; a running server picks it up within seconds."""
    import polars as pl

    from subterra.serving import SERVING_MODELS, serving_row

    db = store.get()
    row = serving_row(db, context.partition_key, settings.get().data_dir)
    db.replace_partition(SERVING_MODELS, context.partition_key, pl.DataFrame([row]))

    def score(name: str):
        value, n = row[f"{name}_strict_pass"], row[f"{name}_n"]
        return "—" if value is None else f"{value:.3f} (n={n})"

    return dg.MaterializeResult(metadata={
        "model_dir": row["model_dir"], "version": row["version"], "why": row["why"], "serving_since": row["since"],
        "natural_test_strict_pass": score("natural"), "validation_strict_pass": score("validation"),
    })
