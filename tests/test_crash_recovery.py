"""Crashes lose nothing: a killed training resumes from its last checkpoint, a killed writer never
leaves half a file or half a model folder for the next stage to read.

Crash points: the training process killed between checkpoints; a checkpoint cut off while being
written; a checkpoint left by another training; a model folder half saved; a crash between the
two renames of a folder swap; a Parquet writer killed mid-file (and, in test_store.py, a DuckDB
writer killed mid-transaction)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import polars as pl
import pytest

from conftest import TINY  # the corpus and mini_workflow fixtures are in conftest.py
from subterra.atomic import atomic_path, recover_dir, replace_dir
from subterra.tokenizer import workflow_atoms
from subterra.training import RESULT_FILE, TrainConfig, TrainResult, train

ROOT = Path(__file__).parent.parent
STEPS, SAVE_EVERY, KILL_AT = 16, 3, 8  # killed at step 8 (or just after): checkpoint-6 (or -9) is the last one


@pytest.fixture(scope="module")
def killed(tmp_path_factory, mini_workflow, corpus):
    """A training process (the Pipes entry point) SIGKILLed at step 8 of 16; its folder."""
    folder = tmp_path_factory.mktemp("killed")
    corpus.write_parquet(folder / "train.parquet")
    config = TrainConfig(workflow=mini_workflow.id, train_data=str(folder / "train.parquet"), output_dir=str(folder / "model"),
                         workflow_atoms=workflow_atoms(mini_workflow), max_steps=STEPS, logging_steps=1,
                         save_steps=SAVE_EVERY, torch_threads=1, **TINY)
    config.to_json(folder / "config.json")
    process = subprocess.Popen([sys.executable, "-m", "subterra.cli.train", "--config", str(folder / "config.json")],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    steps = []
    for line in process.stdout:
        try:
            steps.append(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue  # transformers prints its own log lines too
        if steps[-1] >= KILL_AT:
            process.send_signal(signal.SIGKILL)
            break
    assert process.wait(timeout=60) == -signal.SIGKILL and steps[-1] < STEPS
    return folder


def last_checkpoint(folder: Path) -> int:
    return max(int(p.name.split("-")[1]) for p in (folder / "model.checkpoints").glob("checkpoint-*"))


def rerun(killed: Path, into: Path, **changes) -> TrainResult:
    """Copy the killed training's folder and run the same training (or a changed one) again."""
    shutil.copytree(killed, into)
    config = TrainConfig.from_json(into / "config.json")
    config = replace(config, train_data=str(into / "train.parquet"), output_dir=str(into / "model"), **changes)
    return train(config)


def test_a_killed_training_left_a_checkpoint_and_no_model(killed):
    assert not (killed / "model").exists() and not (killed / "model.staging").exists()
    assert KILL_AT // SAVE_EVERY * SAVE_EVERY <= last_checkpoint(killed) < STEPS


def test_a_rerun_resumes_from_the_last_checkpoint_and_ends_at_the_same_step(killed, tmp_path):
    last = last_checkpoint(killed)
    result = rerun(killed, tmp_path / "run")
    assert result.steps == STEPS  # what an uninterrupted run ends at
    assert result.resumed_from.endswith(f"checkpoint-{last}")
    assert result.loss_curve[0][0] == last + 1  # it went on from there, it did not start again
    model = tmp_path / "run" / "model"
    assert TrainResult.from_json(model / RESULT_FILE).steps == STEPS and (model / "model.safetensors").exists()
    assert not (tmp_path / "run" / "model.checkpoints").exists()


def test_a_checkpoint_cut_off_while_written_and_a_half_saved_model_are_skipped(killed, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(killed, folder)
    last, checkpoints = last_checkpoint(killed), folder / "model.checkpoints"
    shutil.copytree(checkpoints / f"checkpoint-{last}", checkpoints / f"checkpoint-{last + SAVE_EVERY}")
    state = checkpoints / f"checkpoint-{last + SAVE_EVERY}" / "trainer_state.json"
    state.write_text(state.read_text()[:40])  # the kill struck while its last file was being written
    (folder / "model.staging").mkdir()
    (folder / "model.staging" / "model.safetensors").write_bytes(b"\x00" * 10)  # or while the model was saved
    result = rerun(folder, tmp_path / "again")
    assert result.resumed_from.endswith(f"checkpoint-{last}") and result.steps == STEPS
    assert not (tmp_path / "again" / "model.staging").exists()
    assert (tmp_path / "again" / "model" / "model.safetensors").stat().st_size > 1000


def test_a_checkpoint_of_another_training_is_never_resumed(killed, tmp_path):
    result = rerun(killed, tmp_path / "run", max_steps=3)  # new settings: its optimizer state and step are no use
    assert result.resumed_from is None and result.loss_curve[0][0] == 1 and result.steps == 3


POLLER = """
import os, sys, time
target, seconds = sys.argv[1], float(sys.argv[2])
print("ready", flush=True)
seen = missing = 0
end = time.time() + seconds
while time.time() < end:
    seen += 1
    if not os.path.exists(os.path.join(target, "weights")):
        missing += 1
print(seen, missing, flush=True)
"""


def test_a_model_folder_is_swapped_whole_and_never_missing(tmp_path):
    """Another process looks for the weights while the folder is replaced 300 times."""
    target = tmp_path / "model"
    target.mkdir()
    (target / "weights").write_text("0")
    poller = subprocess.Popen([sys.executable, "-c", POLLER, str(target), "3"], stdout=subprocess.PIPE, text=True)
    assert poller.stdout.readline().strip() == "ready"
    for i in range(1, 301):
        staging = tmp_path / "model.staging"
        staging.mkdir()
        (staging / "weights").write_text(str(i))
        replace_dir(staging, target)
    seen, missing = map(int, poller.stdout.readline().split())
    poller.wait(timeout=30)
    assert seen > 1000 and missing == 0
    assert (target / "weights").read_text() == "300" and sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_crash_between_the_two_renames_of_a_swap_is_recovered(tmp_path):
    """Where folders cannot be exchanged in one step, the old one is moved aside first; a crash
    right after that leaves only NAME.previous, which the next training (or recover_dir) puts back."""
    (tmp_path / "model.previous").mkdir()
    (tmp_path / "model.previous" / "weights").write_text("last good")
    assert (recover_dir(tmp_path / "model") / "weights").read_text() == "last good"
    assert not (tmp_path / "model.previous").exists()


PARQUET_WRITER = """
import sys, polars as pl
from pathlib import Path
from subterra.atomic import atomic_path
target = Path(sys.argv[1])
for batch in range(1000):
    frame = pl.DataFrame({"batch": [batch] * 2_000_000, "x": range(2_000_000)})
    with atomic_path(target) as tmp:
        frame.write_parquet(tmp, compression="uncompressed", row_group_size=50_000)
    if batch == 0:
        print("ready", flush=True)
"""


def test_a_parquet_writer_killed_mid_file_leaves_the_last_whole_file(tmp_path):
    target = tmp_path / "train.parquet"
    writer = subprocess.Popen([sys.executable, "-c", PARQUET_WRITER, str(target)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "ready"
    time.sleep(0.7)
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=30)
    frame = pl.read_parquet(target)  # whole: one batch, every row
    assert frame.height == 2_000_000 and frame["batch"].n_unique() == 1
    assert [p.name for p in tmp_path.iterdir() if p.name != "train.parquet"] in ([], [f".train.parquet.{writer.pid}.tmp"])


def test_an_output_whose_writer_fails_is_left_as_it_was(tmp_path):
    target = tmp_path / "config.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]
