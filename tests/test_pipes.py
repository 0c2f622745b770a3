"""The training process's messages reach the run whole, even when a line is read half-written."""

import json
import subprocess
import sys
import threading
import time

import dagster as dg

from subterra_dagster.definitions import build_definitions
from subterra_dagster.resources.pipes import WholeLineTempFileMessageReader, whole_lines

# writes one message in two halves with a pause between them, as a slow write can look to a
# reader; Dagster's own reader parses the first half, and its thread dies
HALVES = """
import sys, time
path, message = sys.argv[1], sys.argv[2]
with open(path, "a", encoding="utf-8") as f:
    f.write(message[:20]); f.flush(); time.sleep(0.3)
    f.write(message[20:] + "\\n"); f.flush()
    f.write('{"no newline": true}')
"""


def test_a_line_caught_half_written_is_read_whole(tmp_path):
    path = tmp_path / "messages"
    path.write_text("")
    message = json.dumps({"method": "log", "params": {"message": "step 20/1032 loss 0.1471", "level": "INFO"}})
    done = threading.Event()
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(whole_lines(str(path), done.is_set)))
    reader.start()
    subprocess.run([sys.executable, "-c", HALVES, str(path), message], check=True)
    time.sleep(0.1)
    done.set()
    reader.join(timeout=10)
    assert [json.loads(line) for line in lines] == [json.loads(message), {"no newline": True}]


def test_the_training_client_reads_whole_lines_and_reports_a_materialization(tmp_path):
    """The definitions' Pipes client is the whole-line one, and a real external process's
    logs and materialization reach the asset through it."""
    client = build_definitions(str(tmp_path)).resources["pipes_subprocess_client"]
    assert isinstance(client.message_reader, WholeLineTempFileMessageReader)
    script = tmp_path / "external.py"
    script.write_text(
        "from dagster_pipes import open_dagster_pipes\n"
        "with open_dagster_pipes() as pipes:\n"
        "    for step in range(50):\n"
        "        pipes.log.info(f'step {step} ' + 'x' * 2000)\n"
        "    pipes.report_asset_materialization(metadata={'steps': 50})\n"
    )

    @dg.asset
    def external(context: dg.AssetExecutionContext, pipes_subprocess_client: dg.PipesSubprocessClient):
        return pipes_subprocess_client.run(command=[sys.executable, str(script)], context=context).get_materialize_result()

    result = dg.materialize([external], resources={"pipes_subprocess_client": client})
    assert result.success
    [materialization] = result.asset_materializations_for_node("external")
    assert materialization.metadata["steps"].value == 50


def test_a_training_stopped_from_the_ui_ends_with_one_line_not_a_traceback(tmp_path, mini_workflow, corpus):
    """Terminating a run makes Pipes send SIGINT to the training process: it says where its
    checkpoints are and exits 130, without a KeyboardInterrupt traceback in the daemon's console."""
    import signal

    from subterra.tokenizer import workflow_atoms
    from subterra.training import TrainConfig
    from tests.conftest import TINY

    corpus.write_parquet(tmp_path / "train.parquet")
    TrainConfig(workflow=mini_workflow.id, train_data=str(tmp_path / "train.parquet"), output_dir=str(tmp_path / "model"),
                workflow_atoms=workflow_atoms(mini_workflow), max_steps=100_000, max_tokens=0, logging_steps=1,
                **TINY).to_json(tmp_path / "c.json")  # no token budget: it runs until stopped
    process = subprocess.Popen([sys.executable, "-m", "subterra.cli.train", "--config", str(tmp_path / "c.json")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert json.loads(process.stdout.readline())["step"] >= 1  # training runs
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert f"training interrupted; its checkpoints stay in {tmp_path / 'model'}.checkpoints" in err
