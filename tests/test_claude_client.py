"""The real anthropic SDK against a local stand-in for the API: retries on 429/529/500 and slow
answers, bounded concurrency, the prompt-cache and token accounting, and a key that shows
nowhere but in the request header."""

import json
import logging

import pytest

from claude_fake import KEY
from conftest import claude_settings
from subterra import claude_user
from subterra.claude_client import Claude, ClaudeError, Request, Usage, json_in, price_of
from subterra.claude_spool import ClaudeAnswers, ClaudeIncomplete, ResponseSpool


def user_request(label: str, example: str = "Hello there.") -> Request:
    payload = {"conversation": label, "persona": "p", "wants": {}, "so_far": [], "now": {"kind": "opener", "example": example}}
    return Request("user", "claude-haiku-5-5", ((claude_user.INSTRUCTIONS, True),), (("user", json.dumps(payload)),), 100, label)


def test_the_sdk_retries_429_529_500_and_a_slow_answer(fake_claude):
    client = Claude.from_env(claude_settings(fake_claude, max_retries=4)).client()
    fake_claude.queue("slow", "429", "529", "500")  # the timeout first: its backoff is the SDK's own (0.5 s)
    reply = client.create(user_request("c1"))
    assert reply.text == "Hello there."
    assert [r["outcome"] for r in fake_claude.requests] == ["slow", "429", "529", "500", "ok"]
    assert client.calls["user"] == 1  # one call of ours; the four retries were the SDK's
    assert reply.seconds >= 0.5  # the slow answer was waited for, up to the timeout, then retried


def test_a_request_failing_after_the_retries_names_the_failure_but_never_the_key(fake_claude, caplog):
    caplog.set_level(logging.DEBUG)
    client = Claude.from_env(claude_settings(fake_claude, max_retries=2)).client()
    fake_claude.queue("529", "529", "529")
    with pytest.raises(ClaudeError) as failure:
        client.create(user_request("c1"))
    assert "user request c1 failed after 2 retries: OverloadedError 529" in str(failure.value)
    assert failure.value.__cause__ is None and failure.value.__context__ is None or KEY not in repr(failure.value.__context__)
    assert fake_claude.count("user") == 3
    assert KEY not in str(failure.value) and KEY not in caplog.text
    assert client.scrub(f"echo {KEY}") == "echo [redacted]"


def test_usage_and_prompt_cache_are_measured_and_priced(fake_claude):
    client = Claude.from_env(claude_settings(fake_claude)).client()
    first, second = client.create(user_request("a")), client.create(user_request("b"))
    prefix = len(claude_user.INSTRUCTIONS) // 4 + 1
    assert first.usage.cache_write_tokens == prefix and first.usage.cache_read_tokens == 0
    assert second.usage.cache_read_tokens == prefix and second.usage.cache_write_tokens == 0
    assert first.usage.tokens_in == first.usage.input_tokens + prefix
    p = price_of("claude-haiku-5-5")
    u = second.usage
    assert second.usd == pytest.approx((u.input_tokens * p.input_per_m + u.output_tokens * p.output_per_m
                                        + u.cache_read_tokens * p.cache_read_per_m) / 1e6)
    assert Usage(10, 10).usd("claude-sonnet-5-5-20261001", batch=True) == pytest.approx(Usage(10, 10).usd("claude-sonnet-5-5") / 2)
    # the cached system block went out with cache_control, as the SDK sent it
    assert fake_claude.cached == {claude_user.INSTRUCTIONS}


def test_concurrency_is_bounded_and_every_answer_is_kept(fake_claude, tmp_path):
    fake_claude.delay = 0.15
    client = Claude.from_env(claude_settings(fake_claude, concurrency=3)).client()
    spool = ResponseSpool(tmp_path, "wf")
    requests = [user_request(f"c{i}", f"message {i}") for i in range(9)]
    replies = ClaudeAnswers(client, spool).all(requests)
    assert fake_claude.max_in_flight == 3
    assert [replies[r.key].text for r in requests] == [f"message {i}" for i in range(9)]
    again = ClaudeAnswers(client, spool)  # a second run: everything from the spool, nothing sent
    assert again.all(requests) == replies and fake_claude.count("user") == 9 and again.reused["user"] == 9


def test_a_failure_stops_new_requests_and_keeps_the_answered(fake_claude, tmp_path):
    client = Claude.from_env(claude_settings(fake_claude, concurrency=1, max_retries=1)).client()
    spool = ResponseSpool(tmp_path, "wf")
    fake_claude.outage("user", after=3)
    requests = [user_request(f"c{i}", f"message {i}") for i in range(8)]
    with pytest.raises(ClaudeIncomplete, match=r"5 of 8 user requests unanswered .*the 3 answered are kept, a rerun requests only the 5 missing"):
        ClaudeAnswers(client, spool).all(requests)
    assert fake_claude.count("user", "500") == 2  # one request, tried twice; nothing scheduled after it
    assert len(spool.replies()) == 3
    fake_claude.outages.clear()
    answers = ClaudeAnswers(client, spool)
    assert len(answers.all(requests)) == 8
    assert answers.received["user"] == 5 and answers.reused["user"] == 3


def test_json_in_reads_a_bare_or_fenced_answer():
    assert json_in('{"a": 1}') == {"a": 1} == json_in('```json\n{"a": 1}\n```')
    with pytest.raises(ValueError, match="not JSON"):
        json_in("Sure! {")


def test_offline_without_the_key_and_the_status_says_why(monkeypatch):
    from subterra.claude_client import ClaudeSettings

    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    claude = Claude.from_env(ClaudeSettings(parts=ClaudeSettings.parse_parts("teacher, judge")))
    assert not claude.any and not claude.uses("teacher")
    assert claude.status()["teacher"] == "offline: template teacher (ANTHROPIC_API_KEY is not set)"
    assert claude.status()["frontier"] == "offline: no frontier route, its cost estimated from characters"
    with pytest.raises(ClaudeError, match="no part uses Claude"):
        claude.client()
    with pytest.raises(ValueError, match="unknown Claude part"):
        ClaudeSettings(parts=ClaudeSettings.parse_parts("teacher,oracle"))
