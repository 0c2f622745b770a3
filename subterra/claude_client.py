"""Claude through the ``anthropic`` SDK: which parts of Subterra use it, the client they share, and
what its answers cost.

* ``ClaudeSettings`` — the parts that use Claude (``teacher``, ``user``, ``judge``, ``frontier``),
  the model of each, and how to call (batch or interactive teacher, concurrency, retries, timeout).
* ``Claude`` — the settings plus whether ``ANTHROPIC_API_KEY`` is set: a part uses Claude only
  when it is named *and* the key is there; otherwise it stays offline and ``status()`` says why.
* ``ClaudeClient`` — the SDK client. The SDK's own retry (``max_retries``: exponential backoff
  with jitter, honouring ``retry-after``) covers 408/409/429/5xx (529 included), connection
  errors and timeouts; a semaphore bounds the requests in flight; batches are submitted, polled
  and read back as JSONL (``custom_id`` → ``succeeded`` / ``errored`` / ``expired`` / ``canceled``).
* ``Request`` / ``Reply`` / ``Usage`` — one call, its text and its measured tokens in dollars.

The key is read from the environment only, handed to the SDK and to nothing else: no setting,
log line, error or stored row holds it (``ClaudeError`` messages are scrubbed of it as well).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator, Sequence

ENV_KEY = "ANTHROPIC_API_KEY"
ENV_PARTS = "SUBTERRA_CLAUDE"
PARTS = ("teacher", "user", "judge", "frontier")
OFFLINE = {
    "teacher": "template teacher",
    "user": "scripted user",
    "judge": "no judge, objective scores only",
    "frontier": "no frontier route, its cost estimated from characters",
}
BATCH_DISCOUNT = 0.5  # the Message Batches API bills input and output at half price
MAX_BATCH_REQUESTS = 10_000  # per batch (the API takes up to 100,000 or 256 MB)

log = logging.getLogger("subterra.claude")


@dataclass(frozen=True)
class ModelPrice:
    """US dollars per million tokens."""

    input_per_m: float
    output_per_m: float
    cache_write_per_m: float  # 5-minute cache writes
    cache_read_per_m: float


# Published list prices (platform.claude.com model pages, late 2026). A model id is priced by the
# longest entry it starts with, so dated ids ("claude-sonnet-5-5-2026...") find their family.
PRICES: dict[str, ModelPrice] = {
    "claude-opus-5-5": ModelPrice(4.00, 20.00, 5.00, 0.20),
    "claude-sonnet-5-5": ModelPrice(2.00, 10.00, 2.50, 0.20),
    "claude-haiku-5-5": ModelPrice(0.10, 0.50, 0.125, 0.01),  # prompts up to 100k tokens
    "claude-opus-5": ModelPrice(5.00, 25.00, 6.25, 0.50),
    "claude-sonnet-5": ModelPrice(2.00, 10.00, 2.50, 0.20),
    "claude-haiku-4-5": ModelPrice(1.00, 5.00, 1.25, 0.10),
}


def price_of(model: str) -> ModelPrice:
    matches = [name for name in PRICES if model.startswith(name)]
    if not matches:
        raise KeyError(f"no price for model {model!r}; priced: {', '.join(PRICES)} (subterra/claude_client.py)")
    return PRICES[max(matches, key=len)]


@dataclass(frozen=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_write_tokens: int = 0
    cache_read_tokens: int = 0

    def __add__(self, other: "Usage") -> "Usage":
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
            self.cache_read_tokens + other.cache_read_tokens,
        )

    @property
    def tokens_in(self) -> int:
        """Every input token the model read: uncached, written to the cache and read from it."""
        return self.input_tokens + self.cache_write_tokens + self.cache_read_tokens

    def usd(self, model: str, batch: bool = False) -> float:
        p = price_of(model)
        total = (
            self.input_tokens * p.input_per_m
            + self.output_tokens * p.output_per_m
            + self.cache_write_tokens * p.cache_write_per_m
            + self.cache_read_tokens * p.cache_read_per_m
        ) / 1e6
        return total * (BATCH_DISCOUNT if batch else 1.0)


@dataclass(frozen=True)
class Request:
    """One Messages API call. ``system`` is a list of (text, cached) blocks: a cached block carries
    ``cache_control: ephemeral``, so it and everything before it is read from the prompt cache on
    the next call with the same prefix."""

    purpose: str  # teacher | user | judge | frontier
    model: str
    system: tuple[tuple[str, bool], ...]
    messages: tuple[tuple[str, str], ...]  # (role, text)
    max_tokens: int
    label: str = ""  # what the call is for (a conversation id), for logs and the spool

    def params(self) -> dict:
        system = []
        for text, cached in self.system:
            block = {"type": "text", "text": text}
            if cached:
                block["cache_control"] = {"type": "ephemeral"}
            system.append(block)
        return {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "system": system,
            "messages": [{"role": role, "content": text} for role, text in self.messages],
        }

    @property
    def key(self) -> str:
        """The request's identity (and its batch ``custom_id``): a hash of everything sent."""
        return hashlib.sha256(json.dumps(self.params(), sort_keys=True).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Reply:
    text: str
    usage: Usage
    model: str
    stop_reason: str | None = None
    batch: bool = False
    seconds: float = 0.0  # wall time of the call, retries included (0 for batch results)

    @property
    def usd(self) -> float:
        return self.usage.usd(self.model, self.batch)


class ClaudeError(RuntimeError):
    """A call to Claude failed after the SDK's retries (the message never holds the key)."""


@dataclass(frozen=True)
class ClaudeSettings:
    parts: frozenset[str] = frozenset()
    teacher_model: str = "claude-sonnet-5-5"
    user_model: str = "claude-haiku-5-5"
    judge_model: str = "claude-opus-5-5"
    second_judge_model: str = ""  # empty: one judge
    frontier_model: str = "claude-sonnet-5-5"
    teacher_mode: str = "batch"  # batch (half price, hours) | interactive (bounded concurrency)
    concurrency: int = 8  # requests in flight at once
    max_retries: int = 4  # the SDK's retries per request (429, 5xx, 529, timeouts)
    timeout_s: float = 120.0  # per HTTP request
    poll_s: float = 30.0  # between polls of a running batch
    max_batch_rounds: int = 3  # resubmissions of a batch's errored or expired requests
    base_url: str = ""  # empty: the SDK's default (or ANTHROPIC_BASE_URL)

    def __post_init__(self):
        unknown = set(self.parts) - set(PARTS)
        if unknown:
            raise ValueError(f"unknown Claude part(s) {sorted(unknown)}; parts are {', '.join(PARTS)} or 'all'")
        if self.teacher_mode not in ("batch", "interactive"):
            raise ValueError(f"teacher_mode must be 'batch' or 'interactive', got {self.teacher_mode!r}")
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")

    @staticmethod
    def parse_parts(text: str) -> frozenset[str]:
        """``"teacher,judge"`` or ``"all"`` (or empty) as a set of part names."""
        names = {p.strip().lower() for p in text.replace(" ", ",").split(",") if p.strip()}
        return frozenset(PARTS) if "all" in names else frozenset(names)

    def model_for(self, part: str) -> str:
        return {"teacher": self.teacher_model, "user": self.user_model, "judge": self.judge_model,
                "frontier": self.frontier_model}[part]


class Claude:
    """The settings, and whether the key is set. Nothing here calls out until ``client()``."""

    def __init__(self, settings: ClaudeSettings, has_key: bool):
        self.settings = settings
        self.has_key = has_key
        self._client: ClaudeClient | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, settings: ClaudeSettings) -> "Claude":
        return cls(settings, bool(os.environ.get(ENV_KEY, "").strip()))

    def uses(self, part: str) -> bool:
        return self.has_key and part in self.settings.parts

    @property
    def any(self) -> bool:
        return any(self.uses(p) for p in PARTS)

    def status(self) -> dict[str, str]:
        """For each part, the model it uses or why it is offline."""
        out = {}
        for part in PARTS:
            if self.uses(part):
                model = self.settings.model_for(part)
                if part == "teacher":
                    model += f" ({self.settings.teacher_mode})"
                if part == "judge" and self.settings.second_judge_model:
                    model += f", second judge {self.settings.second_judge_model}"
                out[part] = model
            elif part in self.settings.parts:
                out[part] = f"offline: {OFFLINE[part]} ({ENV_KEY} is not set)"
            else:
                out[part] = f"offline: {OFFLINE[part]}"
        return out

    def client(self) -> "ClaudeClient":
        with self._lock:
            if self._client is None:
                if not self.any:
                    raise ClaudeError(f"no part uses Claude (parts {sorted(self.settings.parts)}, {ENV_KEY} "
                                      f"{'set' if self.has_key else 'not set'})")
                self._client = ClaudeClient(self.settings)
            return self._client


