"""Progress lines for long work: how far, how fast, and when it ends."""

from __future__ import annotations

import time
from typing import Callable


class Progress:
    """``progress(done, total)`` says "LABEL: done/total UNIT, R per minute, about M min left"."""

    def __init__(self, label: str, say: Callable[[str], None], unit: str = "conversations"):
        self.label, self.say, self.unit = label, say, unit
        self.started = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        minutes = (time.monotonic() - self.started) / 60
        line = f"{self.label}: {done}/{total} {self.unit}"
        if done and minutes > 0:
            rate = done / minutes
            line += f", {rate:.1f} per minute"
            if done < total:
                line += f", about {(total - done) / rate:.0f} min left"
        self.say(line)
