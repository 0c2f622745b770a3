"""Serving: N users talking at once to ``subterra serve`` over HTTP, batched against one at a time.

A server process (``subterra serve`` on a compiled workflow's data folder) is driven by N
closed-loop simulated users (threads in this process): each plays a held-out validation scenario
(``ScriptedUser``, answering the step the server says it is at), sends the next message as soon
as the reply arrives, and starts a new scenario when one ends, until the level's time is up.
Per level: turns answered per second, and each turn's latency (request to reply) at p50 and p95.
The baseline is the same server answering one request at a time (``--max-batch 1``).

    python -m bench.bench_serve [--data DIR] [--workflow travel_booking] [--levels 1,8,32] [--seconds 40]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.common import ROOT, header, ratio_line

LEVELS = (1, 8, 32)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``subterra serve`` in a process of its own (the load generator never takes its GIL)."""

    def __init__(self, data: Path, max_batch: int):
        self.port = free_port()
        env = {**os.environ, "SUBTERRA_DATA_DIR": str(data)}
        env.pop("SUBTERRA_API_KEY", None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "subterra.cli", "serve", "--port", str(self.port), "--max-batch", str(max_batch),
             "--max-concurrent", "1024", "--no-access-log"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait(self, workflow: str, client) -> None:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if client.get(f"{self.url}/v1/models", timeout=5).status_code == 200:
                    return
            except Exception:
                time.sleep(0.5)
        raise RuntimeError("the server did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def scenarios(data: Path, workflow: str):
    from subterra.scenario import Scenario
    from subterra.store import Store

    rows = Store(data / "subterra.duckdb").read("validated_dataset", workflow)
    return [Scenario.from_json(s) for s, split in zip(rows["scenario"], rows["split"]) if split == "validation"]


def load(url: str, wf, pool, users: int, seconds: float, client) -> dict:
    """``users`` closed-loop users for ``seconds``: turns, turns/s, p50/p95 latency (ms)."""
    from subterra.simulator import ScriptedUser

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start_at = time.monotonic()
    stop_at = start_at + seconds

    def user(k: int) -> None:
        n = k
        while time.monotonic() < stop_at:
            simulated = ScriptedUser(wf, pool[n % len(pool)])
            n += users
            turn, messages = simulated.opener(), []
            for _ in range(40):
                messages.append({"role": "user", "content": turn.text})
                sent = time.monotonic()
                r = client.post(f"{url}/v1/chat/completions", json={"model": wf.id, "messages": messages}, timeout=600)
                took = time.monotonic() - sent
                if r.status_code != 200:
                    with lock:
                        errors.append(f"{r.status_code} {r.text[:200]}")
                    break
                body = r.json()
                with lock:
                    if time.monotonic() <= stop_at:
                        latencies.append(took)
                say, form = body["choices"][0]["message"]["content"], body["subterra"]
                messages.append({"role": "assistant", "content": say})
                turn = None if form["ended"] else simulated.reply(form["node"], say)
                if turn is None or time.monotonic() >= stop_at:
                    break

    threads = [threading.Thread(target=user, args=(k,)) for k in range(users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies.sort()

    def pct(q: float) -> float:
        return 1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else float("nan")

    return {"users": users, "turns": len(latencies), "turns_per_s": len(latencies) / seconds, "p50_ms": pct(0.5),
            "p95_ms": pct(0.95), "errors": errors}


def main(argv: list[str] | None = None) -> int:
    import httpx2 as httpx

    from subterra.workflow import Workflow

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("SUBTERRA_DATA_DIR", str(ROOT / "data")))
    parser.add_argument("--workflow", default="travel_booking")
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)))
    parser.add_argument("--seconds", type=float, default=40.0, help="how long each level runs")
    parser.add_argument("--json", default="", help="also write the results to this file")
    args = parser.parse_args(argv or [])
    data, levels = Path(args.data).resolve(), [int(x) for x in args.levels.split(",")]
    if not (data / "subterra.duckdb").exists():
        print(f"bench_serve: no compiled workflow in {data} (make demo compiles travel_booking); skipped")
        return 0
    header(f"serving {args.workflow} from {data}: {args.seconds:.0f} s per level")
    from subterra.serving import serving_model
    from subterra.store import Store

    serving = serving_model(Store(data / "subterra.duckdb"), args.workflow)
    wf = Workflow.from_dict(serving.definition)
    pool = scenarios(data, args.workflow)
    print(f"model: {serving.model_dir}; {len(pool)} validation scenarios as users", flush=True)
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    results = {}
    with httpx.Client(limits=limits) as client:
        for mode, max_batch in (("batched", 32), ("one at a time", 1)):
            server = Server(data, max_batch)
            try:
                server.wait(args.workflow, client)
                load(server.url, wf, pool, 2, 5, client)  # warm up (model loading, first forwards)
                for users in (levels if mode == "batched" else [levels[-1]]):
                    got = load(server.url, wf, pool, users, args.seconds, client)
                    results[(mode, users)] = got
                    print(f"{mode:>13}  N={users:<3} {got['turns']:>5} turns  {got['turns_per_s']:7.2f} turns/s  "
                          f"p50 {got['p50_ms']:8.0f} ms  p95 {got['p95_ms']:8.0f} ms"
                          + (f"  {len(got['errors'])} errors, first: {got['errors'][0]}" if got["errors"] else ""), flush=True)
            finally:
                server.stop()
    top = levels[-1]
    batched, alone = results[("batched", top)], results[("one at a time", top)]
    ratio_line(f"throughput at N={top}", "batched", batched["turns_per_s"], "one at a time", alone["turns_per_s"], "turns/s")
    ratio_line(f"p95 latency, N={top} against N={levels[0]} (batched)", f"N={levels[0]}",
               results[("batched", levels[0])]["p95_ms"], f"N={top}", batched["p95_ms"], "ms", higher_is_better=True)
    if args.json:
        Path(args.json).write_text(json.dumps({f"{m}|{n}": r for (m, n), r in results.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
