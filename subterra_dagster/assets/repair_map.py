import dagster as dg

from subterra_dagster.assets.partitions import workflows_partitions
from subterra_dagster.assets.tables import upstream
from subterra_dagster.resources import StoreResource


READS = ('workflow_definitions', 'eval_scenarios')  # the tables this asset reads (assets.tables)


@dg.asset(partitions_def=workflows_partitions, deps=upstream("repair_map", READS), group_name="repair", kinds={"duckdb"})
def repair_map(context: dg.AssetExecutionContext, store: StoreResource) -> dg.MaterializeResult:
    """Validation failures clustered by where they first went wrong (error kind, step, edge,
    off-script behaviour, slot), with counts and examples, per route. Only the ``validation``
    set: a repair round is built on it and never sees a test set."""
    import polars as pl

    from subterra.repair import REPAIR_SETS
    from subterra.repair import repair_map as build_map

    db = store.get()
    workflow = context.partition_key
    table = build_map(db.read("eval_scenarios", workflow).filter(pl.col("set").is_in(REPAIR_SETS)))
    db.replace_partition("repair_map", workflow, table)
    metadata: dict = {"clusters": table.height, "failures": int(table["failures"].sum()) if table.height else 0}
    for (route,), part in table.group_by("route", maintain_order=True):
        shown = part.head(10).select("cluster", "failures", "share", "holdouts")
        metadata[f"{route}_top_clusters"] = dg.MetadataValue.md(shown.to_pandas().to_markdown(index=False, floatfmt=".3f"))
    return dg.MaterializeResult(metadata=metadata)
