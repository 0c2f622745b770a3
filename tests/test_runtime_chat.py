"""One live conversation (``subterra.runtime.chat.ChatSession``): forms, and drafted says that change
nothing."""

import json

from subterra.forms import parse_form
from subterra.runtime.chat import ChatSession
from subterra.runtime.encoding import ReadingRules


def test_chat_session_answers_with_forms(trained, mini_workflow):
    chat = ChatSession(trained[1].model_dir, mini_workflow, max_say_tokens=8)
    form = chat.respond("Hello!")
    assert form.node in mini_workflow.nodes
    parse_form(json.dumps({"node": form.node, "slots": form.slots, "say": form.say}))


class ReplayedSays:
    """A draft source (``SayDrafts``' interface) that records the say tokens a session writes,
    then drafts those, turn by turn, for another session: drafts that always hold, or (``right``)
    that hold for that many tokens and then go wrong."""

    def __init__(self):
        self.lines: list[list[int]] = []
        self.replaying = False
        self.turn = 0
        self.right: int | None = None

    def start(self, node):
        if not self.replaying:
            self.lines.append([])
            return {"line": self.lines[-1], "n": 0}
        self.turn += 1
        return {"line": self.lines[(self.turn - 1) % len(self.lines)], "n": 0}

    def after_sentence(self, node):
        return None  # a replayed line is drafted from its start only

    def step(self, place, token):
        if not self.replaying:
            place["line"].append(token)
        place["n"] += 1
        return place

    def after(self, place, token, limit):
        draft = place["line"][place["n"] + 1 : place["n"] + 1 + limit]
        if self.right is not None:
            draft = draft[: self.right] + [t + 1 for t in draft[self.right :]]
        return draft

    def add(self, node, tokens):
        pass


def test_a_chat_session_with_drafts_answers_as_one_without(trained, mini_workflow):
    """``subterra chat`` drafts say lines too: with drafts that hold (what the model writes), that
    hold for two tokens and then go wrong, or the workflow's own lines (which this few-step model
    does not write), every form is the one token-by-token decoding gives, and the cache holds
    exactly the conversation's tokens."""
    messages = ["Hello!", "I'd like to book", "Paris", "no, I meant Lima", "yes", "thanks"]
    free = ReadingRules(say_from_lines=False)  # drafts speed a say written freely
    plain = ChatSession(trained[1].model_dir, mini_workflow, max_say_tokens=12, max_draft=0, rules=free)
    plain.codec.drafts = replayed = ReplayedSays()
    expected = [plain.respond(m) for m in messages]
    replayed.replaying = True
    for drafts in ("what the model writes", "right for two tokens", "the workflow's lines"):
        chat = ChatSession(trained[1].model_dir, mini_workflow, max_say_tokens=12, rules=free)
        if drafts != "the workflow's lines":
            chat.codec.drafts, replayed.right = replayed, 2 if drafts == "right for two tokens" else None
        assert [chat.respond(m) for m in messages] == expected, drafts
        assert chat.cache.get_seq_length() == chat.position and chat.length == plain.length, drafts
        if drafts == "what the model writes":  # a say in one forward instead of one per token
            assert chat.forwards <= plain.forwards - len(messages) * 10, (chat.forwards, plain.forwards)
        if drafts == "right for two tokens":  # three tokens a forward
            assert chat.forwards <= plain.forwards - len(messages) * 6, (chat.forwards, plain.forwards)
