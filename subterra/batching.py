"""Concurrent requests to one model share its forward passes.

A ``Batcher`` owns one model's ``Lockstep`` driver and a worker thread. Requests hand it row
programs (``subterra.conversations.continued``); the worker takes every program queued when it
is free (up to ``max_batch``) and runs them as the rows of one lockstep run: each step is one
batched, KV-cached forward over all of them, the system prompt encoded once and shared. Programs
that arrive while a run is going wait for the next one (a run ends when its last row does; the
driver drops finished rows as it goes, so a long conversation does not keep paying for short ones).
With ``max_batch=1`` the same server answers one request at a time: the benchmark's baseline.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field

from subterra.runtime import Lockstep, Prefix


class TooLong(ValueError):
    """The conversation no longer fits the model's room."""


@dataclass
class Job:
    program: object  # a lockstep row program
    length: int  # the tokens it may feed in all, its own (after the shared prefix)
    future: Future = field(default_factory=Future)


class Batcher:
    def __init__(self, driver: Lockstep, prefix: Prefix, max_batch: int = 32, max_len: int = 8192, name: str = ""):
        self.driver, self.prefix = driver, prefix
        self.max_batch = max(1, max_batch)
        self.max_len = max_len  # the longest context a row may have, the prefix's included
        self.runs = 0  # lockstep runs so far
        self.rows = 0  # rows they ran
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    def submit(self, program, length: int) -> Future:
        """Queue a row program; its future gets the program's return value, or its exception."""
        job = Job(program, length)
        if len(self.prefix.ids) + length > self.max_len:
            job.future.set_exception(TooLong(f"the conversation needs {len(self.prefix.ids) + length} tokens, "
                                             f"more than the model's {self.max_len}"))
        else:
            self._queue.put(job)
        return job.future

    def pending(self) -> int:
        return self._queue.qsize()

    def close(self) -> None:
        self._queue.put(None)

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            jobs = [job]
            while len(jobs) < self.max_batch:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    self._queue.put(None)  # stop after this run
                    break
                jobs.append(job)
            self._run(jobs)

    def _run(self, jobs: list[Job]) -> None:
        programs = [_settling(job) for job in jobs]
        room = min(self.max_len, len(self.prefix.ids) + max(job.length for job in jobs))
        try:
            self.driver.run(programs, room, prefix=self.prefix)
        except Exception as exc:  # a fault of the runtime fails this run's requests, not the server
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc)
        for job in jobs:
            if not job.future.done():  # cut off: its room ran out
                job.future.set_exception(TooLong("the conversation outgrew its room in the model's context"))
        self.runs += 1
        self.rows += len(jobs)


def _settling(job: Job):
    """``job``'s program, its outcome set on its future (an exception ends this row only)."""
    try:
        result = yield from job.program
    except Exception as exc:
        if not job.future.done():  # a client that went away cancelled it
            job.future.set_exception(exc)
        return
    if not job.future.done():
        job.future.set_result(result)
