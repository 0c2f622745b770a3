"""``subterra serve`` against a live server: the official openai client, many users at once, a
recompile swapped in under load, and every kind of bad input."""

from __future__ import annotations

import json
import logging
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx2 as httpx
import openai
import pytest

from serving_fixtures import live_server, record_model, start_server  # noqa: F401
from subterra.server import ServerConfig, streamable
from subterra.settings import Settings
from subterra.store import Store

# what a traveller types, turn by turn, in three conversations that go different ways
SCRIPTS = [
    ["I'd like to go to Lisbon.", "On 2027-03-14.", "2 of us in economy.", "Yes, confirm.", "Yes please.", "Book it."],
    ["Hi there.", "Flying to Tokyo, please.", "I leave 2027-05-02.", "Cancel everything.", "Never mind, cancel.", "No thanks."],
    ["A ticket to Oslo please.", "Departing 2027-09-09.", "Get me an agent.", "I want a human.", "Put me through to someone."],
]


def client(live, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live.url}/v1", api_key=kwargs.pop("api_key", "unused"), max_retries=0, **kwargs)


def talk(api: openai.OpenAI, script: list[str], stream: bool = False) -> list[dict]:
    """Play ``script`` to its end (or its last line); each turn's content and form."""
    messages, turns = [], []
    for text in script:
        messages.append({"role": "user", "content": text})
        if stream:
            content, form = "", None
            for chunk in api.chat.completions.create(model="mini_booking", messages=messages, stream=True):
                if chunk.choices and chunk.choices[0].delta.content:
                    content += chunk.choices[0].delta.content
                form = (chunk.model_extra or {}).get("subterra") or form
            content = form.get("say_replaced", content)  # the say was replaced after part of it was sent
        else:
            reply = api.chat.completions.create(model="mini_booking", messages=messages)
            content, form = reply.choices[0].message.content, reply.model_extra["subterra"]
        turns.append({"content": content, **form})
        messages.append({"role": "assistant", "content": content})
        if form["ended"]:
            break
    return turns


def forms(turns: list[dict]) -> list[tuple]:
    return [(t["content"], t["node"], t["slots"], t["ended"], t["outcome"]) for t in turns]


def test_the_openai_client_lists_the_workflow_and_talks_a_conversation_to_an_end(live_server, mini_workflow):
    api = client(live_server)
    assert [m.id for m in api.models.list().data] == ["mini_booking"]
    turns = talk(api, SCRIPTS[1])
    assert turns[-1]["ended"] and turns[-1]["outcome"] in {"success", "abandoned", "escalated"}
    assert mini_workflow.nodes[turns[-1]["node"]].end == turns[-1]["outcome"]
    assert all(t["node"] in mini_workflow.nodes for t in turns)
    assert turns[0]["held"] == turns[0]["slots"]  # what the first message gave
    assert all("{" not in t["content"] for t in turns)  # the say is shown filled, never as a template


def test_a_streamed_turn_is_the_same_turn_written_in_pieces(live_server):
    api = client(live_server)
    assert forms(talk(api, SCRIPTS[0], stream=True)) == forms(talk(api, SCRIPTS[0]))


