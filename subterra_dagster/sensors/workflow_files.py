"""Watches ``data/workflows/*.yaml`` and recompiles a workflow when its definition changes.

A file is only read as a workflow once it has stopped changing: its bytes must be the same at two
consecutive ticks, so a file still being written (an editor saving, a copy in progress) never
starts a run, not even when what is written so far happens to be a valid workflow. (Writing the
file elsewhere and renaming it into the folder is atomic and needs no waiting either way.)

Once stable, a new file adds its partition and starts a run; a changed file (canonical content
hash, so comments and formatting do not count) starts a recompile of that workflow only; an
unchanged one starts nothing (the run key is the hash), nor does one whose definition the database
already holds a compiled model of (a first tick after `make demo` or `subterra compile` starts no
second compile); an invalid file starts nothing and every tick's log and skip reason say why, file
by file and line by line, until the file is fixed, while every other workflow goes on and the
last good model of the broken one stays where it is. Each run carries the content hash it was
started for; ``workflow_graph`` refuses a file that changed again before the run began.

The cursor keeps, per file, the digest of its bytes at the last tick (``seen``), the digest
last acted on (``decided``) and the faults of a broken one (``broken``), and per workflow the
content hash last compiled (``compiled``).

A recompile is incremental unless the ``recompile`` resource says ``full`` (its run config says
which, and so does the run's ``subterra/recompile`` tag: ``first`` for a workflow never compiled).
"""

import hashlib
import json

import dagster as dg

from subterra_dagster.assets.partitions import CONTENT_HASH_TAG, workflows_partitions
from subterra_dagster.jobs import compile_workflow
from subterra_dagster.resources import RecompileResource, SettingsResource, StoreResource


def _state(cursor: str | None) -> dict:
    state = json.loads(cursor) if cursor else {}
    if state and "compiled" not in state:  # a cursor from before stability checks: {workflow: hash}
        state = {"compiled": state}
    return {"compiled": state.get("compiled", {}), "seen": state.get("seen", {}), "decided": state.get("decided", {}),
            "broken": state.get("broken", {})}


def _compiled_in_store(store: StoreResource, workflow: str) -> str | None:
    """The content hash the database's latest compiled model of ``workflow`` was trained from."""
    try:
        trained = store.get().read("trained_weights", workflow)
    except Exception:  # no table yet, or the database busy: the tick goes on as if nothing were compiled
        return None
    return trained["content_hash"][0] if trained.height else None


@dg.sensor(
    job=compile_workflow,
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=15,
    description="Recompile a workflow when data/workflows/NAME.yaml is added or its definition changes "
    "(once the file has stopped changing).",
)
def workflow_files_sensor(
    context: dg.SensorEvaluationContext, settings: SettingsResource, recompile: RecompileResource, store: StoreResource
) -> dg.SensorResult:
    from subterra.workflow import WorkflowError, parse_workflow_bytes

    state = _state(context.cursor)
    compiled, seen, decided, broken = state["compiled"], {}, state["decided"], {}
    known = set(context.instance.get_dynamic_partitions(workflows_partitions.name))
    requests, new_partitions, skipped, waiting = [], [], [], []
    for path in sorted(settings.get().workflows_dir.glob("*.yaml")):
        try:
            raw = path.read_bytes()
        except OSError as exc:  # one file never breaks the tick
            skipped.append(f"{path.name}: could not be read ({type(exc).__name__}: {exc})")
            continue
        digest = hashlib.sha256(raw).hexdigest()
        seen[path.name] = digest
        if state["seen"].get(path.name) != digest:
            waiting.append(path.name)  # new or still changing: look again next tick
            continue
        if decided.get(path.name) == digest:
            if path.name in state["broken"]:  # still broken: said again on every tick until fixed
                broken[path.name] = state["broken"][path.name]
                skipped.append(broken[path.name])
            continue  # stable, and already acted on
        decided[path.name] = digest
        try:
            wf = parse_workflow_bytes(raw, str(path))
        except WorkflowError as exc:
            broken[path.name] = f"{path.name}: invalid, not compiled:\n" + "\n".join(f"  {f}" for f in exc.faults)
            skipped.append(broken[path.name])
            continue
        if compiled.get(wf.id) == wf.content_hash:
            continue
        in_store = _compiled_in_store(store, wf.id) if wf.id not in compiled else None
        if in_store == wf.content_hash:
            compiled[wf.id] = wf.content_hash  # compiled already (`make demo`, `subterra compile`): nothing to start
            context.log.info(f"{path.name}: this definition is compiled already; no run")
            if wf.id not in known:
                new_partitions.append(wf.id)
            continue
        first = wf.id not in compiled and in_store is None  # nothing to continue from: trained in full
        if wf.id not in known:
            new_partitions.append(wf.id)
        requests.append(
            dg.RunRequest(
                partition_key=wf.id,
                run_key=f"{wf.id}:{wf.content_hash}",
                run_config=recompile.run_config(),
                tags={"subterra/workflow": wf.id, CONTENT_HASH_TAG: wf.short_hash, "subterra/recompile": "first" if first else recompile.get()},
            )
        )
        compiled[wf.id] = wf.content_hash
    decided = {name: digest for name, digest in decided.items() if name in seen}
    for message in skipped:
        context.log.warning(message)
    if waiting:
        context.log.info(f"waiting for {', '.join(waiting)} to stop changing (same bytes at two ticks)")
    reasons = skipped + ([f"waiting for {', '.join(waiting)} to stop changing"] if waiting else [])
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[workflows_partitions.build_add_request(new_partitions)] if new_partitions else [],
        cursor=json.dumps({"compiled": compiled, "seen": seen, "decided": decided, "broken": broken}, sort_keys=True),
        skip_reason=None if requests else dg.SkipReason("; ".join(reasons) or "no new or changed workflow"),
    )
