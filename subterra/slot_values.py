"""Where synthetic users get their slot values, split so that evaluation uses values training never saw.

Every free-valued slot (string, integer, number, date) has its value space cut by a stable hash:
about one value in four is *reserved* for the test sets and never appears in training, and about
one in eleven of the rest is kept for ``validation`` (the set choices are made on), out of training
too. The hash is of the value and its type, not of the slot: a value reserved for one slot is
reserved for every slot of its type. An integer slot whose range holds at most
``CLOSED_INTEGER_SPAN`` values ("travellers: 1 to 6") is a closed set, as an enum is: people say
every one of them, so every one is trained and every one is tested. Otherwise "3", reserved for ``travellers`` but trained as ``checked_bags``,
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
# inside the slot's range): never a value the workflow rules out ("seats for 444" where a party is
# 1 to 6 would teach the opposite of the workflow, which sends a group over six to a person)
RANDOM_TYPES = frozenset({"string", "integer"})
RESERVED_ONE_IN = 4
VALIDATION_ONE_IN = 11
CLOSED_INTEGER_SPAN = 12  # an integer range of at most this many values is a closed set
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


def is_validation(space: str, value: str) -> bool:
    """True if ``value`` (not reserved for the test sets) is kept for ``validation``."""
    if is_reserved(space, value):
        return False
    digest = hashlib.sha256(f"validation\x00{space}\x00{value}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % VALIDATION_ONE_IN == 0


def value_side(space: str, value: str) -> str:
    """Which side of the split a value of a free type lies on: ``train``, ``validation`` or ``test``."""
    return "test" if is_reserved(space, value) else "validation" if is_validation(space, value) else "train"


def side_of(split: str) -> str:
    return "train" if split == "train" else "validation" if split == "validation" else "test"


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

    def closed(self) -> bool:
        """A closed set: every value is trained and tested (enum, boolean, a short integer range)."""
        if self.type not in FREE_TYPES:
            return True
        if self.type == "integer":
            lo, hi = self._int_range()
            return hi - lo + 1 <= CLOSED_INTEGER_SPAN
        return False

    def split_pool(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(training values, test values) of a finite pool; disjoint whenever the pool has 2+ values
        and is not closed. The validation values (``validation_pool``) are in neither."""
        pool = self._pool() or ()
        if self.closed() or len(pool) < 2:
            return pool, pool
        held = tuple(v for v in pool if is_reserved(self.type, v))
        train = tuple(v for v in pool if not is_reserved(self.type, v))
        if not held:  # keep the split non-empty on both sides (by the value alone, as far as it goes)
            pick = min(pool, key=lambda v: hashlib.sha256(f"{self.type}{v}".encode()).hexdigest())
            held, train = (pick,), tuple(v for v in pool if v != pick)
        elif not train:
            train, held = held[:1], held[1:]
        validation = set(self.validation_pool())
        return tuple(v for v in train if v not in validation) or train, held

    def validation_pool(self) -> tuple[str, ...]:
        """The values of a finite pool kept for validation: the hash's, or (a pool of 4+ values
        whose hash keeps none) one training value, so validation never reads a test value."""
        pool = self._pool() or ()
        if self.closed() or len(pool) < 2:
            return pool
        kept = tuple(v for v in pool if is_validation(self.type, v))
        if kept:
            return kept
        train = [v for v in pool if not is_reserved(self.type, v)]
        if len(train) >= 4:
            return (min(train, key=lambda v: hashlib.sha256(f"validation{self.type}{v}".encode()).hexdigest()),)
        return tuple(train[:1]) or pool

    # -- drawing -----------------------------------------------------------------------
    def draw(self, rng: random.Random, split: str, random_rate: float = 0.0) -> str:
        side = side_of(split)
        pool = self._pool()
        if pool is not None:
            if self.closed():
                return rng.choice(pool)
            train, held = self.split_pool()
            if side == "train" and self.type in RANDOM_TYPES and random_rate > 0 and rng.random() < random_rate:
                return self._random_like(rng, train or pool, held)
            return rng.choice({"train": train, "validation": self.validation_pool(), "test": held}[side])
        for _ in range(1000):
            value = self._draw_open(rng)
            if self.type not in FREE_TYPES or value_side(self.type, value) == side:
                return value
        raise RuntimeError(f"slot {self.name}: could not draw a {split} value")

    def _random_like(self, rng: random.Random, pool: tuple[str, ...], held: tuple[str, ...]) -> str:
        validation = set(self.validation_pool())
        for _ in range(100):
            value = self._random_integer(rng) if self.type == "integer" else reshape(rng.choice(pool), rng)
            if value not in held and value not in validation and value_side(self.type, value) == "train":
                return value
        return rng.choice(pool)

    def _random_integer(self, rng: random.Random) -> str:
        """An integer in the slot's range, its number of digits drawn first (each length alike), so
        a wide range is not all three-digit numbers."""
        lo, hi = self._int_range()
        digits = rng.randint(len(str(max(lo, 0))), len(str(hi)))
        return str(rng.randint(max(lo, 10 ** (digits - 1) if digits > 1 else lo), min(hi, 10 ** digits - 1)))

    def in_range(self, value: str) -> bool:
        """Is ``value`` one the slot's declared type and range allow? (enum: one of its values)."""
        if self.type == "integer":
            try:
                number = int(value)
            except ValueError:
                return False
            lo, hi = self._int_range()
            return lo <= number <= hi
        if self.type == "enum":
            return value in self.values
        return True

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
