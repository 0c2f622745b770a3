"""Follows an incremental recompile that did not hold with a full recompile of the same definition.

An incremental recompile (training continued from the last good model on a mix of what changed)
is quick, but it promises a full recompile's quality: ``eval_scores`` lets it hold only within
``incremental_max_drop`` of the model it continues. When a compile run of a workflow succeeds and
its model is such an incremental recompile that did not hold (``subterra.serving.full_recompile_due``),
this sensor starts a full recompile of that workflow: every conversation written again, training
from scratch. Meanwhile the last good model goes on serving. One full recompile per definition
(the run key is the content hash); a full compile that does not hold is not retried.
Off with the ``recompile`` resource's ``fall_back_to_full`` (or ``SUBTERRA_RECOMPILE_FALLBACK=0``).
"""

import dagster as dg

from subterra_dagster.assets.partitions import CONTENT_HASH_TAG
from subterra_dagster.jobs import compile_workflow, ladder_workflow
from subterra_dagster.resources import RecompileResource, StoreResource

FALLBACK_OF_TAG = "subterra/full_after"  # the run whose incremental recompile did not hold


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[compile_workflow, ladder_workflow],
    request_job=compile_workflow,
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=15,
    description="Recompile a workflow in full when its incremental recompile did not hold "
    "(further than incremental_max_drop below the model it continued).",
)
def incremental_fallback_sensor(
    context: dg.RunStatusSensorContext, store: StoreResource, recompile: RecompileResource
) -> dg.RunRequest | dg.SkipReason:
    from subterra.serving import full_recompile_due

    run = context.dagster_run
    workflow = run.tags.get("dagster/partition")
    if not workflow:
        return dg.SkipReason(f"run {run.run_id} compiled no workflow partition")
    if not recompile.falls_back():
        return dg.SkipReason("falling back to a full recompile is off (recompile resource)")
    db = store.get()
    why = full_recompile_due(db, workflow)
    if why is None:
        return dg.SkipReason(f"{workflow}: its last compile held or was a full one")
    content_hash = db.read("trained_weights", workflow)["content_hash"][0]
    started_for = run.tags.get(CONTENT_HASH_TAG)
    if started_for and not content_hash.startswith(started_for):
        return dg.SkipReason(f"{workflow}: compiled again since run {run.run_id}")
    context.log.warning(f"{why}; recompiling {workflow} in full")
    return dg.RunRequest(
        partition_key=workflow,
        run_key=f"{workflow}:{content_hash}:full",
        run_config=recompile.run_config("full"),
        tags={"subterra/workflow": workflow, CONTENT_HASH_TAG: content_hash[:16], "subterra/recompile": "full",
              FALLBACK_OF_TAG: run.run_id},
    )
