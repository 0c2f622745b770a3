"""The HTTP server of compiled workflows: OpenAI's chat-completions wire format, and a chat page.

``subterra serve`` runs ``create_app`` on uvicorn. Each compiled workflow is a model: ``GET
/v1/models`` lists them, ``POST /v1/chat/completions`` with ``model`` = the workflow id answers
the conversation's last user message with the say the form's runtime filled in. What the form
holds travels in the response's ``subterra`` field (``subterra`` in the last chunk of a stream):

- ``node``: the step the conversation is at; ``slots``: the values this turn captured;
  ``held``: every value captured so far; ``say_template``: the say before its slots were filled;
- ``ended`` and ``outcome`` (``success``, ``abandoned``, ``escalated``, ...): a client hands the
  user over to a person at an ``escalated`` end, reads the captured slots at a ``success``;
- ``model_version`` (which weights answered) and ``replayed`` (earlier turns the server had to
  run again to recover the conversation: ``subterra.conversations``).

The server keeps no conversation the client has not sent: it replays the history when its
cache does not hold it (``subterra.conversations`` says why). Concurrent requests to a workflow
share forward passes (``subterra.batching``); a recompile is picked up while serving
(``subterra.deployment``). Bad input gets a 4xx in OpenAI's error shape and takes nothing down.
The access log has each request's method, path and status only; the text of messages is
logged only with ``log_text``. ``api_key`` (``SUBTERRA_API_KEY``) makes ``/v1`` ask for
``Authorization: Bearer KEY``, compared in constant time.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse

from subterra.batching import TooLong
from subterra.conversations import (
    Conversation, ConversationCache, ConversationEnded, HistoryMismatch, Turn, continued, history_key,
)
from subterra.deployment import Deployment, UnknownWorkflow
from subterra.phrasing import fill, placeholders
from subterra.runtime.encoding import ReadingRules

log = logging.getLogger("subterra.server")
PAGE = Path(__file__).parent / "web" / "chat.html"
FORM_TOKENS = 160  # a form's tokens besides its say, at most (node id, slots, structure)


@dataclass(frozen=True)
class ServerConfig:
    api_key: str | None = None
    max_batch: int = 32  # requests to one workflow that share a forward pass (1: one at a time)
    max_concurrent: int = 256  # requests in progress at once; more get 429
    max_message_chars: int = 2000
    max_turns: int = 60  # user messages in one conversation
    max_body_bytes: int = 1_000_000
    max_say_tokens: int = 96
    refresh_seconds: float = 5.0  # how often a workflow's serving model is looked up again
    keep_seconds: float = 900.0  # how long a replaced model stays loaded for the conversations it began
    cache_size: int = 10_000  # conversations whose state is kept
    log_text: bool = False  # log the users' messages and the says


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.code, self.headers = status, message, kind, code, headers


def streamable(template: str, held: dict[str, str]) -> str | None:
    """What of a say being written can be shown already: the template so far without a
    placeholder still open, filled from ``held``; None once it names a slot the conversation does
    not hold (the runtime will show another line: ``forms.user_say``)."""
    cut = template.rfind("{")
    if cut >= 0 and "}" not in template[cut:]:
        template = template[:cut]
    if any(p not in held for p in placeholders(template)):
        return None
    return fill(template, held)


def parse_request(body: bytes, config: ServerConfig) -> dict:
    """The request's workflow, earlier turns, new message and stream flag; ``ApiError`` (400) names the fault."""
    if len(body) > config.max_body_bytes:
        raise ApiError(413, f"the request body has {len(body)} bytes, more than {config.max_body_bytes}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"the request body is not UTF-8 (byte {exc.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"the request body is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "'model' must be a workflow id (GET /v1/models lists them)", code="model_required")
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be true or false")
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list")
    turns: list[tuple[str, str]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ApiError(400, f"messages[{i}] must be an object with 'role' and 'content'")
        role, content = message.get("role"), message.get("content")
        if isinstance(content, list):  # content parts: their text
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
                raise ApiError(400, f"messages[{i}].content: only text parts are understood")
            content = "".join(p["text"] for p in content)
        if role in ("system", "developer"):
            continue  # the procedure lives in the weights: the model's own one-line prompt is used
        if role not in ("user", "assistant"):
            raise ApiError(400, f"messages[{i}].role must be 'user', 'assistant' or 'system', not {role!r}")
        if not isinstance(content, str):
            raise ApiError(400, f"messages[{i}].content must be a string")
        if role == "user":
            if not content.strip():
                raise ApiError(400, f"messages[{i}] is empty", code="empty_message")
            if len(content) > config.max_message_chars:
                raise ApiError(400, f"messages[{i}] has {len(content)} characters, more than {config.max_message_chars}",
                               code="message_too_long")
        turns.append((role, content))
    expected = "user"
    for i, (role, _) in enumerate(turns):
        if role != expected:
            raise ApiError(400, f"the conversation must alternate user and assistant messages, starting with the user; "
                                f"message {i + 1} (of those) is {role!r}", code="history_not_alternating")
        expected = "assistant" if role == "user" else "user"
    if turns[-1][0] != "user":
        raise ApiError(400, "the last message must be the user's", code="history_not_alternating")
    if (len(turns) + 1) // 2 > config.max_turns:
        raise ApiError(400, f"the conversation has more than {config.max_turns} user messages", code="too_many_turns")
    history = turns[:-1]
    past = [(history[j][1], history[j + 1][1]) for j in range(0, len(history), 2)]
    return {"workflow": model, "history": history, "past": past, "message": turns[-1][1], "stream": stream}


@dataclass
class Pending:
    """A submitted turn."""

    served: object  # the ServedModel answering it
    start: Conversation  # the state it starts from (before any replayed turns)
    replayed: int  # earlier turns run again to recover the conversation
    replaced: bool  # the conversation began on a model a recompile replaced
    future: object  # its Turn


class Service:
    """The server's state: the deployment, the conversation cache, the requests in progress."""

    def __init__(self, deployment: Deployment, config: ServerConfig, rules: ReadingRules = ReadingRules()):
        self.deployment, self.config, self.rules = deployment, config, rules
        self.cache = ConversationCache(config.cache_size)
        deployment.in_use = self.cache.versions
        self.in_flight = 0

    def start_turn(self, request: dict, on_say=None) -> "Pending":
        """Submit the request's turn to the model that answers it."""
        workflow, history, past, message = request["workflow"], request["history"], request["past"], request["message"]
        kv = None
        try:
            entry = self.cache.get(history_key(workflow, history)) if history else None
            served = self.deployment.version(workflow, entry[0]) if entry is not None else None
            if served is not None:
                start, replayed, kv = entry[1], [], entry[2]
            else:
                served, start, replayed = self.deployment.current(workflow), Conversation(), past
        except UnknownWorkflow as exc:
            raise ApiError(404, f"{exc}; GET /v1/models lists the compiled workflows", code="model_not_found") from None
        codec = served.codec
        per_turn = self.config.max_say_tokens + FORM_TOKENS
        length = (len(start.fed) + sum(len(codec.user(u)) + per_turn for u, _ in replayed)
                  + len(codec.user(message)) + per_turn)
        program = continued(codec, start, replayed, message, self.config.max_say_tokens, self.rules, on_say=on_say,
                            kept=kv.length if kv is not None else 0)
        replaced = entry is not None and served.version != entry[0]
        return Pending(served, start, len(replayed), replaced, served.batcher.submit(program, length, kv))

    def finished(self, request: dict, served, turn: Turn, kv=None) -> None:
        after = request["history"] + [("user", request["message"]), ("assistant", turn.shown)]
        self.cache.put(history_key(request["workflow"], after), served.version, turn.conversation,
                       None if turn.conversation.ended else kv)
        if self.config.log_text:
            log.info("%s %s: user %r -> [%s] %r", request["workflow"], served.version, request["message"], turn.form.node, turn.shown)
        else:
            log.info("%s %s: turn %d at %s", request["workflow"], served.version, len(turn.conversation.shown), turn.form.node)


def extension(turn: Turn, served, replayed: int) -> dict:
    state = turn.conversation
    return {"node": turn.form.node, "slots": dict(turn.form.slots), "held": dict(state.held), "say_template": turn.form.say,
            "ended": state.ended, "outcome": state.outcome, "model_version": served.version, "replayed": replayed}


def create_app(deployment: Deployment, config: ServerConfig = ServerConfig(), rules: ReadingRules = ReadingRules()):
    """The FastAPI app over ``deployment``."""

    service = Service(deployment, config, rules)
    app = FastAPI(title="Subterra", description="Compiled workflows, served in OpenAI's chat-completions format.")
    app.state.service = service

    @app.exception_handler(ApiError)
    async def api_error(_request, exc: ApiError):
        return JSONResponse({"error": {"message": exc.message, "type": exc.kind, "code": exc.code, "param": None}},
                            status_code=exc.status, headers=exc.headers)

    @app.middleware("http")
    async def key_check(request: Request, call_next):
        if config.api_key and request.url.path.startswith("/v1/"):
            given = request.headers.get("authorization", "")
            token = given[7:] if given.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode(), config.api_key.encode()):
                return JSONResponse({"error": {"message": "a valid API key is needed: Authorization: Bearer KEY",
                                               "type": "invalid_request_error", "code": "invalid_api_key", "param": None}},
                                    status_code=401)
        return await call_next(request)

    @app.get("/")
    async def page():
        return FileResponse(PAGE, media_type="text/html")

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": [{"workflow": m.workflow.id, "version": m.version, "retired": m.retired_at is not None}
                                           for m in deployment.loaded()]}

    @app.get("/v1/models")
    async def models():
        data = []
        for workflow in await asyncio.to_thread(deployment.workflows):
            try:
                served = await asyncio.to_thread(deployment.current, workflow)
            except Exception as exc:  # a model that does not load is listed as such, the others still are
                log.warning("%s: its model does not load: %s", workflow, exc)
                continue
            data.append({"id": workflow, "object": "model", "created": int(served.loaded_at), "owned_by": "subterra",
                         "subterra": {"title": served.workflow.title or workflow, "model_dir": _shown_path(served.model_dir, deployment.data_dir),
                                      "version": served.version, "why": served.why}})
        return {"object": "list", "data": data}

    @app.get("/v1/workflows/{workflow}/flowchart")
    async def flowchart_of(workflow: str):
        from subterra.flowchart import flowchart

        try:
            served = await asyncio.to_thread(deployment.current, workflow)
        except UnknownWorkflow as exc:
            raise ApiError(404, str(exc), code="model_not_found") from None
        return flowchart(served.workflow)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        if service.in_flight >= config.max_concurrent:
            raise ApiError(429, f"{service.in_flight} requests are in progress, the most this server takes; try again shortly",
                           kind="rate_limit_error", code="too_many_requests", headers={"Retry-After": "1"})
        service.in_flight += 1
        streaming = False  # a stream is in progress until its last event: it releases its place itself
        try:
            parsed = parse_request(await request.body(), config)
            if parsed["stream"]:
                response = await _streamed(parsed)
                streaming = True
                return response
            pending = await asyncio.to_thread(service.start_turn, parsed)
            turn, kv = await _outcome(pending)
            service.finished(parsed, pending.served, turn, kv)
            return _completion(parsed, pending.served, turn, pending.replayed)
        finally:
            if not streaming:
                service.in_flight -= 1

    async def _outcome(pending: "Pending") -> tuple[Turn, object]:
        try:
            return await asyncio.wrap_future(pending.future)
        except HistoryMismatch as exc:
            why = ("the model this conversation began on was replaced by a recompile, and the new one would not "
                   "have said the same: " if pending.replaced else "")
            raise ApiError(409, why + str(exc), code="history_mismatch") from None
        except ConversationEnded as exc:
            raise ApiError(409, str(exc), code="conversation_ended") from None
        except TooLong as exc:
            raise ApiError(400, str(exc), code="context_length_exceeded") from None

    def _completion(parsed: dict, served, turn: Turn, replayed: int) -> dict:
        prompt = len(served.batcher.prefix.ids) + turn.tokens_in
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": parsed["workflow"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": turn.shown}, "finish_reason": "stop",
                             "logprobs": None}],
                "usage": {"prompt_tokens": prompt, "completion_tokens": turn.tokens_out,
                          "total_tokens": prompt + turn.tokens_out},
                "subterra": extension(turn, served, replayed)}

    async def _streamed(parsed: dict):
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()  # (say so far, slots) as it is written, then None at the end

        def on_say(text: str, slots: dict) -> None:  # called on the model's worker thread
            loop.call_soon_threadsafe(events.put_nowait, (text, slots))

        pending = await asyncio.to_thread(service.start_turn, parsed, on_say)
        pending.future.add_done_callback(lambda _f: loop.call_soon_threadsafe(events.put_nowait, None))
        first = await events.get()
        if first is None:  # done before a word of the say: an error is a plain error response
            await _outcome(pending)
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": parsed["workflow"]}

        def chunk(delta: dict, finish: str | None = None, **extra) -> str:
            body = {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra}
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

        async def stream():
            try:
                async for piece in events_of():
                    yield piece
            finally:  # the last event sent, or the client gone
                service.in_flight -= 1

        async def events_of():
            yield chunk({"role": "assistant", "content": ""})
            sent, event, blocked = "", first, False
            while event is not None:
                text, slots = event
                shown = None if blocked else streamable(text, {**pending.start.held, **slots})
                blocked = shown is None
                if shown is not None and shown.startswith(sent) and len(shown) > len(sent):
                    yield chunk({"content": shown[len(sent):]})
                    sent = shown
                event = await events.get()
            try:
                turn, kv = await _outcome(pending)
            except ApiError as exc:
                yield f"data: {json.dumps({'error': {'message': exc.message, 'type': exc.kind, 'code': exc.code}})}\n\n"
                return
            service.finished(parsed, pending.served, turn, kv)
            extra = extension(turn, pending.served, pending.replayed)
            if turn.shown.startswith(sent):
                if len(turn.shown) > len(sent):
                    yield chunk({"content": turn.shown[len(sent):]})
            else:  # the say named a slot the conversation does not hold: the step's own line is shown instead
                extra["say_replaced"] = turn.shown
            yield chunk({}, "stop", subterra=extra)
            yield "data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.on_event("shutdown")
    async def shutdown():
        deployment.close()

    return app


def _shown_path(path: Path, base: Path) -> str:
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path)

