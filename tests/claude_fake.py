"""A local stand-in for the Claude API, for tests: an ``http.server`` in a thread that speaks the
parts of the Messages API and the Message Batches API Subterra uses, to the real ``anthropic``
SDK pointed at it (``base_url``). No network.

What it answers, by the system prompt it is sent (it reads Subterra's own prompts):

* teacher — the plan's example wording of every turn, as the JSON the teacher asks for;
* user — the example wording of the turn asked for (malformed: its values lost);
* judge — five scores: task success 5 when the conversation ended at the expected step (else 2),
  4 for the others, naturalness 3 from a second judge (any model but ``primary_judge``);
* frontier — the reference form for the user messages so far (``learn`` the references), else a
  form naming no real step.

Usage is counted as 4 characters a token; a system prefix marked ``cache_control`` is written to
the cache the first time and read from it after.

Faults, on demand: ``queue(...)`` answers the next Messages requests with ``"429"``, ``"529"``,
``"500"``, ``"slow"`` (later than the client waits) or ``"malformed"`` (text that is not what was
asked); ``outage(purpose, after)`` answers 500 to every request of ``purpose`` after that many
answers; ``malformed_labels`` answer those conversations malformed, ``misspelled_labels`` (teacher)
with a value the user message no longer holds verbatim; ``batch_faults`` give those
conversations an ``errored`` or ``expired`` result in the next batch that holds them;
``poll_outage`` answers 500 to every batch poll.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from subterra import claude_teacher, claude_user, judge
from subterra.frontier import FORM_ONLY

KEY = "sk-ant-api03-test-4f1d9c0e-NEVER-SHOWN"
ERROR_TYPES = {429: "rate_limit_error", 529: "overloaded_error", 500: "api_error", 401: "authentication_error", 404: "not_found_error"}


def _tokens(text: str) -> int:
    return len(text) // 4 + 1


class FakeClaude:
    def __init__(self, key: str = KEY, slow_seconds: float = 1.5, batch_polls: int = 1, primary_judge: str = "claude-opus-5-5"):
        self.key = key
        self.slow_seconds = slow_seconds
        self.delay = 0.0  # seconds every Messages answer takes (within the client's timeout)
        self.batch_polls = batch_polls  # polls a batch answers "in_progress" before it has ended
        self.primary_judge = primary_judge
        self.lock = threading.Lock()
        self.requests: list[dict] = []  # every HTTP request: method, path, purpose, label, outcome
        self.faults: list[str] = []
        self.outages: dict[str, int] = {}
        self.malformed_labels: set[str] = set()
        self.misspelled_labels: set[str] = set()  # teacher answers whose user messages change a value
        self.batch_faults: dict[str, str] = {}
        self.poll_outage = False
        self.answered: Counter[str] = Counter()  # per purpose: answers sent (interactive and batch)
        self.admitted: Counter[str] = Counter()  # per purpose: requests let through while an outage is set
        self.in_flight = 0
        self.max_in_flight = 0
        self.cached: set[str] = set()
        self.agent: dict[tuple[str, ...], str] = {}
        self.batches: dict[str, dict] = {}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                fake._serve(self)

            def do_GET(self):
                fake._serve(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- test controls -------------------------------------------------------------------
    def queue(self, *faults: str) -> None:
        with self.lock:
            self.faults.extend(faults)

    def outage(self, purpose: str, after: int) -> None:
        with self.lock:
            self.outages[purpose] = after

    def learn(self, corpus_rows) -> None:
        """Answer as the frontier agent with these reference conversations' forms."""
        for text in corpus_rows["messages"]:
            messages = json.loads(text)
            users: list[str] = []
            for m in messages[1:]:
                if m["role"] == "user":
                    users.append(m["content"])
                else:
                    self.agent[tuple(users)] = m["content"]

    def count(self, purpose: str | None = None, outcome: str | None = None, path: str | None = "/v1/messages") -> int:
        """HTTP requests to ``path`` (None: any) of ``purpose``, with ``outcome``, so far."""
        with self.lock:
            return sum(1 for r in self.requests if (path is None or r["path"] == path) and (purpose is None or r["purpose"] == purpose)
                       and (outcome is None or r["outcome"] == outcome))

    def batch_requests(self, purpose: str) -> list[list[str]]:
        """The conversation labels of every batch of ``purpose`` created, in order."""
        return [b["labels"] for b in self.batches.values() if b["purpose"] == purpose]

    # -- HTTP ----------------------------------------------------------------------------
    def _send(self, handler, status: int, body: bytes, content_type: str = "application/json", headers: dict | None = None):
        try:
            handler.send_response(status)
            handler.send_header("content-type", content_type)
            handler.send_header("content-length", str(len(body)))
            handler.send_header("request-id", f"req_{len(self.requests)}")
            for k, v in (headers or {}).items():
                handler.send_header(k, v)
            handler.end_headers()
            handler.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up waiting (a slow answer)

    def _error(self, handler, status: int, message: str):
        body = {"type": "error", "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message}}
        self._send(handler, status, json.dumps(body).encode(), headers={"retry-after-ms": "5"})

    def _serve(self, handler) -> None:
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            length = int(handler.headers.get("content-length") or 0)
            body = json.loads(handler.rfile.read(length) or b"{}") if length else {}
            path = handler.path.split("?")[0]
            record = {"method": handler.command, "path": path, "purpose": None, "label": None, "outcome": None}
            with self.lock:
                self.requests.append(record)
            sent = handler.headers.get("x-api-key") or handler.headers.get("authorization", "").removeprefix("Bearer ")
            if sent != self.key or not handler.headers.get("anthropic-version"):
                record["outcome"] = "401"
                return self._error(handler, 401, "invalid API key")
            if handler.command == "POST" and path == "/v1/messages":
                return self._messages(handler, body, record)
            if handler.command == "POST" and path == "/v1/messages/batches":
                return self._create_batch(handler, body, record)
            match = re.fullmatch(r"/v1/messages/batches/([\w-]+)(/results)?", path)
            if handler.command == "GET" and match and match.group(1) in self.batches:
                batch = self.batches[match.group(1)]
                record["purpose"] = batch["purpose"]
                return self._batch_results(handler, batch) if match.group(2) else self._retrieve(handler, batch, record)
            record["outcome"] = "404"
            return self._error(handler, 404, f"no route {handler.command} {path}")
        finally:
            with self.lock:
                self.in_flight -= 1

    # -- the Messages API ----------------------------------------------------------------
    def _messages(self, handler, params: dict, record: dict) -> None:
        purpose, label = self._purpose(params)
        record.update(purpose=purpose, label=label)
        with self.lock:
            fault = self.faults.pop(0) if self.faults else None
            if fault is None and purpose in self.outages:
                if self.admitted[purpose] >= self.outages[purpose]:
                    fault = "500"
                else:
                    self.admitted[purpose] += 1
        record["outcome"] = fault or "ok"
        if fault in ("429", "529", "500"):
            return self._error(handler, int(fault), f"injected {fault}")
        time.sleep(self.slow_seconds if fault == "slow" else self.delay)
        message = self._message(params, purpose, label, malformed=fault == "malformed")
        if fault != "slow":
            with self.lock:
                self.answered[purpose] += 1
        self._send(handler, 200, json.dumps(message).encode())

    def _purpose(self, params: dict) -> tuple[str, str | None]:
        first = params["system"][0]["text"]
        payload = params["messages"][-1]["content"]
        if first == claude_teacher.INSTRUCTIONS:
            return "teacher", json.loads(payload)["conversation"]
        if first == claude_user.INSTRUCTIONS:
            return "user", json.loads(payload)["conversation"]
        if first == judge.INSTRUCTIONS:
            return "judge", json.loads(payload)["conversation"]
        if first.endswith(FORM_ONLY):
            return "frontier", None
        return "unknown", None

    def _message(self, params: dict, purpose: str, label: str | None, malformed: bool = False) -> dict:
        malformed = malformed or label in self.malformed_labels
        text = self._answer(params, purpose, malformed)
        system = params.get("system", [])
        marked = [i for i, block in enumerate(system) if block.get("cache_control")]
        cut = marked[-1] + 1 if marked else 0
        prefix = "".join(b["text"] for b in system[:cut])
        rest = "".join(b["text"] for b in system[cut:]) + "".join(m["content"] for m in params["messages"])
        with self.lock:
            hit = prefix in self.cached
            self.cached.add(prefix)
        usage = {
            "input_tokens": _tokens(rest),
            "output_tokens": _tokens(text),
            "cache_creation_input_tokens": 0 if (hit or not prefix) else _tokens(prefix),
            "cache_read_input_tokens": _tokens(prefix) if (hit and prefix) else 0,
        }
        return {
            "id": f"msg_{len(self.requests):06d}", "type": "message", "role": "assistant", "model": params["model"],
            "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None, "usage": usage,
        }

    def _answer(self, params: dict, purpose: str, malformed: bool) -> str:
        payload = params["messages"][-1]["content"]
        if purpose == "teacher":
            if malformed:
                return "Here is a lovely conversation for you!"
            plan = json.loads(payload)
            turns = [{"user": t["user"]["example"], "say": t["agent"]["example"]} for t in plan["turns"]]
            if plan["conversation"] in self.misspelled_labels:
                turn, planned = next((a, b) for a, b in zip(turns, plan["turns"]) if b["user"].get("gives"))
                for value in planned["user"]["gives"].values():
                    turn["user"] = turn["user"].replace(value, value.upper() + "X")
            return json.dumps({"turns": turns})
        if purpose == "user":
            now = json.loads(payload)["now"]
            text = now["example"]
            for value in now.get("gives", {}).values() if malformed else ():
                text = text.replace(value, "that one")  # the values are lost
            return text
        if purpose == "judge":
            if malformed:
                return "I would rate this conversation quite highly."
            data = json.loads(payload)
            reached = data["ended"] and data["turns"] and data["turns"][-1]["step"] == data["expected_end"]
            second = params["model"] != self.primary_judge
            return json.dumps({"task_success": 5 if reached else 2, "information_accuracy": 4, "consistency": 4,
                               "graceful_handling": 4, "naturalness": 3 if second else 4, "rationale": "fake"})
        if purpose == "frontier":
            if malformed:
                return "Sure, happy to help with that!"
            users = tuple(m["content"] for m in params["messages"] if m["role"] == "user")
            return self.agent.get(users, json.dumps({"node": "no_such_step", "slots": {}, "say": "Could you repeat that?"}))
        return "?"

    # -- the Message Batches API ---------------------------------------------------------
    def _batch_json(self, batch: dict) -> dict:
        ended = batch["polls"] > self.batch_polls
        counts = Counter(r["result"]["type"] for r in batch["results"]) if ended else Counter()
        return {
            "id": batch["id"], "type": "message_batch",
            "processing_status": "ended" if ended else "in_progress",
            "request_counts": {"processing": 0 if ended else len(batch["results"]), "succeeded": counts["succeeded"],
                               "errored": counts["errored"], "canceled": counts["canceled"], "expired": counts["expired"]},
            "created_at": batch["created_at"], "expires_at": batch["expires_at"],
            "ended_at": batch["created_at"] if ended else None, "archived_at": None, "cancel_initiated_at": None,
            "results_url": f"{self.url}/v1/messages/batches/{batch['id']}/results" if ended else None,
        }

    def _create_batch(self, handler, body: dict, record: dict) -> None:
        created = datetime.now(timezone.utc)
        batch = {"id": f"msgbatch_{len(self.batches) + 1:04d}", "polls": 0, "results": [], "labels": [], "purpose": None,
                 "created_at": created.isoformat(), "expires_at": (created + timedelta(days=1)).isoformat()}
        for item in body["requests"]:
            purpose, label = self._purpose(item["params"])
            batch["purpose"], record["purpose"] = purpose, purpose
            batch["labels"].append(label)
            with self.lock:
                fault = self.batch_faults.pop(label, None)
            if fault == "errored":
                result = {"type": "errored", "error": {"type": "error", "error": {"type": "overloaded_error", "message": "injected"}}}
            elif fault == "expired":
                result = {"type": "expired"}
            else:
                result = {"type": "succeeded", "message": self._message(item["params"], purpose, label)}
                with self.lock:
                    self.answered[purpose] += 1
            batch["results"].append({"custom_id": item["custom_id"], "result": result})
        self.batches[batch["id"]] = batch
        record["outcome"] = "ok"
        self._send(handler, 200, json.dumps(self._batch_json(batch)).encode())

    def _retrieve(self, handler, batch: dict, record: dict) -> None:
        if self.poll_outage:
            record["outcome"] = "500"
            return self._error(handler, 500, "injected poll outage")
        batch["polls"] += 1
        record["outcome"] = "ok"
        self._send(handler, 200, json.dumps(self._batch_json(batch)).encode())

    def _batch_results(self, handler, batch: dict) -> None:
        lines = "".join(json.dumps(r) + "\n" for r in reversed(batch["results"]))  # order is not promised
        self._send(handler, 200, lines.encode(), content_type="application/binary")
