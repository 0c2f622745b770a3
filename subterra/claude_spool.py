"""Claude's answers, kept: every reply is appended to a spool file the moment it arrives, keyed by a
hash of the request, so a run that stops halfway loses nothing and the rerun asks only what is
missing.

The spool of a workflow is two JSON-lines files in ``DATA/claude/`` (``duckdb`` reads them with
``read_json_auto``):

* ``WORKFLOW.responses.jsonl`` — one line per answered request: ``request_key, purpose, label,
  model, text, stop_reason``, the measured tokens (``input_tokens, output_tokens,
  cache_write_tokens, cache_read_tokens``), ``batch, seconds, usd, received_at``;
* ``WORKFLOW.batches.jsonl`` — the Message Batches submitted (``opened``, with their request keys)
  and read back (``closed``): a batch still open when a run stopped is polled and read by the
  rerun instead of being submitted again.

A line is appended and flushed to disk under an exclusive file lock (threads and processes
queue), so a crash leaves at most a torn last line, which reading skips.

``ClaudeAnswers`` answers one request (``one``) or many (``all``): from the spool when asked
before, else live — interactively, at most ``concurrency`` in flight, or as batches. A request
still failing after the SDK's retries stops the scheduling of new ones; whatever arrived is kept
and ``ClaudeIncomplete`` says how many are missing.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

from subterra.claude_client import MAX_BATCH_REQUESTS, ClaudeClient, ClaudeError, Reply, Request, Usage, log

KEEP_EVERY = 100  # batch results are written in groups this size as the results file streams in


class ClaudeIncomplete(ClaudeError):
    """Some requests are still unanswered; the answered ones are kept."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _append(path: Path, records: Sequence[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    with open(path, "a", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _read(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    with open(path, encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_SH)
        try:
            lines = f.read().splitlines()
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
    for line in lines:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line torn by a crash
    return out


class ResponseSpool:
    """The answers and batches of one workflow, in ``folder`` (``DATA/claude``)."""

    def __init__(self, folder: str | Path, workflow: str):
        self.responses = Path(folder) / f"{workflow}.responses.jsonl"
        self.batches = Path(folder) / f"{workflow}.batches.jsonl"

    def replies(self) -> dict[str, Reply]:
        out: dict[str, Reply] = {}
        for r in _read(self.responses):
            usage = Usage(r["input_tokens"], r["output_tokens"], r["cache_write_tokens"], r["cache_read_tokens"])
            out.setdefault(r["request_key"], Reply(r["text"], usage, r["model"], r["stop_reason"], r["batch"], r["seconds"]))
        return out

    def put(self, answered: Sequence[tuple[Request, Reply]]) -> None:
        if not answered:
            return
        at = _now()
        _append(self.responses, [
            {
                "request_key": q.key, "purpose": q.purpose, "label": q.label, "model": a.model, "text": a.text,
                "stop_reason": a.stop_reason, "input_tokens": a.usage.input_tokens, "output_tokens": a.usage.output_tokens,
                "cache_write_tokens": a.usage.cache_write_tokens, "cache_read_tokens": a.usage.cache_read_tokens,
                "batch": a.batch, "seconds": a.seconds, "usd": a.usd, "received_at": at,
            }
            for q, a in answered
        ])

    def batch_opened(self, batch_id: str, purpose: str, keys: list[str]) -> None:
        _append(self.batches, [{"batch_id": batch_id, "purpose": purpose, "event": "opened", "request_keys": keys, "at": _now()}])

    def batch_closed(self, batch_id: str, purpose: str) -> None:
        _append(self.batches, [{"batch_id": batch_id, "purpose": purpose, "event": "closed", "at": _now()}])

    def open_batches(self, purpose: str) -> list[tuple[str, list[str]]]:
        """(batch id, request keys) of every batch submitted and not yet read back, oldest first."""
        events = [e for e in _read(self.batches) if e["purpose"] == purpose]
        closed = {e["batch_id"] for e in events if e["event"] == "closed"}
        return [(e["batch_id"], e["request_keys"]) for e in events if e["event"] == "opened" and e["batch_id"] not in closed]


