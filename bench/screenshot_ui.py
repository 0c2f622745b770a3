"""The Dagster UI as a user meets it, in a real headless browser, checked.

Builds a scratch data folder and DAGSTER_HOME, compiles the mini workflow there (a few training
steps: the pages need materializations and check results, not a good model), drops a broken
workflow file beside it, starts ``dagster dev`` on a free local port, waits for the sensor's tick,
then drives Debian's Chromium (Playwright's Python package with the system browser; nothing is
downloaded) to three pages and saves a screenshot of each:

- ``asset.png``: ``eval_scores`` of the workflow's partition;
- ``checks.png``: the asset's check results, each naming its workflow;
- ``sensor.png``: the workflow-files sensor, its tick saying the broken file's fault.

Each page is checked for what it must show (the workflow's id; the broken file's name and fault);
the script exits 1 naming what is missing.

    python -m bench.screenshot_ui OUT_DIR
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT

WORKFLOW = "mini_booking"
BROKEN = "broken_flow.yaml"
BROKEN_TEXT = """workflow: broken_flow
assistant: You help.
start: hello
nodes:
  hello:
    prompt: Say hello.
    next: nowhere
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def compile_mini(data: Path, home: Path) -> None:
    """The mini workflow compiled into ``data``, its runs and materializations in ``home``."""
    import dagster as dg

    from subterra_dagster.assets import COMPILE_ASSETS, workflows_partitions
    from subterra_dagster.definitions import build_definitions

    run_config = dg.RunConfig(ops={
        "synthetic_corpus": {"config": {"conversations_per_path": 2, "holdout_scenarios": 4, "sizing": "uniform"}},
        "validated_dataset": {"config": {"vocab_size": 400, "hidden_size": 32, "intermediate_size": 64, "num_layers": 2,
                                         "num_heads": 2, "batch_size": 4, "max_steps": 4}},
        "trained_weights": {"config": {"vocab_size": 400, "hidden_size": 32, "intermediate_size": 64, "num_layers": 2,
                                       "num_heads": 2, "batch_size": 4, "max_steps": 4, "logging_steps": 2, "save_steps": 2}},
        "eval_scores": {"config": {"scenarios": 2, "batch_size": 4, "max_say_tokens": 8, "max_form_tokens": 40}},
    })
    os.environ["DAGSTER_HOME"] = str(home)
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions(workflows_partitions.name, [WORKFLOW])
        result = dg.materialize(COMPILE_ASSETS, partition_key=WORKFLOW, instance=instance, run_config=run_config,
                                resources=build_definitions(str(data)).resources, raise_on_error=False)
        if not result.success:
            raise SystemExit("the mini workflow did not compile")


def shoot(url: str, out: Path) -> list[str]:
    """Visit the three pages, save their screenshots; what each is missing."""
    from playwright.sync_api import sync_playwright

    missing = []
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    pages = [
        ("asset.png", f"{url}/assets/eval_scores?partition={WORKFLOW}", [WORKFLOW, "Latest check results"]),
        ("checks.png", f"{url}/assets/eval_scores?view=checks", [f"{WORKFLOW}:"]),
        ("sensor.png", f"{url}/automation", [BROKEN, "invalid, not compiled"]),
    ]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=args)
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        for name, address, wanted in pages:
            page.goto(address)
            try:  # the first visit's "Join the Dagster community" dialog
                page.get_by_role("button", name="Skip").click(timeout=5000)
            except Exception:
                pass
            deadline = time.monotonic() + 60
            text = ""
            while time.monotonic() < deadline:
                page.wait_for_timeout(1000)
                text = page.inner_text("body")
                if all(w in text for w in wanted):
                    break
            if name == "sensor.png":  # the tick's skip reason: the sensor's own page
                page.get_by_text("workflow_files_sensor").first.click(timeout=30000)
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    page.wait_for_timeout(1000)
                    text = page.inner_text("body")
                    if all(w in text for w in wanted):
                        break
            page.screenshot(path=str(out / name), full_page=True)
            missing += [f"{name}: {w!r}" for w in wanted if w not in text]
        browser.close()
    return missing


def main(argv: list[str]) -> int:
    out = Path(argv[0] if argv else "screenshots").resolve()
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="subterra-ui-"))
    data, home = scratch / "data", scratch / "home"
    (data / "workflows").mkdir(parents=True)
    home.mkdir()
    shutil.copyfile(ROOT / "dagster_instance.yaml", home / "dagster.yaml")
    shutil.copyfile(ROOT / "tests" / "fixtures" / "mini_booking.yaml", data / "workflows" / "mini_booking.yaml")
    print(f"compiling {WORKFLOW} in {scratch} ...", flush=True)
    compile_mini(data, home)
    (data / "workflows" / BROKEN).write_text(BROKEN_TEXT)
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "SUBTERRA_DATA_DIR": str(data)}
    server = subprocess.Popen([str(Path(sys.executable).with_name("dagster")), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1",
                               "-p", str(port)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        print(f"dagster dev on http://127.0.0.1:{port}; waiting for the sensor's first ticks ...", flush=True)
        time.sleep(75)
        missing = shoot(f"http://127.0.0.1:{port}", out)
    finally:
        server.terminate()
        server.wait(60)
        shutil.rmtree(scratch, ignore_errors=True)
    for name in ("asset.png", "checks.png", "sensor.png"):
        print(f"wrote {out / name}")
    if missing:
        print("missing: " + "; ".join(missing))
        return 1
    print("every page shows its workflow, and the sensor the broken file's fault")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