def _text_of(message) -> str:
    """The text blocks of a message (thinking blocks, if any, are not the answer)."""
    return "".join(block.text for block in message.content if getattr(block, "type", "") == "text")


def _usage_of(usage) -> Usage:
    return Usage(
        int(usage.input_tokens or 0),
        int(usage.output_tokens or 0),
        int(getattr(usage, "cache_creation_input_tokens", 0) or 0),
        int(getattr(usage, "cache_read_input_tokens", 0) or 0),
    )


@dataclass
class BatchState:
    status: str  # in_progress | canceling | ended
    counts: dict[str, int] = field(default_factory=dict)


class ClaudeClient:
    """The SDK client with Subterra's settings; counts what it sends per purpose."""

    def __init__(self, settings: ClaudeSettings):
        import anthropic

        key = os.environ.get(ENV_KEY, "").strip()
        if not key:
            raise ClaudeError(f"{ENV_KEY} is not set")
        self._secrets = (key,)
        self.settings = settings
        self._sdk = anthropic.Anthropic(
            api_key=key,
            base_url=settings.base_url or None,
            max_retries=settings.max_retries,
            timeout=settings.timeout_s,
        )
        self._slots = threading.BoundedSemaphore(settings.concurrency)
        self._count_lock = threading.Lock()
        self.calls: Counter[str] = Counter()  # messages.create calls per purpose (SDK retries not counted)
        self.batched: Counter[str] = Counter()  # requests submitted in batches per purpose

    # -- errors ---------------------------------------------------------------------------
    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        return text

    def _error(self, what: str, exc: BaseException) -> ClaudeError:
        status = getattr(exc, "status_code", None)
        detail = f"{type(exc).__name__}{f' {status}' if status else ''}: {exc}"
        return ClaudeError(self.scrub(f"{what} failed after {self.settings.max_retries} retries: {detail}"))

    # -- the Messages API -----------------------------------------------------------------
    def create(self, request: Request) -> Reply:
        """One call, at most ``concurrency`` at a time across threads."""
        import anthropic

        with self._count_lock:
            self.calls[request.purpose] += 1
        with self._slots:
            started = time.monotonic()
            try:
                message = self._sdk.messages.create(**request.params())
            except anthropic.AnthropicError as exc:
                raise self._error(f"{request.purpose} request {request.label or request.key}", exc) from None
            seconds = time.monotonic() - started
        return Reply(_text_of(message), _usage_of(message.usage), request.model, message.stop_reason, False, seconds)

    # -- the Message Batches API ----------------------------------------------------------
    def submit_batch(self, requests: Sequence[Request]) -> str:
        import anthropic

        purpose = requests[0].purpose if requests else ""
        try:
            batch = self._sdk.messages.batches.create(
                requests=[{"custom_id": r.key, "params": r.params()} for r in requests]
            )
        except anthropic.AnthropicError as exc:
            raise self._error(f"{purpose} batch of {len(requests)}", exc) from None
        with self._count_lock:
            for r in requests:
                self.batched[r.purpose] += 1
        log.info("submitted %s batch %s of %d requests", purpose, batch.id, len(requests))
        return batch.id

    def batch_state(self, batch_id: str) -> BatchState | None:
        """The batch's processing status; None if the API no longer knows it."""
        import anthropic

        try:
            batch = self._sdk.messages.batches.retrieve(batch_id)
        except anthropic.NotFoundError:
            return None
        except anthropic.AnthropicError as exc:
            raise self._error(f"polling batch {batch_id}", exc) from None
        return BatchState(batch.processing_status, dict(batch.request_counts.model_dump()))

    def batch_results(self, batch_id: str, models: dict[str, str]) -> Iterator[tuple[str, Reply | None, str]]:
        """``(custom_id, reply, "")`` per succeeded request, ``(custom_id, None, why)`` per other;
        ``models`` maps custom ids to the model asked (for the price)."""
        import anthropic

        try:
            for line in self._sdk.messages.batches.results(batch_id):
                result = line.result
                if result.type == "succeeded":
                    message = result.message
                    model = models.get(line.custom_id, message.model)
                    yield line.custom_id, Reply(_text_of(message), _usage_of(message.usage), model, message.stop_reason, True), ""
                else:
                    why = result.type
                    if result.type == "errored":
                        why += f": {getattr(result.error.error, 'type', '')} {getattr(result.error.error, 'message', '')}".rstrip()
                    yield line.custom_id, None, self.scrub(why)
        except anthropic.AnthropicError as exc:
            raise self._error(f"reading the results of batch {batch_id}", exc) from None


def json_in(text: str):
    """The JSON value of a model's answer: the whole text, or the text inside a Markdown code
    fence around it. Raises ``ValueError`` naming what is wrong."""
    body = text.strip()
    if body.startswith("```"):
        body = body.split("\n", 1)[1] if "\n" in body else ""
        body = body.rsplit("```", 1)[0] if "```" in body else body
    try:
        return json.loads(body)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