class ClaudeAnswers:
    """Answers from the spool, or from Claude and then into the spool."""

    def __init__(self, client: ClaudeClient, spool: ResponseSpool, say: Callable[[str], None] | None = None):
        self.client = client
        self.spool = spool
        self.say = say or log.info
        self._have: dict[str, Reply] | None = None
        self._lock = threading.Lock()
        self.reused: Counter[str] = Counter()  # per purpose: answers served from the spool
        self.received: Counter[str] = Counter()  # per purpose: answers that arrived from Claude

    def _known(self) -> dict[str, Reply]:
        with self._lock:
            if self._have is None:
                self._have = self.spool.replies()
            return self._have

    def _keep(self, answered: list[tuple[Request, Reply]]) -> None:
        self.spool.put(answered)
        have = self._known()
        for request, reply in answered:
            have[request.key] = reply
            self.received[request.purpose] += 1

    def one(self, request: Request) -> Reply:
        have = self._known()
        if request.key in have:
            self.reused[request.purpose] += 1
            return have[request.key]
        reply = self.client.create(request)
        self._keep([(request, reply)])
        return reply

    def all(self, requests: Sequence[Request], mode: str = "interactive") -> dict[str, Reply]:
        """The reply to every request, by request key."""
        have = self._known()
        unique = {r.key: r for r in requests}
        missing = [r for k, r in unique.items() if k not in have]
        purpose = requests[0].purpose if requests else ""
        self.reused[purpose] += len(unique) - len(missing)
        if missing:
            self.say(f"claude {purpose}: {len(unique) - len(missing)} of {len(unique)} answers kept from before; "
                     f"requesting {len(missing)} ({mode})")
            errors = self._batches(missing) if mode == "batch" else self._interactive(missing)
            still = [r for r in missing if r.key not in have]
            if still:
                raise ClaudeIncomplete(
                    f"{len(still)} of {len(unique)} {purpose} requests unanswered ({errors[0] if errors else 'no answer'}); "
                    f"the {len(unique) - len(still)} answered are kept, a rerun requests only the {len(still)} missing"
                )
        return {k: have[k] for k in unique}

    # -- interactive ----------------------------------------------------------------------
    def _interactive(self, missing: list[Request]) -> list[str]:
        """At most ``concurrency`` requests in flight; after a failure no new one is sent (those in
        flight finish and are kept)."""
        errors: list[str] = []
        todo = iter(missing)
        running: dict = {}
        limit = self.client.settings.concurrency
        with ThreadPoolExecutor(max_workers=limit, thread_name_prefix="claude") as pool:
            while True:
                while len(running) < limit and not errors and (request := next(todo, None)) is not None:
                    running[pool.submit(self.client.create, request)] = request
                if not running:
                    return errors
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    request = running.pop(future)
                    try:
                        self._keep([(request, future.result())])
                    except ClaudeError as exc:
                        errors.append(str(exc))
                        continue
                    if sum(self.received.values()) % 100 == 0:
                        self.say(f"claude {request.purpose}: {self.received[request.purpose]} answers received")

    # -- batches --------------------------------------------------------------------------
    def _batches(self, missing: list[Request]) -> list[str]:
        purpose = missing[0].purpose
        pending = {r.key: r for r in missing}
        have = self._known()
        errors: list[str] = []
        for batch_id, keys in self.spool.open_batches(purpose):  # a stopped run's batches: read, not resubmitted
            if all(k in have for k in keys):
                self.spool.batch_closed(batch_id, purpose)
            elif pending.keys() & set(keys):
                self.say(f"claude {purpose}: resuming batch {batch_id} ({len(keys)} requests)")
                errors = self._collect(batch_id, purpose, pending)
        for _ in range(self.client.settings.max_batch_rounds):
            if not pending:
                break
            todo = list(pending.values())
            opened = []
            for start in range(0, len(todo), MAX_BATCH_REQUESTS):
                chunk = todo[start : start + MAX_BATCH_REQUESTS]
                batch_id = self.client.submit_batch(chunk)
                self.spool.batch_opened(batch_id, purpose, [r.key for r in chunk])
                opened.append(batch_id)
            errors = []
            for batch_id in opened:
                errors += self._collect(batch_id, purpose, pending)
        return errors

    def _collect(self, batch_id: str, purpose: str, pending: dict[str, Request]) -> list[str]:
        """Poll the batch until it ends, then keep its succeeded results; the others stay pending."""
        while True:
            state = self.client.batch_state(batch_id)
            if state is None:
                self.spool.batch_closed(batch_id, purpose)
                return [f"batch {batch_id} no longer exists"]
            if state.status == "ended":
                break
            self.say(f"claude {purpose}: batch {batch_id} {state.status} {state.counts}")
            time.sleep(self.client.settings.poll_s)
        errors, group = [], []
        models = {k: r.model for k, r in pending.items()}
        try:
            for custom_id, reply, why in self.client.batch_results(batch_id, models):
                if reply is None:
                    errors.append(f"{pending[custom_id].label if custom_id in pending else custom_id}: {why}")
                    continue
                request = pending.pop(custom_id, None)
                if request is not None:
                    group.append((request, reply))
                if len(group) >= KEEP_EVERY:
                    self._keep(group)
                    group = []
        finally:  # what was read is kept even if the results stream breaks (the batch stays open to read again)
            self._keep(group)
        self.spool.batch_closed(batch_id, purpose)
        if errors:
            self.say(f"claude {purpose}: batch {batch_id}: {len(errors)} not answered ({errors[0]})")
        return errors


def answers_for(claude, folder: str | Path, workflow: str, say: Callable[[str], None] | None = None) -> ClaudeAnswers:
    """The answers of ``workflow`` through ``claude``'s client (a ``claude_client.Claude``), kept in ``folder``."""
    return ClaudeAnswers(claude.client(), ResponseSpool(folder, workflow), say)
