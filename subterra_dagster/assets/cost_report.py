import json

import dagster as dg

from subterra_dagster.assets.loading import snapshot
from subterra_dagster.assets.metadata import readable
from subterra_dagster.assets.partitions import workflows_partitions
from subterra_dagster.assets.tables import upstream
from subterra_dagster.assets.settings import PriceSettings
from subterra_dagster.resources import StoreResource


READS = ('workflow_definitions', 'eval_scores', 'trained_weights', 'validated_dataset', 'synthetic_corpus')  # the tables this asset reads (assets.tables)


@dg.asset(partitions_def=workflows_partitions, deps=upstream("cost_report", READS), group_name="compile", kinds={"duckdb"})
def cost_report(context: dg.AssetExecutionContext, config: PriceSettings, store: StoreResource) -> dg.MaterializeResult:
    """Frontier-with-procedure vs every evaluated route, per conversation and holdout; multiplier
    over the deployed route, compile cost (training plus teacher), break-even, % of frontier
    quality, and which parts used Claude."""
    import polars as pl

    from subterra.cost import TeacherSpend, build_cost_report

    db = store.get()
    wf = snapshot(db, context.partition_key)
    scores = db.read("eval_scores", wf.id)
    training = db.read("trained_weights", wf.id).row(0, named=True)
    holdout = db.read("validated_dataset", wf.id).filter(pl.col("split") == "holdout")
    references = [json.loads(m) for m in holdout["messages"]]
    spend = TeacherSpend.of(db.read("synthetic_corpus", wf.id))
    table, summary, markdown = build_cost_report(wf, scores, training, references, config.prices(), spend)
    db.replace_partition("cost_report", wf.id, table)
    return dg.MaterializeResult(
        metadata=readable({
            "report": dg.MetadataValue.md(markdown),
            "deployed_route": summary["deployed_route"],
            "baseline": summary["baseline"],
            "multiplier": summary["multiplier"],
            "compile_cost_usd": summary["compile_cost_usd"],
            "teacher_cost_usd": summary["teacher_cost_usd"],
            "pct_of_frontier_quality": summary["pct_of_frontier_quality"],
            "claude": dg.MetadataValue.json(summary["claude"]),
            "breakeven_conversations": summary["breakeven_conversations"],
        })
    )
