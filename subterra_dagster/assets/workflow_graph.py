import json

import dagster as dg

from subterra_dagster.assets.partitions import CONTENT_HASH_TAG, workflows_partitions
from subterra_dagster.resources import SettingsResource, StoreResource


READS = ()  # the tables this asset reads (assets.tables): it reads the workflow's file


@dg.asset(partitions_def=workflows_partitions, group_name="compile", kinds={"duckdb"})
def workflow_graph(context: dg.AssetExecutionContext, settings: SettingsResource, store: StoreResource) -> dg.MaterializeResult:
    """The workflow file, validated, as node and edge tables plus a snapshot of its definition.

    Later stages rebuild the workflow from this snapshot, never from the file again."""
    import polars as pl

    from subterra.graph import edge_table, graph_summary, node_table
    from subterra.workflow import load_workflow

    path = settings.get().workflow_file(context.partition_key)
    wf = load_workflow(path)
    expected = context.run.tags.get(CONTENT_HASH_TAG)
    if expected and expected != wf.short_hash:
        raise dg.Failure(f"{path} has changed since this run was started for content {expected} (it is now "
                         f"{wf.short_hash}); not compiling it: the sensor starts a new run once the file stops changing")
    db = store.get()
    definition = pl.DataFrame({"workflow": [wf.id], "content_hash": [wf.content_hash], "definition": [json.dumps(wf.to_dict())]})
    db.replace_partitions(
        wf.id, {"workflow_nodes": node_table(wf), "workflow_edges": edge_table(wf), "workflow_definitions": definition}
    )
    summary = graph_summary(wf)
    return dg.MaterializeResult(metadata={**summary, "title": wf.title, "assistant": wf.assistant}, data_version=dg.DataVersion(wf.short_hash))
