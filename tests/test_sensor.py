"""The workflow-files sensor on a new, an unchanged, a reformatted, a changed, an invalid file, and
one still being written."""

import dagster as dg
import pytest

from subterra_dagster.resources import RecompileResource, SettingsResource, StoreResource
from subterra_dagster.sensors import workflow_files_sensor
from subterra.workflow import load_workflow, parse_workflow_text


def sensor_resources(settings, recompile: str = "") -> dict:
    return {"settings": SettingsResource(data_dir=str(settings.data_dir)), "recompile": RecompileResource(mode=recompile),
            "store": StoreResource(db_path=str(settings.db_path))}


def evaluate(settings, instance, cursor: str | None, recompile: str = "") -> dg.SensorResult:
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=sensor_resources(settings, recompile))
    return workflow_files_sensor(context)


@pytest.fixture
def tick(settings, instance):
    """The sensor from ``cursor`` against the temporary data folder, over two ticks (a file counts
    once its bytes are the same at two ticks): the first must start nothing; the second's result."""

    def two_ticks(cursor: str | None = None, recompile: str = "") -> dg.SensorResult:
        first = evaluate(settings, instance, cursor, recompile)
        assert not first.run_requests
        return evaluate(settings, instance, first.cursor, recompile)

    return two_ticks


@pytest.fixture
def fresh_instance():
    with dg.DagsterInstance.ephemeral() as instance:
        yield instance


def run_keys(result: dg.SensorResult) -> list[str]:
    return [r.run_key for r in result.run_requests or []]


def added_partitions(result: dg.SensorResult) -> list[str]:
    return [key for request in result.dynamic_partitions_requests or [] for key in request.partition_keys]


def test_new_file_adds_its_partition_and_starts_a_run(settings, fresh_instance):
    waiting = evaluate(settings, fresh_instance, None)
    assert run_keys(waiting) == [] and "waiting for mini_booking.yaml to stop changing" in str(waiting.skip_reason)
    result = evaluate(settings, fresh_instance, waiting.cursor)
    wf = load_workflow(settings.workflow_file("mini_booking"))
    assert run_keys(result) == [f"mini_booking:{wf.content_hash}"]
    assert result.run_requests[0].partition_key == "mini_booking"
    assert added_partitions(result) == ["mini_booking"]


def test_unchanged_and_reformatted_files_start_nothing(settings, tick):
    first = tick()
    assert len(run_keys(first)) == 1
    assert run_keys(tick(first.cursor)) == []
    path = settings.workflow_file("mini_booking")
    path.write_text("# reformatted, same procedure\n\n" + path.read_text().replace("  travellers: {type: integer, min: 1, max: 9}",
                                                                              "  travellers:\n    type: integer\n    min: 1\n    max: 9"))
    again = tick(first.cursor)
    assert run_keys(again) == []
    assert again.skip_reason is not None


def test_changed_file_recompiles_that_workflow_only(settings, tick):
    other = settings.workflow_file("other_booking")
    other.write_text(settings.workflow_file("mini_booking").read_text().replace("workflow: mini_booking", "workflow: other_booking"))
    first = tick()
    assert sorted(r.partition_key for r in first.run_requests) == ["mini_booking", "other_booking"]
    assert added_partitions(first) == ["other_booking"]  # mini_booking's partition already exists
    path = settings.workflow_file("mini_booking")
    path.write_text(path.read_text().replace("Ask for the departure date.", "Ask for the date of departure."))
    second = tick(first.cursor)
    wf = load_workflow(path)
    assert run_keys(second) == [f"mini_booking:{wf.content_hash}"]
    assert added_partitions(second) == []


def test_a_recompile_is_incremental_unless_full_is_chosen(settings, tick, monkeypatch):
    first = tick()
    assert first.run_requests[0].tags["subterra/recompile"] == "first"  # never compiled: nothing to continue from
    path = settings.workflow_file("mini_booking")
    path.write_text(path.read_text().replace("Ask for the departure date.", "Ask for the date of departure."))
    monkeypatch.delenv("SUBTERRA_RECOMPILE", raising=False)
    from subterra_dagster.definitions import build_definitions

    job = build_definitions(str(settings.data_dir)).resolve_job_def("compile_workflow")
    for chosen, expected in (("", "incremental"), ("full", "full")):
        [request] = tick(first.cursor, recompile=chosen).run_requests
        dg.validate_run_config(job, request.run_config)  # the job accepts it as it is
        ops = request.run_config["ops"]
        assert ops["synthetic_corpus"]["config"]["recompile"] == ops["trained_weights"]["config"]["recompile"] == expected
        assert request.tags["subterra/recompile"] == expected
    monkeypatch.setenv("SUBTERRA_RECOMPILE", "full")  # the deployment's default
    assert tick(first.cursor).run_requests[0].tags["subterra/recompile"] == "full"
    with pytest.raises(Exception, match="expected 'incremental' or 'full'"):
        tick(first.cursor, recompile="partial")


