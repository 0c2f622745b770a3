"""The workflow-files sensor on a new, an unchanged, a reformatted, a changed, an invalid file, and
one still being written."""

import dagster as dg
import pytest

from resources import RecompileResource, SettingsResource
from sensors import workflow_files_sensor
from subterra.workflow import load_workflow, parse_workflow_text


def sensor_resources(settings, recompile: str = "") -> dict:
    return {"settings": SettingsResource(data_dir=str(settings.data_dir)), "recompile": RecompileResource(mode=recompile)}


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
    path = settings.workflow_file("mini_booking")
    path.write_text(path.read_text().replace("Ask for the departure date.", "Ask for the date of departure."))
    monkeypatch.delenv("SUBTERRA_RECOMPILE", raising=False)
    from definitions import build_definitions

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


def test_invalid_file_starts_nothing_and_says_where(settings, tick):
    first = tick()
    path = settings.workflow_file("mini_booking")
    path.write_text(path.read_text().replace("next: ask_count", "next: ask_cuont"))
    result = tick(first.cursor)
    assert run_keys(result) == []
    assert "mini_booking.yaml:" in str(result.skip_reason) and "ask_cuont" in str(result.skip_reason)
    # fixed back to the compiled content: the last good model still matches, nothing to do
    path.write_text(path.read_text().replace("next: ask_cuont", "next: ask_count"))
    assert run_keys(tick(result.cursor)) == []


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
    from assets.partitions import CONTENT_HASH_TAG
    from assets.workflow_graph import workflow_graph

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
