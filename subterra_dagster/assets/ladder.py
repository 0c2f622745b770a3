import dagster as dg

from subterra_dagster.assets.partitions import workflows_partitions
from subterra_dagster.assets.tables import upstream
from subterra_dagster.resources import StoreResource


READS = ('workflow_definitions', 'eval_scores', 'cost_report')  # the tables this asset reads (assets.tables)


@dg.asset(partitions_def=workflows_partitions, deps=upstream("ladder", READS, after=('promoted_model',)), group_name="repair", kinds={"duckdb"})
def ladder(context: dg.AssetExecutionContext, store: StoreResource) -> dg.MaterializeResult:
    """Every route side by side: strict pass, partial credit, slot accuracy, form validity, failure
    rate, tokens per conversation, p50 latency and $ per conversation (and the promoted model)."""
    from subterra.ladder import build_ladder

    db = store.get()
    workflow = context.partition_key
    optional = {}
    for table in ("promotions", "repair_scores"):
        try:
            optional[table] = db.read(table, workflow)
        except LookupError:
            optional[table] = None
    table = build_ladder(db.read("eval_scores", workflow), db.read("cost_report", workflow),
                         optional["promotions"], optional["repair_scores"])
    db.replace_partition("ladder", workflow, table)
    return dg.MaterializeResult(
        metadata={"ladder": dg.MetadataValue.md(table.drop("workflow").to_pandas().to_markdown(index=False, floatfmt=".4g"))}
    )