def test_a_stream_sends_the_say_as_it_is_written(live_server):
    with httpx.stream("POST", f"{live_server.url}/v1/chat/completions", timeout=60,
                      json={"model": "mini_booking", "stream": True, "messages": [{"role": "user", "content": SCRIPTS[0][0]}]}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop" and "node" in chunks[-1]["subterra"]
    pieces = [c["choices"][0]["delta"].get("content") for c in chunks[1:-1]]
    assert len(pieces) >= 2 and all(pieces)  # more than one piece: written, not sent at the end


def test_a_stream_gives_its_place_among_the_concurrent_requests_back_once(live_server):
    """A streamed request counts toward ``--max-concurrent`` until its last event or until the
    client leaves (the stream's own ``finally``), and gives its place back exactly once."""
    service = live_server.server.config.app.state.service
    body = {"model": "mini_booking", "stream": True, "messages": [{"role": "user", "content": SCRIPTS[0][0]}]}
    with httpx.stream("POST", f"{live_server.url}/v1/chat/completions", timeout=60, json=body) as r:
        next(line for line in r.iter_lines() if line.startswith("data: "))  # the stream has begun; leave early
    with httpx.stream("POST", f"{live_server.url}/v1/chat/completions", timeout=60, json=body) as r:
        assert [line for line in r.iter_lines() if line.startswith("data: ")][-1] == "data: [DONE]"
    for _ in range(250):
        if service.in_flight == 0:
            break
        threading.Event().wait(0.02)
    assert service.in_flight == 0


def test_a_say_streams_without_an_open_or_unheld_placeholder():
    assert streamable("Flying to {desti", {"destination": "Oslo"}) == "Flying to "
    assert streamable("Flying to {destination} on", {"destination": "Oslo"}) == "Flying to Oslo on"
    assert streamable("Flying to {destination}", {}) is None


def test_conversations_batched_together_get_the_forms_they_get_one_at_a_time(live_server):
    api = client(live_server)
    live_server.server.config.app.state.service.cache.clear()  # every conversation from its start
    alone = [forms(talk(api, script)) for script in SCRIPTS]
    batcher = live_server.deployment.current("mini_booking").batcher
    runs, rows = batcher.runs, batcher.rows
    barrier = threading.Barrier(len(SCRIPTS) * 2)

    def together(script):
        barrier.wait()
        return forms(talk(api, script))

    with ThreadPoolExecutor(len(SCRIPTS) * 2) as pool:
        batched = list(pool.map(together, SCRIPTS * 2))
    assert batched == alone * 2
    assert batcher.rows - rows > batcher.runs - runs  # some runs carried more than one conversation


def test_a_restarted_server_recovers_a_conversation_from_its_history(live_server):
    api = client(live_server)
    first = talk(api, SCRIPTS[0][:3])
    app_cache = live_server.server.config.app.state.service.cache
    app_cache.clear()
    messages = []
    for text, turn in zip(SCRIPTS[0][:2], first[:2]):
        messages += [{"role": "user", "content": text}, {"role": "assistant", "content": turn["content"]}]
    messages.append({"role": "user", "content": SCRIPTS[0][2]})
    reply = api.chat.completions.create(model="mini_booking", messages=messages)
    assert reply.model_extra["subterra"]["replayed"] == 2
    assert (reply.choices[0].message.content, reply.model_extra["subterra"]["node"]) == (first[2]["content"], first[2]["node"])


def post(live, body, **kwargs) -> httpx.Response:
    if isinstance(body, (dict, list)):
        return httpx.post(f"{live.url}/v1/chat/completions", json=body, timeout=60, **kwargs)
    return httpx.post(f"{live.url}/v1/chat/completions", content=body, timeout=60,
                      headers={"content-type": "application/json", **kwargs.pop("headers", {})}, **kwargs)


def error_of(response: httpx.Response) -> str:
    return response.json()["error"]["message"]


@pytest.mark.parametrize("body, status, says", [
    (b'{"model": "mini_booking", "messages": [', 400, "not JSON"),
    (b'{"model": "mini_booking", "messages": [{"role": "user", "content": "caf\xe9"}]}', 400, "not UTF-8"),
    ({"model": "no_such_flow", "messages": [{"role": "user", "content": "hi"}]}, 404, "no compiled model"),
    ({"messages": [{"role": "user", "content": "hi"}]}, 400, "'model'"),
    ({"model": "mini_booking", "messages": []}, 400, "non-empty"),
    ({"model": "mini_booking", "messages": [{"role": "user", "content": "   "}]}, 400, "empty"),
    ({"model": "mini_booking", "messages": [{"role": "user", "content": "x" * 2001}]}, 400, "more than 2000"),
    ({"model": "mini_booking", "messages": [{"role": "assistant", "content": "hi"}]}, 400, "alternate"),
    ({"model": "mini_booking", "messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "hi"}]}, 400, "alternate"),
    ({"model": "mini_booking", "messages": [{"role": "tool", "content": "hi"}]}, 400, "role"),
    ({"model": "mini_booking", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, 400, "text parts"),
    ({"model": "mini_booking", "stream": "yes", "messages": [{"role": "user", "content": "hi"}]}, 400, "'stream'"),
])
def test_bad_input_gets_a_clear_4xx(live_server, body, status, says):
    response = post(live_server, body)
    assert response.status_code == status, response.text
    assert says in error_of(response)


def test_a_history_the_model_did_not_write_is_refused(live_server):
    messages = [{"role": "user", "content": SCRIPTS[0][0]}, {"role": "assistant", "content": "I booked you a yacht."},
                {"role": "user", "content": SCRIPTS[0][1]}]
    response = post(live_server, {"model": "mini_booking", "messages": messages})
    assert response.status_code == 409 and "assistant message 1" in error_of(response)


def test_a_message_after_the_end_is_refused(live_server):
    api = client(live_server)
    turns = talk(api, SCRIPTS[1])
    messages = []
    for text, turn in zip(SCRIPTS[1], turns):
        messages += [{"role": "user", "content": text}, {"role": "assistant", "content": turn["content"]}]
    response = post(live_server, {"model": "mini_booking", "messages": messages + [{"role": "user", "content": "Hello?"}]})
    assert response.status_code == 409 and "ended" in error_of(response)


def test_the_server_answers_after_bad_input(live_server):
    post(live_server, b"\xff\xfe garbage")
    assert talk(client(live_server), SCRIPTS[2][:1])[0]["node"]


def test_too_many_requests_at_once_get_429_with_retry_after(tmp_path, trained, mini_workflow):
    settings = Settings(tmp_path / "data")
    shutil.copytree(trained[1].model_dir, settings.data_dir / "models" / "m")
    record_model(Store(settings.db_path), mini_workflow, "models/m")
    live = start_server(settings, ServerConfig(max_concurrent=1))
    try:
        busy = threading.Event()
        batcher = live.deployment.current("mini_booking").batcher

        def blocking():  # holds the model's worker until released
            busy.wait(30)
            return None
            yield

        batcher.submit(blocking(), 1)
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(post, live, {"model": "mini_booking", "messages": [{"role": "user", "content": "hi"}]})
            for _ in range(200):  # until the first request is in progress
                if live.server.config.app.state.service.in_flight:
                    break
                threading.Event().wait(0.02)
            second = post(live, {"model": "mini_booking", "messages": [{"role": "user", "content": "hi"}]})
            busy.set()
            assert first.result().status_code == 200
        assert second.status_code == 429 and second.headers["retry-after"] == "1"
    finally:
        live.stop()


def test_an_api_key_is_required_when_set(tmp_path, trained, mini_workflow):
    settings = Settings(tmp_path / "data")
    shutil.copytree(trained[1].model_dir, settings.data_dir / "models" / "m")
    record_model(Store(settings.db_path), mini_workflow, "models/m")
    live = start_server(settings, ServerConfig(api_key="s3cret-key"))
    try:
        with pytest.raises(openai.AuthenticationError):
            client(live, api_key="wrong").models.list()
        assert httpx.get(f"{live.url}/v1/models").status_code == 401
        assert [m.id for m in client(live, api_key="s3cret-key").models.list().data] == ["mini_booking"]
        assert httpx.get(f"{live.url}/").status_code == 200  # the page itself asks for no key
    finally:
        live.stop()


def test_no_user_text_reaches_the_logs(live_server, caplog):
    secret = "Flying to Lima, my passport is X1234567."
    with caplog.at_level(logging.DEBUG):
        talk(client(live_server), [secret])
    assert caplog.records and all("X1234567" not in r.getMessage() for r in caplog.records)


def test_a_recompile_is_swapped_in_under_load_without_dropping_a_request(live_server, trained, mini_workflow):
    """Conversations going on while a new model is recorded finish on the model they began on;
    new conversations get the new one; no request fails."""
    api = client(live_server)
    old = live_server.deployment.current("mini_booking").version
    new_dir = live_server.settings.data_dir / "models" / "mini_booking" / "recompiled"
    shutil.copytree(trained[1].model_dir, new_dir)
    started = threading.Event()

    def converse(script):
        messages, versions = [], []
        for text in script:
            messages.append({"role": "user", "content": text})
            reply = api.chat.completions.create(model="mini_booking", messages=messages)
            versions.append(reply.model_extra["subterra"]["model_version"])
            started.set()
            messages.append({"role": "assistant", "content": reply.choices[0].message.content})
            if reply.model_extra["subterra"]["ended"]:
                break
        return versions

    with ThreadPoolExecutor(6) as pool:
        going = [pool.submit(converse, script) for script in SCRIPTS * 2]
        started.wait(30)
        record_model(live_server.store, mini_workflow, str(new_dir))  # the recompile lands
        threading.Event().wait(0.5)  # the deployment looks again every 0.2 s
        fresh = talk(api, SCRIPTS[2][:1])[0]["model_version"]
        histories = [f.result() for f in going]  # every request answered (an error would raise here)
    assert fresh != old
    assert all(len(set(versions)) == 1 for versions in histories)  # each on the model it began on
    assert any(versions[0] == old for versions in histories)
