"""Where synthetic users get their slot values, split so that evaluation uses values training never saw.

Every free-valued slot (string, integer, number, date) has its value space cut in two by a stable
hash: about one value in four is *reserved* for the holdouts and never appears in training. The
hash is of the value and its type, not of the slot: a value reserved for one slot is reserved for
every slot of its type. Otherwise "3", reserved for ``travellers`` but trained as ``checked_bags``,
teaches the student that a 3 is a bag count, and a holdout party of three is booked as three bags
(that was 88 of 128 holdout failures of one travel_booking compile).
Training can also draw *random* values shaped like the pool's (vowels for vowels, consonants for
consonants; integers of 1 to 3 digits), so that a student must learn to copy a value
from the user's message instead of memorising a small pool. Closed sets (enum, boolean) are not split.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
import string
from dataclasses import dataclass

FREE_TYPES = frozenset({"string", "integer", "number", "date"})
# pools that training widens with random values of the same shape (a name's letters; an integer
# of 1 to 3 digits), which may lie outside a slot's declared range: "We are 18" teaches that a party
# size is whatever number the user says, so a holdout's party of 2, a number training never used as
# any slot's value, is not read as an unclear answer
RANDOM_TYPES = frozenset({"string", "integer"})
RESERVED_ONE_IN = 4
DEFAULT_DATE_RANGE = ("2027-01-01", "2027-12-31")
DEFAULT_INTEGER_RANGE = (1, 9)
DEFAULT_NUMBER_RANGE = (10.0, 5000.0)
VOWELS = "aeiou"
CONSONANTS = "".join(c for c in string.ascii_lowercase if c not in VOWELS)
GENERIC_STRING_POOL = (
    "Ada Moreno", "Kenji Sato", "Lena Fischer", "Omar Haddad", "Priya Nair", "Tomas Novak",
    "Zara Quinn", "Mateo Silva", "Ingrid Berg", "Kofi Mensah", "Yuki Tanaka", "Elena Petrova",
)


def is_reserved(space: str, value: str) -> bool:
    """True if ``value`` of the value space ``space`` (a slot type: every slot of that type shares
    it) belongs to the holdouts (stable across runs and machines)."""
    digest = hashlib.sha256(f"{space}\x00{value}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % RESERVED_ONE_IN == 0


def format_date(day: dt.date) -> str:
    return f"{day.day} {day.strftime('%B')} {day.year}"


def format_number(value: float) -> str:
    return f"{value:.2f}"


def reshape(value: str, rng: random.Random) -> str:
    """A random value with the shape of ``value``: letters keep case and vowel-ness, digits stay digits."""
    out = []
    for ch in value:
        low = ch.lower()
        if low in VOWELS:
            new = rng.choice(VOWELS)
        elif low in CONSONANTS:
            new = rng.choice(CONSONANTS)
        elif ch.isdigit():
            new = rng.choice(string.digits)
        else:
            out.append(ch)
            continue
        out.append(new.upper() if ch.isupper() else new)
    return "".join(out)


@dataclass
class SlotValueSource:
    """Draws values of one slot for training (``train``) or for the holdouts (``holdout``)."""

    name: str
    type: str
    values: tuple[str, ...] = ()
    min: object = None
    max: object = None

    @classmethod
    def for_slot(cls, slot) -> "SlotValueSource":
        return cls(slot.name, slot.type, tuple(slot.values or ()), slot.min, slot.max)

    # -- pools -------------------------------------------------------------------------
    def _pool(self) -> tuple[str, ...] | None:
        """The finite pool of values, or None when the space is drawn from on the fly."""
        if self.type == "boolean":
            return ("yes", "no")
        if self.type == "enum" or (self.type == "string"):
            return self.values or (GENERIC_STRING_POOL if self.type == "string" else ())
        if self.type == "integer":
            lo, hi = self._int_range()
            if hi - lo <= 10_000:
                return tuple(str(v) for v in range(lo, hi + 1))
        return None

    def _int_range(self) -> tuple[int, int]:
        lo = int(self.min) if self.min is not None else DEFAULT_INTEGER_RANGE[0]
        hi = int(self.max) if self.max is not None else max(lo, DEFAULT_INTEGER_RANGE[1])
        return lo, hi

    def split_pool(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(training values, holdout values) of a finite pool; disjoint whenever the pool has 2+ values."""
        pool = self._pool() or ()
        if self.type not in FREE_TYPES or len(pool) < 2:
            return pool, pool
        held = tuple(v for v in pool if is_reserved(self.type, v))
        train = tuple(v for v in pool if not is_reserved(self.type, v))
        if not held:  # keep the split non-empty on both sides (by the value alone, as far as it goes)
            pick = min(pool, key=lambda v: hashlib.sha256(f"{self.type}{v}".encode()).hexdigest())
            held, train = (pick,), tuple(v for v in pool if v != pick)
        elif not train:
            train, held = held[:1], held[1:]
        return train, held

    # -- drawing -----------------------------------------------------------------------
    def draw(self, rng: random.Random, split: str, random_rate: float = 0.0) -> str:
        holdout = split != "train"
        pool = self._pool()
        if pool is not None:
            train, held = self.split_pool()
            if not holdout and self.type in RANDOM_TYPES and random_rate > 0 and rng.random() < random_rate:
                return self._random_like(rng, train or pool, held)
            return rng.choice(held if holdout else train)
        for _ in range(1000):
            value = self._draw_open(rng)
            if is_reserved(self.type, value) == holdout or self.type not in FREE_TYPES:
                return value
        raise RuntimeError(f"slot {self.name}: could not draw a {split} value")

    def _random_like(self, rng: random.Random, pool: tuple[str, ...], held: tuple[str, ...]) -> str:
        for _ in range(100):
            value = self._random_integer(rng) if self.type == "integer" else reshape(rng.choice(pool), rng)
            if value not in held and not is_reserved(self.type, value):
                return value
        return rng.choice(pool)

    @staticmethod
    def _random_integer(rng: random.Random) -> str:
        """1 to 3 digits, each length alike: every digit appears in every integer slot in training,
        never as a whole reserved value ("2" reserved, "12" and "2" of "250" not), so a holdout's
        one-digit party is read as digits the slot has held. A one-digit-only pool left each
        reserved digit unseen in its slot, and a from-scratch student read it differently from
        seed to seed (holdout strict 0.400 / 0.550 / 0.580 on seeds 2 / 1 / 0; 0.660 / 0.660 /
        0.690 with this)."""
        digits = rng.randint(1, 3)
        return str(rng.randint(1, 9)) + "".join(str(rng.randint(0, 9)) for _ in range(digits - 1))

    def _draw_open(self, rng: random.Random) -> str:
        if self.type == "integer":
            return str(rng.randint(*self._int_range()))
        if self.type == "number":
            lo = float(self.min) if self.min is not None else DEFAULT_NUMBER_RANGE[0]
            hi = float(self.max) if self.max is not None else max(lo, DEFAULT_NUMBER_RANGE[1])
            return format_number(rng.uniform(lo, hi))
        if self.type == "date":
            lo = _as_date(self.min or DEFAULT_DATE_RANGE[0])
            hi = _as_date(self.max or DEFAULT_DATE_RANGE[1])
            return format_date(lo + dt.timedelta(days=rng.randint(0, max(0, (hi - lo).days))))
        raise ValueError(f"slot {self.name}: no open value space for type {self.type}")

    def different(self, rng: random.Random, split: str, current: str, random_rate: float = 0.0) -> str:
        """Another value than ``current`` (for a user's correction), same split rules."""
        for _ in range(50):
            value = self.draw(rng, split, random_rate)
            if value != current:
                return value
        return current


def _as_date(value) -> dt.date:
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value))
