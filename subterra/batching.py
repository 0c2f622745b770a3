"""Concurrent requests to one model share its forward passes.

A ``Batcher`` owns one model's ``Lockstep`` driver and a worker thread. Requests hand it row
programs (``subterra.conversations.continued``) with the keys and values their conversation
left last turn; the worker runs them as the rows of one lockstep run: each step is one batched,
KV-cached forward over all of them, the system prompt encoded once and shared. A request that
arrives while a run is going joins it at the next step (continuous batching: it takes the row of
a request that was answered, or a new row, up to ``max_batch``), so no one waits for the slowest
turn of a batch. Each request is answered the step its turn ends. With ``max_batch=1`` the same
server answers one request at a time: the benchmark's baseline.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field

from subterra.runtime.lockstep import GROWTH, Lockstep, Prefix
from subterra.runtime.row_cache import RowState


class TooLong(ValueError):
    """The conversation no longer fits the model's room."""


@dataclass
class Job:
    program: object  # a lockstep row program
    length: int  # the tokens it may feed in all, its own (after the shared prefix)
    resume: RowState | None = None  # the keys and values of the tokens it was fed in an earlier turn
    future: Future = field(default_factory=Future)  # (the program's return value, the row's RowState or None)
    outcome: tuple | None = None  # ("result", value) or ("error", exception), once the program ended

    def resolve(self, kept: RowState | None = None) -> None:
        if self.future.done():  # a client that went away cancelled it
            return
        if self.outcome is None:
            self.future.set_exception(TooLong("the conversation outgrew its room in the model's context"))
        elif self.outcome[0] == "error":
            self.future.set_exception(self.outcome[1])
        else:
            self.future.set_result((self.outcome[1], kept))


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

    def submit(self, program, length: int, resume: RowState | None = None) -> Future:
        """Queue a row program (``resume``: its row's keys and values so far); its future gets
        (the program's return value, the row's ``RowState`` to resume it from), or its exception."""
        job = Job(program, length, resume)
        if len(self.prefix.ids) + length > self.max_len:
            job.future.set_exception(TooLong(f"the conversation needs {len(self.prefix.ids) + length} tokens, "
                                             f"more than the model's {self.max_len}"))
        else:
            self._queue.put(job)
        return job.future

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
        """One lockstep run: ``jobs`` first, then every job queued while it runs, each in the row
        of one that ended (continuous batching), until no row is left. Its room starts a few turns
        longer than its longest job and grows for a longer one that joins."""
        programs = [_settling(job) for job in jobs]
        longest = max(job.length for job in jobs)
        room = min(self.max_len, len(self.prefix.ids) + longest + GROWTH)
        later: list[Job] = []  # queued jobs too long for this run's room: the next run's

        def admit(slots: int, own_room: int) -> list:
            out = []
            while len(out) < slots:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    later.append(job)
                    break
                if job.length > own_room:
                    later.append(job)
                    continue
                jobs.append(job)
                out.append((_settling(job), job.resume, job.length))
            return out

        try:
            self.driver.run(programs, room, prefix=self.prefix, resume=[job.resume for job in jobs],
                            on_finish=lambda row, state: jobs[row].resolve(state),  # answered as soon as it ends
                            admit=admit, max_rows=self.max_batch, grow_to=self.max_len)
        except Exception as exc:  # a fault of the runtime fails this run's requests, not the server
            for job in jobs:
                if job.outcome is None:
                    job.outcome = ("error", exc)
        for job in jobs:
            job.resolve()  # those not answered yet (an error, or cut off: its room ran out)
        for job in later:
            self._queue.put(job)
        self.runs += 1
        self.rows += len(jobs)

def _settling(job: Job):
    """``job``'s program, its outcome kept on the job (an exception ends this row only)."""
    try:
        job.outcome = ("result", (yield from job.program))
    except Exception as exc:
        job.outcome = ("error", exc)
