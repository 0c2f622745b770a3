import dagster as dg

from subterra_dagster.assets.loading import snapshot
from subterra_dagster.assets.partitions import workflows_partitions
from subterra_dagster.assets.tables import upstream
from subterra_dagster.resources import StoreResource
from subterra.paths import MAX_STATES


class PathsConfig(dg.Config):
    path_cap: int = 5000  # list every path up to this many; past it, a sample covering every edge
    seed: int = 0
    max_states: int = MAX_STATES  # refuse a workflow whose loops explode the state graph past this


READS = ('workflow_definitions',)  # the tables this asset reads (assets.tables)


@dg.asset(partitions_def=workflows_partitions, deps=upstream("workflow_paths", READS), group_name="compile", kinds={"duckdb"})
def workflow_paths(context: dg.AssetExecutionContext, config: PathsConfig, store: StoreResource) -> dg.MaterializeResult:
    """Every valid path through the graph (exact count; listed up to a cap, then sampled)."""
    from subterra.paths import edge_coverage, paths_table, select_paths

    db = store.get()
    wf = snapshot(db, context.partition_key)
    selection = select_paths(wf, cap=config.path_cap, seed=config.seed, max_states=config.max_states)
    covered = edge_coverage(wf, selection.paths)
    uncovered = [e.id for e in wf.edges if e.id not in covered]
    if selection.sampled:
        context.log.warning(
            f"{wf.id}: {selection.total:,} paths exceed the cap of {config.path_cap:,}; using a deterministic "
            f"sample of {len(selection.paths):,} that covers {len(covered)}/{len(wf.edges)} edges"
        )
    if uncovered:
        context.log.warning(f"{wf.id}: the cap is too small to cover every edge; uncovered: {', '.join(uncovered)}")
    table = paths_table(wf, selection)
    db.replace_partition("workflow_paths", wf.id, table)
    return dg.MaterializeResult(
        metadata={
            "total_paths": selection.total,
            "selected_paths": len(selection.paths),
            "sampled": selection.sampled,
            "edge_coverage": f"{len(covered)}/{len(wf.edges)}",
            "min_path_edges": int(table["n_edges"].min()),
            "max_path_edges": int(table["n_edges"].max()),
            "uncovered_edges": ", ".join(uncovered) or "none",
        }
    )