def test_invalid_file_starts_nothing_and_says_where(settings, tick, instance):
    first = tick()
    path = settings.workflow_file("mini_booking")
    path.write_text(path.read_text().replace("next: ask_count", "next: ask_cuont"))
    result = tick(first.cursor)
    assert run_keys(result) == []
    assert "mini_booking.yaml:" in str(result.skip_reason) and "ask_cuont" in str(result.skip_reason)
    again = evaluate(settings, instance, result.cursor)  # a later tick, the file unchanged: still said
    assert run_keys(again) == [] and "ask_cuont" in str(again.skip_reason)
    # fixed back to the compiled content: the last good model still matches, nothing to do, nothing said
    path.write_text(path.read_text().replace("next: ask_cuont", "next: ask_count"))
    fixed = tick(again.cursor)
    assert run_keys(fixed) == [] and "ask_cuont" not in str(fixed.skip_reason)
    assert "ask_cuont" not in str(evaluate(settings, instance, fixed.cursor).skip_reason)


def test_a_definition_compiled_already_starts_nothing_on_a_first_tick(settings, store, fresh_instance):
    """A fresh sensor cursor (a first `make ui` after `make demo`) reads what the database holds."""
    import polars as pl

    wf = load_workflow(settings.workflow_file("mini_booking"))
    store.replace_partition("trained_weights", wf.id, pl.DataFrame({"workflow": [wf.id], "content_hash": [wf.content_hash]}))
    waiting = evaluate(settings, fresh_instance, None)
    result = evaluate(settings, fresh_instance, waiting.cursor)
    assert run_keys(result) == [] and added_partitions(result) == ["mini_booking"]
    path = settings.workflow_file("mini_booking")  # an edit after it is compiled as always
    path.write_text(path.read_text().replace("Mini booking", "Mini booking, edited").replace("Hi! Where", "Hello! Where"))
    edited = evaluate(settings, fresh_instance, evaluate(settings, fresh_instance, result.cursor).cursor)
    assert len(run_keys(edited)) == 1


def test_invalid_file_next_to_a_valid_one_still_starts_the_valid_one(settings, tick, capfd):
    (settings.workflows_dir / "broken.yaml").write_text("workflow: broken\nnodes: [unclosed\n")
    (settings.workflows_dir / "wrong_id.yaml").write_text(settings.workflow_file("mini_booking").read_text())
    (settings.workflows_dir / "binary.yaml").write_bytes(b"\xff\xfe\x00\x81 not text")
    (settings.workflows_dir / "folder.yaml").mkdir()  # not even a file
    result = tick()
    assert [r.partition_key for r in result.run_requests] == ["mini_booking"]
    log = capfd.readouterr().err  # the tick's log, file by file, with file:line
    assert "broken.yaml:3: YAML syntax error" in log
    assert "wrong_id.yaml:2: workflow id 'mini_booking' must equal the file name's stem" in log
    assert "binary.yaml" in log and "folder.yaml" in log


def test_a_file_still_being_written_starts_no_run(settings, instance):
    """What is written so far can be a valid workflow (here: all but the title, written last);
    only the finished file, unchanged over two ticks, is compiled."""
    path = settings.workflow_file("mini_booking")
    full = path.read_text().replace("title: Mini booking\n", "") + "title: Mini booking\n"
    partial = full[: full.rindex("title:")]
    assert parse_workflow_text(full, str(path)).content_hash != (wf_partial := parse_workflow_text(partial, str(path))).content_hash
    path.write_text(partial)
    first = evaluate(settings, instance, None)
    path.write_text(full)  # the writer goes on
    second = evaluate(settings, instance, first.cursor)
    third = evaluate(settings, instance, second.cursor)
    assert run_keys(first) == run_keys(second) == [] and wf_partial.content_hash not in str(third.cursor)
    assert run_keys(third) == [f"mini_booking:{load_workflow(path).content_hash}"]
    assert run_keys(evaluate(settings, instance, third.cursor)) == []  # and once only


def test_a_run_for_content_that_has_changed_since_is_refused(settings, store, resources, instance):
    """A run carries the content hash the sensor saw; a file edited again before it started is not compiled."""
    from subterra_dagster.assets.partitions import CONTENT_HASH_TAG
    from subterra_dagster.assets.workflow_graph import workflow_graph

    seen = load_workflow(settings.workflow_file("mini_booking")).short_hash
    ok = dg.materialize([workflow_graph], partition_key="mini_booking", resources=resources, instance=instance,
                        tags={CONTENT_HASH_TAG: seen})
    assert ok.success
    path = settings.workflow_file("mini_booking")
    path.write_text(path.read_text().replace("Ask for the departure date.", "Ask for the date."))
    stale = dg.materialize([workflow_graph], partition_key="mini_booking", resources=resources, instance=instance,
                           tags={CONTENT_HASH_TAG: seen}, raise_on_error=False)
    assert not stale.success
    assert store.read("workflow_definitions", "mini_booking")["content_hash"][0].startswith(seen)  # the snapshot stays


