"""Watches ``data/workflows/*.yaml`` and recompiles a workflow when its definition changes.

A new file adds its partition and starts a run; a changed file (canonical content hash, so
comments and formatting do not count) starts a recompile of that workflow only; an unchanged one
starts nothing (the run key is the hash); an invalid file starts nothing and the tick's log says
why, file by file and line by line, while every other workflow goes on and the last good model
of the broken one stays where it is.

A recompile is incremental unless the ``recompile`` resource says ``full`` (its run config says
which, and so does the run's ``subterra/recompile`` tag).
"""

import json

import dagster as dg

from assets.partitions import workflows_partitions
from jobs import compile_workflow
from resources import RecompileResource, SettingsResource


@dg.sensor(
    job=compile_workflow,
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=15,
    description="Recompile a workflow when data/workflows/NAME.yaml is added or its definition changes.",
)
def workflow_files_sensor(
    context: dg.SensorEvaluationContext, settings: SettingsResource, recompile: RecompileResource
) -> dg.SensorResult:
    from subterra.workflow import WorkflowError, load_workflow

    seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    known = set(context.instance.get_dynamic_partitions(workflows_partitions.name))
    requests, new_partitions, skipped = [], [], []
    for path in sorted(settings.get().workflows_dir.glob("*.yaml")):
        try:
            wf = load_workflow(path)
        except WorkflowError as exc:
            skipped.append(f"{path.name}: invalid, not compiled:\n" + "\n".join(f"  {f}" for f in exc.faults))
            continue
        except Exception as exc:  # one file never breaks the tick
            skipped.append(f"{path.name}: could not be read ({type(exc).__name__}: {exc})")
            continue
        if seen.get(wf.id) == wf.content_hash:
            continue
        if wf.id not in known:
            new_partitions.append(wf.id)
        requests.append(
            dg.RunRequest(
                partition_key=wf.id,
                run_key=f"{wf.id}:{wf.content_hash}",
                run_config=recompile.run_config(),
                tags={"subterra/workflow": wf.id, "subterra/content_hash": wf.short_hash, "subterra/recompile": recompile.get()},
            )
        )
        seen[wf.id] = wf.content_hash
    for message in skipped:
        context.log.warning(message)
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[workflows_partitions.build_add_request(new_partitions)] if new_partitions else [],
        cursor=json.dumps(seen, sort_keys=True),
        skip_reason=None if requests else dg.SkipReason("; ".join(skipped) or "no new or changed workflow"),
    )
