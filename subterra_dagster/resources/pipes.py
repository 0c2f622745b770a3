"""The Pipes client that runs training in its own process, reading its messages one whole line at a time.

Dagster's file message reader tails the messages file with ``readline()``, which returns whatever
the writer has put there so far: a line caught half-written is parsed as JSON, fails, and the
reader thread dies with a framework error in the run's log. The training goes on, but the rest of
its progress never reaches the log (seen once in an e2e bench run, at step 600 of 1,032:
"Unterminated string starting at: line 1 column 75"; Dagster then warned that it "did not receive
closed message from external process"). This reader keeps a partial line until its newline
arrives.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from typing import Callable, Iterator

import dagster as dg


def whole_lines(path: str, should_stop: Callable[[], bool], poll_seconds: float = 0.01) -> Iterator[str]:
    """Lines appended to ``path`` by another process, each yielded once it is complete (ends with a
    newline), until ``should_stop()`` and nothing is left to read; a last line without its
    newline is yielded then, if it holds anything."""
    pending = ""
    with open(path, encoding="utf-8") as stream:
        while True:
            piece = stream.readline()
            if piece:
                pending += piece
                if pending.endswith("\n"):
                    yield pending
                    pending = ""
            elif should_stop():
                if pending.strip():
                    yield pending
                return
            else:
                time.sleep(poll_seconds)


class WholeLineFileMessageReader(dg.PipesFileMessageReader):
    """``PipesFileMessageReader`` that parses only complete lines (``whole_lines``)."""

    def _reader_thread(self, handler, is_resource_complete) -> None:
        try:
            for line in whole_lines(self._path, is_resource_complete.is_set):
                handler.handle_message(json.loads(line))
        except:  # noqa: E722 - as Dagster's own reader: report whatever stopped the thread, then stop
            handler.report_pipes_framework_exception(f"{self.__class__.__name__} reader thread", sys.exc_info())
            raise


class WholeLineTempFileMessageReader(dg.PipesMessageReader):
    """Reads the external process's messages from a temporary file, one whole line at a time."""

    @contextmanager
    def read_messages(self, handler) -> Iterator[dict]:
        with tempfile.TemporaryDirectory() as folder:
            reader = WholeLineFileMessageReader(os.path.join(folder, "messages"))
            with reader.read_messages(handler) as params:
                yield params

    def no_messages_debug_text(self) -> str:
        return "Attempted to read messages from a local temporary file."


def launch_training(context, client: dg.PipesSubprocessClient, train_config, config_file):
    """Run ``python -m subterra.cli.train`` on ``train_config`` in its own process through Dagster
    Pipes (progress streams into the run's log); returns (the reported materialization, TrainResult)."""
    from pathlib import Path

    from subterra.training import RESULT_FILE, TrainResult

    train_config.to_json(config_file)
    reported = client.run(
        command=[sys.executable, "-m", "subterra.cli.train", "--config", str(config_file)], context=context
    ).get_materialize_result()
    return reported, TrainResult.from_json(Path(train_config.output_dir) / RESULT_FILE)


def training_process_client() -> dg.PipesSubprocessClient:
    """The client ``trained_weights`` and the repair rounds launch training with."""
    return dg.PipesSubprocessClient(message_reader=WholeLineTempFileMessageReader())
