"""Two compiles of one workflow never run at once: Dagster's run queue (dagster_instance.yaml) for runs the
sensor or the UI starts, a per-workflow lock and a look at the instance for ``subterra compile``."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
import yaml

from subterra_dagster.assets import COMPILE_ASSETS, REPAIR_ASSETS

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def configured():
    """A Dagster instance configured by our dagster_instance.yaml; Dagster's recording run launcher stands in
    for starting run processes."""
    config = yaml.safe_load((ROOT / "dagster_instance.yaml").read_text())
    launcher = {"module": "dagster._core.test_utils", "class": "MockedRunLauncher"}
    with dg.instance_for_test(overrides={**config, "run_launcher": launcher}) as instance:
        yield instance


def test_the_run_queue_starts_one_run_per_workflow_at_a_time(configured):
    """The queued run coordinator's daemon, a few real iterations."""
    from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteRepositoryOrigin
    from dagster._core.test_utils import create_run_for_test
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import EmptyWorkspaceTarget
    from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon

    origin = RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("definitions.py"), "__repository__").get_job_origin(
        "compile_workflow"
    )
    instance = configured

    def queued(workflow: str) -> str:
        return create_run_for_test(instance, job_name="compile_workflow", status=dg.DagsterRunStatus.QUEUED,
                                   tags={"dagster/partition": workflow}, remote_job_origin=origin).run_id

    def dequeue() -> None:
        with WorkspaceProcessContext(instance, EmptyWorkspaceTarget()) as context:
            list(QueuedRunCoordinatorDaemon(interval_seconds=1).run_iteration(context))

    def status(run_id: str) -> dg.DagsterRunStatus:
        return instance.get_run_by_id(run_id).status

    first, second, other = queued("travel_booking"), queued("travel_booking"), queued("insurance_claims")
    dequeue()
    assert [status(r) for r in (first, second, other)] == [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.QUEUED,
                                                           dg.DagsterRunStatus.STARTING]
    dequeue()
    assert status(second) == dg.DagsterRunStatus.QUEUED  # still waiting while the first compile runs
    instance.report_run_failed(instance.get_run_by_id(first))
    dequeue()
    assert status(second) == dg.DagsterRunStatus.STARTING  # its turn once the first one ended


def test_one_training_at_a_time(configured):
    [trained_weights] = [a for a in COMPILE_ASSETS if a.key.to_user_string() == "trained_weights"]
    [promoted_model] = [a for a in REPAIR_ASSETS if a.key.to_user_string() == "promoted_model"]  # a repair round trains too
    assert trained_weights.op.pool == promoted_model.op.pool == "subterra_training"
    assert configured.get_concurrency_config().pool_config.default_pool_limit == 1


HOLD = """
import sys, time
from subterra.locks import file_lock
with file_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(300)
"""


def test_a_second_subterra_compile_of_a_workflow_is_refused(settings, monkeypatch, capsys):
    """Another process (a `subterra compile` of the same workflow) holds the workflow's lock."""
    import subprocess
    import sys

    from subterra_dagster.cli import main

    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(settings.compile_lock("mini_booking"))],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setenv("SUBTERRA_DATA_DIR", str(settings.data_dir))
        monkeypatch.delenv("DAGSTER_HOME", raising=False)
        assert main(["compile", str(settings.workflow_file("mini_booking"))]) == 1
        assert "mini_booking: another `subterra compile` of this workflow is running" in capsys.readouterr().err
        assert not settings.db_path.exists()
    finally:
        holder.kill()
        holder.wait()


def test_subterra_compile_is_refused_while_a_run_of_the_workflow_executes(settings, tmp_path, monkeypatch, capsys):
    """A run the sensor started (queued, then dequeued) is executing in the instance `subterra
    compile` shares through DAGSTER_HOME; a stale run of a crashed `subterra compile` is no obstacle."""
    from dagster._core.test_utils import create_run_for_test

    from subterra_dagster.cli import main

    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((ROOT / "dagster_instance.yaml").read_text())
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("SUBTERRA_DATA_DIR", str(settings.data_dir))
    with dg.DagsterInstance.get() as instance:
        run = create_run_for_test(instance, job_name="compile_workflow", status=dg.DagsterRunStatus.STARTED,
                                  tags={"dagster/partition": "mini_booking"})
        create_run_for_test(instance, job_name="__ephemeral_asset_job__", status=dg.DagsterRunStatus.STARTED,
                            tags={"dagster/partition": "mini_booking", "subterra/via": "cli"})  # its process died
    assert main(["compile", str(settings.workflow_file("mini_booking"))]) == 1
    assert f"mini_booking: run {run.run_id} of this workflow is started; try again when it ends" in capsys.readouterr().err
    assert not settings.db_path.exists()