def fallback(run_result: dg.ExecuteInProcessResult, instance, resources: dict):
    """The incremental-fallback sensor on a finished run (what the daemon hands it)."""
    from subterra_dagster.sensors import incremental_fallback_sensor

    context = dg.build_run_status_sensor_context(
        sensor_name=incremental_fallback_sensor.name, dagster_instance=instance,
        dagster_run=run_result.dagster_run, dagster_event=run_result.get_run_success_event(),
        resources={k: resources[k] for k in ("store", "recompile")})
    return incremental_fallback_sensor(context)


def test_an_incremental_recompile_that_does_not_hold_is_followed_by_a_full_one(settings, store, resources, instance):
    """A compile, an edit, an incremental recompile that does not hold (held to
    ``incremental_max_drop`` against the model it continues; here a floor no model reaches): the
    last good model goes on serving, and the sensor asks for a full recompile of that definition,
    once; the full recompile's run, held or not, asks for nothing more."""
    from test_assets import HOLDS_ANY, HOLDS_NONE, KEY, TINY_TRAINING, materialize, metadata, run_config

    from subterra_dagster.assets import COMPILE_ASSETS
    from subterra_dagster.assets.settings import EvalSettings
    from subterra_dagster.assets.settings import TrainedWeightsSettings
    from subterra.serving import full_recompile_due, serving_model

    from subterra.routes import DEPLOYED

    holds_any, holds_none = (EvalSettings(**{**gate.model_dump(), "routes": [DEPLOYED]}) for gate in (HOLDS_ANY, HOLDS_NONE))
    first = materialize(COMPILE_ASSETS, resources, instance, eval_scores=holds_any)
    assert first.success and fallback(first, instance, resources).skip_message  # a first compile: nothing to do
    good = store.read("good_models", KEY)["model_dir"][0]
    path = settings.workflow_file(KEY)
    path.write_text(path.read_text().replace('"Ready to confirm?"', '"Is everything right?"'))
    wf = load_workflow(path)

    uncapped = TrainedWeightsSettings(**{**TINY_TRAINING.model_dump(), "max_fraction": 100.0})  # the tiny corpus: 3 of 8 changed
    incremental = materialize(COMPILE_ASSETS, resources, instance, trained_weights=uncapped, eval_scores=holds_none)
    assert incremental.success
    trained = store.read("trained_weights", KEY).row(0, named=True)
    assert (trained["recompile"], trained["continued_from"]) == ("incremental", good)
    check = {c.check_name: c for c in incremental.get_asset_check_evaluations()}["deployed_route_holds"]
    assert not check.passed and check.metadata["max_drop"].value == "0.02"  # the incremental gate, not max_drop
    assert check.metadata["recompile"].value == "incremental"
    assert serving_model(store, KEY).model_dir == good != trained["model_dir"]
    assert "the incremental recompile of mini_booking" in full_recompile_due(store, KEY)

    request = fallback(incremental, instance, resources)
    assert isinstance(request, dg.RunRequest)
    assert (request.partition_key, request.run_key) == (KEY, f"{KEY}:{wf.content_hash}:full")
    assert request.tags["subterra/recompile"] == "full" and request.tags["subterra/content_hash"] == wf.short_hash
    assert request.tags["subterra/full_after"] == incremental.dagster_run.run_id
    ops = request.run_config["ops"]
    assert ops["synthetic_corpus"]["config"]["recompile"] == ops["trained_weights"]["config"]["recompile"] == "full"
    from subterra_dagster.definitions import build_definitions

    dg.validate_run_config(build_definitions(str(settings.data_dir)).resolve_job_def("compile_workflow"), request.run_config)

    # the full recompile the request asks for (with the tests' small settings), under the same gate
    small = run_config({a.op.name for a in COMPILE_ASSETS}, eval_scores=holds_none).to_config_dict()["ops"]
    for op, value in request.run_config["ops"].items():
        small[op]["config"].update(value["config"])
    full = dg.materialize(COMPILE_ASSETS, partition_key=KEY, resources=resources, instance=instance,
                          run_config={"ops": small}, tags=request.tags)
    assert full.success and metadata(full, COMPILE_ASSETS[2])["conversations_reused"] == 0
    assert store.read("trained_weights", KEY)["recompile"][0] == "full"
    assert full_recompile_due(store, KEY) is None and "held or was a full one" in fallback(full, instance, resources).skip_message
    assert serving_model(store, KEY).model_dir == good  # it did not hold either: the last good model serves

    off = {**resources, "recompile": RecompileResource(fall_back_to_full=False)}
    assert "off" in fallback(incremental, instance, off).skip_message
