"""A live ``subterra serve`` for tests: uvicorn on a free local port in a thread, serving the mini
workflow's trained tiny model from a real data folder and DuckDB store."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
import pytest

from subterra.deployment import Deployment
from subterra.server import ServerConfig, create_app
from subterra.settings import Settings
from subterra.store import Store


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def record_model(store: Store, wf, model_dir: str) -> None:
    """Make ``model_dir`` the workflow's compiled model, as ``trained_weights`` records one."""
    store.replace_partition("trained_weights", wf.id, pl.DataFrame([{
        "workflow": wf.id, "model_dir": model_dir, "definition": json.dumps(wf.to_dict()),
        "trained_at": datetime.now(timezone.utc).isoformat(timespec="microseconds"), "recompile": "full",
    }]))


@dataclass
class LiveServer:
    url: str
    settings: Settings
    store: Store
    deployment: Deployment
    server: object
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def start_server(settings: Settings, config: ServerConfig = ServerConfig(), refresh_seconds: float = 0.2) -> LiveServer:
    import uvicorn

    store = Store(settings.db_path)
    deployment = Deployment(store, settings.data_dir, max_batch=config.max_batch, refresh_seconds=refresh_seconds)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(deployment, config), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    return LiveServer(f"http://127.0.0.1:{port}", settings, store, deployment, server, thread)


@pytest.fixture(scope="module")
def live_server(tmp_path_factory, fluent, mini_workflow):
    """The mini workflow's trained model behind a running server (module-wide)."""
    settings = Settings(tmp_path_factory.mktemp("serve") / "data")
    model_dir = settings.data_dir / "models" / "mini_booking" / "served"
    shutil.copytree(fluent.model_dir, model_dir)
    record_model(Store(settings.db_path), mini_workflow, "models/mini_booking/served")  # relative to the data folder
    live = start_server(settings)
    yield live
    live.stop()
