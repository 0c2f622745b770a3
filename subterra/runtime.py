"""The deployed runtime: a compiled model, a one-line system prompt, and a form to fill.

There is no orchestrator: the procedure lives in the weights. The runtime only *prefills the
form's fixed structure* — ``{"node": "``, ``", "slots": {``, ``"say": "`` — so the model generates
values only, and constrains three of them:

* the node id is one of the workflow's node ids (not its successors: where to go is the model's
  call);
* a slot name is one of the workflow's slot names;
* a slot value is a verbatim span of the user's last message (whole words), an enum value, or
  yes/no for a boolean — the copy constraint: a value can be chosen but never misspelt.

Decoding is greedy inside those constraints (a trie over the allowed token sequences; values are
scored whole) and free for ``say`` (a template: ``{slot}`` for a value the conversation holds,
filled in by ``forms.user_say`` (never shown with a placeholder the conversation does not hold); its first token may be the opening quote merged with the say's start,
as a byte-level BPE merges ' "{'). The pieces are cut where any tokenizer cuts (a letter meeting
punctuation, before a space), so a pretrained byte-level BPE sees the very tokens it was trained
on. ``free_form`` is the other way to fill a form: the model writes the whole turn itself.

Many conversations run at once (``Lockstep``): every step, each row feeds its own choice (one
token) or a forced stretch whole (the form's structure, a user's message), all rows packed into
one KV-cached forward with no padding; a context every row shares (the system prompt) is encoded
once and every row attends to that one copy.
"""

from __future__ import annotations

import functools
import json
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Generator, Iterable, Sequence

from subterra.drafts import SayDrafts
from subterra.forms import (  # the form's fixed structure, cut where every tokenizer cuts
    FIRST_KEY, FORM_CLOSE, FORM_HEAD, KEY_END, NEXT_KEY, NO_SLOTS, NODE_END, SAY_HEAD, SLOTS_KEY, VALUE_HEAD,
    VALUE_LAST, VALUE_MORE, Form, render_form, user_say,
)

END = "<|im_end|>"
WORD = re.compile(r"\w")
TOKEN = re.compile(r"[^\s]+")  # a word of a message as written, punctuation attached
SENTENCE_BREAK = ",.;:!?"  # a word ending in one of these ends a value
CHOSEN_TYPES = ("enum", "boolean")  # slot types chosen among declared values, never copied from the message


@dataclass
class TurnRecord:
    node: str
    slots: dict[str, str]
    say: str
    raw: str  # the form text as generated
    valid: bool
    tokens_in: int
    tokens_out: int
    latency_s: float = 0.0


@dataclass
class Choice:
    """Ask the driver for one token among ``allowed``; ``None``: any token but those the named
    ``mask`` bans (``None``: the driver's default, every special token). ``follow(token, limit)``:
    up to ``limit`` tokens likely to come after the chosen one (a draft the driver may verify in
    the same forward; what is generated stays the greedy choice, token by token)."""

    allowed: list[int] | None
    mask: str | None = None
    follow: Callable[[int, int], list[int]] | None = None


Program = Generator[object, int | None, None]


@dataclass(frozen=True)
class ReadingRules:
    """How the runtime reads people's messages: each rule chosen on the validation sets
    (``python -m bench.validate``), the one source of their defaults (eval, chat, serving)."""

    courtesy_values: bool = False  # may a span of only greetings and thanks ("hi", "good morning") be a value?
    typed_values: bool = True  # numbers and dates in people's words ("two of us", "next Friday") offered normalised
    edge_slots: bool = True  # the slots the chosen move collects are filled first ("Sept 21" is the date asked for)
    function_words: bool = True  # English frame words ("next month", "pls") never start or end a copied value


class Codec:
    """Token-level view of the chat format, shared by every row of a batch."""

    def __init__(self, tokenizer, wf, lexicon: frozenset[str] = frozenset(), runs_only: bool = True,
                 courtesy_values: bool = ReadingRules.courtesy_values, typed_values: bool = ReadingRules.typed_values,
                 function_words: bool = ReadingRules.function_words):
        self.tok = tokenizer
        self.wf = wf
        if lexicon and function_words:  # English frame words cut runs too ("Seoul next month": "Seoul")
            from subterra.lexicon import with_function_words

            lexicon = with_function_words(lexicon, wf)
        self.lexicon = lexicon
        self.runs_only = runs_only
        self.courtesy_values = courtesy_values  # may a span of only greetings and thanks ("hi", "good morning") be a value?
        self.typed_values = typed_values  # offer numbers and dates said in people's words, normalised (subterra.typed_values)
        self._spans_of: tuple[str | None, list[str]] = (None, [])
        enc = self.encode
        self.form_head = enc(FORM_HEAD)
        self.node_candidates = {n: enc(n + NODE_END) for n in wf.nodes}
        self.slots_key = enc(SLOTS_KEY)
        self.no_slots = enc(NO_SLOTS)
        self.first_key = enc(FIRST_KEY)
        self.next_key = enc(NEXT_KEY)
        self.key_candidates = {s: enc(s + KEY_END) for s in wf.slots}
        self.value_head = enc(VALUE_HEAD)
        self.value_more = enc(VALUE_MORE)
        self.value_last = enc(VALUE_LAST)
        head = enc(SAY_HEAD)
        self.say_head = head[:-1]  # the say opens with the head's last token or a merge of it with the say's start
        # a form holds the slots one user message provides: at most what one step collects
        self.max_slots = max(
            [1] + [len(set(n.collect) | set(e.collect)) for n in wf.nodes.values() for e in wf.out_edges(n.id)]
            + [len(n.collect) for n in wf.nodes.values()]
        )
        self.end_of_turn = enc(END + "\n")
        self.newline = enc("\n")
        self.end_id = tokenizer.convert_tokens_to_ids(END)
        specials = set(tokenizer.all_special_ids)
        texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
        # ``say`` ends at its first token holding a quote; such a token may carry text before the
        # quote and the form's closing brace after it ('?"', '"}'), nothing else
        self.say_ends: dict[int, tuple[str, str]] = {}
        banned_say = set(specials)
        for i, text in enumerate(texts):
            if "\\" in text:
                banned_say.add(i)
            elif '"' in text:
                before, _, after = text.partition('"')
                if after in ("", "}"):
                    self.say_ends[i] = (before, after)
                else:
                    banned_say.add(i)
        # a byte-level BPE merges the quote that opens ``say`` with what follows it (' "{' before
        # "{destination} ..."): the say opens with one of the tokens that begin with the head's last
        # token's text, its rest being the say's first characters
        opening = texts[head[-1]]
        self.say_openers = {
            i: text[len(opening):] for i, text in enumerate(texts)
            if text.startswith(opening) and i not in specials and not {'"', "\\"} & set(text[len(opening):])
        }
        self.starts_word = [t[:1].isspace() for t in texts]
        self.ends_sentence = frozenset(i for i, t in enumerate(texts) if t.rstrip().endswith((".", "!", "?")))
        self.banned_in_say = sorted(banned_say)
        self.masks = {"form": sorted(specials - {self.end_id})}  # free generation may end its turn
        self.drafts = SayDrafts.of_workflow(self)  # say lines to draft from (subterra.drafts)

    def encode(self, text: str) -> list[int]:
        return list(self._encoded(text))

    @functools.cached_property
    def _encoded(self) -> Callable[[str], tuple[int, ...]]:
        """The tokenizer, remembering: the rows of a batch encode the same spans over and over."""
        tok = self.tok
        return functools.lru_cache(maxsize=1 << 16)(lambda text: tuple(tok(text, add_special_tokens=False)["input_ids"]))

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids))

    def system(self, text: str) -> list[int]:
        return self.encode(f"<|im_start|>system\n{text}<|im_end|>\n")

    def user(self, text: str) -> list[int]:
        return self.encode(f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n")

    def value_candidates(self, slot: str, message: str, today=None) -> tuple[dict[str, list[int]], dict[str, list[int]] | None]:
        """Allowed values of ``slot`` after ``message``, and which of their tokens are decisions.

        Enum and boolean slots choose among their values (every token counts). Free slots copy a
        span of whole words of the message: what counts is the span's first token and each token
        that starts a word (go on or stop); the rest of a word follows from the message. Integer and
        date slots are also offered what the message says in people's words, normalised ("two of
        us" -> ``2``, "next Friday" -> the date from ``today``; every token of those counts).
        """
        spec = self.wf.slots[slot]
        if spec.type in CHOSEN_TYPES:
            values = spec.values if spec.type == "enum" else ("yes", "no")
            return {v: self.encode(v) for v in values}, None
        candidates, counted = {}, {}
        if self._spans_of[0] != message:  # every slot of a turn reads the same message
            self._spans_of = (message, value_spans(message, self.lexicon, self.runs_only))
        spans = [v for v in self._spans_of[1] if fits_type(spec, v)]
        if not spans and spec.type != "string":  # a typed value inside a longer run ("2 adults")
            spans = [v for v in word_spans(message) if fits_type(spec, v)]
        if not self.courtesy_values:
            spans = [v for v in spans if not courtesy_only(v)]
        for span in spans:
            ids = self.encode(span)
            candidates[span] = ids
            counted[span] = [0] + [j for j in range(1, len(ids)) if self.starts_word[ids[j]]]
        if self.typed_values and spec.type in ("integer", "date"):
            from subterra.typed_values import parsed_values

            for value in parsed_values(spec.type, message, today):
                if value not in candidates and fits_type(spec, value):
                    ids = self.encode(value)
                    candidates[value] = ids
                    counted[value] = list(range(len(ids)))
        return candidates, counted


# greetings, thanks and fillers: words no slot value is made of only (an English list, not one
# workflow's words: "hi" is never a destination, "good morning" never a name)
COURTESY_WORDS = frozenset("""
hi hello hey hiya howdy heya yo hallo greetings morning afternoon evening good day there
thanks thank thx ty cheers please pls plz ok okay k yes yeah yep no nope sure um uh hmm er
well so oh ah right alright great cool fine lovely hm huh sorry excuse me you all folks
""".split())


@functools.lru_cache(maxsize=1 << 16)
def courtesy_only(span: str) -> bool:
    """Is ``span`` made only of greetings, thanks and fillers (so never a slot value)?"""
    found = re.findall(r"[a-z]+", span.casefold())
    return bool(found) and all(w in COURTESY_WORDS for w in found) and not re.search(r"\d", span)


@functools.lru_cache(maxsize=1 << 16)  # every row of a batch asks of the same spans
def fits_type(spec, value: str) -> bool:
    """Can ``value`` be a value of the slot ``spec`` by its declared type (and range)? Integer,
    number and date slots take only what reads as one; a string slot whose declared values hold
    no digit takes no bare number; other strings take anything."""
    import datetime as dt

    if spec.type == "integer" or spec.type == "number":
        try:
            number = int(value) if spec.type == "integer" else float(value)
        except ValueError:
            return False
        low, high = spec.min, spec.max
        return (low is None or number >= float(low)) and (high is None or number <= float(high))
    if spec.type == "date":
        for pattern in ("%d %B %Y", "%Y-%m-%d"):
            try:
                dt.datetime.strptime(value, pattern)
                return True
            except ValueError:
                continue
        return False
    if spec.values and not any(ch.isdigit() for v in spec.values for ch in v):
        return not re.fullmatch(r"[\d\s.,:/-]+", value)  # a pool of words: a bare number is not one
    return True


def value_spans(message: str, lexicon: frozenset[str] = frozenset(), runs_only: bool = True) -> list[str]:
    """The spans of ``message`` a slot value may be copied from.

    Without a lexicon: every span of whole words (``word_spans``). With the compile's lexicon of
    procedure words (words users said around values in training, never inside one): a span
    neither starts nor ends with a procedure word, and with ``runs_only`` it is a whole run of
    non-procedure words between procedure words and sentence breaks, so where a value ends is
    read from the message ("Cape Town", never "Cape"). If the lexicon leaves nothing, every span.
    """
    if lexicon and runs_only:
        runs = _runs(message, lexicon)
        if runs:
            return runs
    spans = word_spans(message)
    if not lexicon:
        return spans
    kept = [s for s in spans if not _edge_words(s) & lexicon]
    return kept or spans


def _runs(message: str, lexicon: frozenset[str]) -> list[str]:
    from subterra.lexicon import words

    runs: list[str] = []
    current: list[tuple[int, int]] = []

    def close():
        if current:
            text = _span_text(message, current[0][0], current[-1][1])
            if text and text not in runs:
                runs.append(text)
            current.clear()

    for m in TOKEN.finditer(message):
        found = words(m.group())
        if found and all(w in lexicon for w in found):
            close()
            continue
        if m.group()[0] in "([":  # an aside starts: "barcelona (BCN)" is two runs
            close()
        current.append((m.start(), m.end()))
        if m.group()[-1] in SENTENCE_BREAK or m.group()[-1] in ")]":
            close()
    close()
    return runs


def _span_text(message: str, start: int, end: int) -> str:
    """The text of a span without the punctuation at its ends (not part of a value); empty if it
    holds no word or a character a form's JSON string would have to escape."""
    text = message[start:end].strip(".,!?;:()[]'")
    return text if text and WORD.search(text) and '"' not in text and "\\" not in text else ""


def _edge_words(span: str) -> set[str]:
    from subterra.lexicon import words

    found = words(span)
    return {found[0], found[-1]} if found else set()


def word_spans(message: str, max_words: int = 6) -> list[str]:
    """Every span of 1..max_words whole words of ``message``; a span never crosses a sentence
    break (a word ending in , . ; : ! ?) and drops the punctuation at its ends."""
    words = [(m.start(), m.end()) for m in TOKEN.finditer(message)]
    spans: list[str] = []
    for i in range(len(words)):
        for j in range(i, min(len(words), i + max_words)):
            if j > i and (message[words[j - 1][1] - 1] in SENTENCE_BREAK + ")]" or message[words[j][0]] in "(["):
                break
            text = _span_text(message, words[i][0], words[j][1])
            if text and text not in spans:
                spans.append(text)
    return spans


@dataclass
class Score:
    """Ask the driver for the most likely of several token sequences (scored whole, not greedily).

    ``counted`` (optional) lists, per candidate, the token positions whose probability counts:
    for a copied span only the model's real decisions — where the span starts, whether it goes on
    after each word, how it ends — since the rest of each word follows from the message.
    """

    candidates: dict
    counted: dict | None = None


def choose(candidates: dict, counted: dict | None = None, whole: bool = False):
    """Choose one of ``candidates`` (token sequences); returns its key.

    By default a greedy walk down the trie of the candidates: at every branching token the model
    picks among the allowed next tokens (constrained decoding), the rest is forced. ``whole``
    (values) scores every candidate sequence whole — the exact most likely sequence of the allowed
    set — so a value's first word cannot commit the model to a wrong span (``2027`` instead of
    ``9 May 2027``). A set where one candidate is a prefix of another is always scored whole.
    """
    if not candidates:
        raise RuntimeError("no candidate to choose from")
    keys = list(candidates)
    if len(keys) == 1:
        key = keys[0]
    elif whole or not _prefix_free([candidates[k] for k in keys]):
        key = yield Score(candidates, counted)
    else:
        depth, live = 0, keys
        while len(live) > 1:
            options = sorted({candidates[k][depth] for k in live})
            token = (yield Choice(options)) if len(options) > 1 else options[0]
            if len(options) == 1:
                yield ("force", token)
            live = [k for k in live if candidates[k][depth] == token]
            depth += 1
        key = live[0]
        for t in candidates[key][depth:]:
            yield ("force", t)
        return key
    for t in candidates[key]:
        yield ("force", t)
    return key


def _prefix_free(seqs: list[list[int]]) -> bool:
    ordered = sorted(tuple(s) for s in seqs)
    return all(s and ordered[i + 1][: len(s)] != s for i, s in enumerate(ordered[:-1])) and bool(ordered[-1])


def score_candidates(model, context: list[list[tuple]], position: int, first_logits, candidates: dict, counted=None):
    """The key of the most likely candidate sequence after a context (``candidate_scores``)."""
    scores = candidate_scores(model, context, position, first_logits, candidates, counted)
    return max(scores, key=scores.get)


def candidate_scores(model, context: list[list[tuple]], position: int, first_logits, candidates: dict, counted=None) -> dict:
    """The log-probability of each candidate sequence (of its counted positions) after a context.

    ``context`` is the context's key/value tensors as segments (each a list of (key, value) per
    layer, batch 1), ``position`` tokens in all; ``first_logits`` the model's prediction after it.
    The candidates run as one batch that attends to the context where it lies (``shared_context``),
    never copied per candidate.
    """
    import torch

    keys = list(candidates)
    seqs = [candidates[k] for k in keys]
    first = torch.log_softmax(torch.as_tensor(first_logits, dtype=torch.float32), -1)
    totals = torch.stack([first[s[0]] for s in seqs])
    width = max(len(s) for s in seqs) - 1
    if width > 0:
        # candidates that differ only in their last token (a value and what follows it) share a row
        rows_of: dict[tuple, int] = {}
        row_of = [rows_of.setdefault(tuple(s[:-1]), len(rows_of)) for s in seqs]
        k = len(rows_of)
        inputs = torch.zeros((k, width), dtype=torch.long)
        for fed, row in rows_of.items():
            inputs[row, : len(fed)] = torch.tensor(fed, dtype=torch.long)
        positions = torch.arange(position, position + width)
        device = next(model.parameters()).device
        with torch.inference_mode(), shared_context(model, context):
            out = model(
                input_ids=inputs.to(device),
                position_ids=positions.unsqueeze(0).expand(k, -1).to(device),
                use_cache=False,
            )
        logp = torch.log_softmax(out.logits.float().cpu(), -1)
        for c, s in enumerate(seqs):
            if len(s) > 1:
                positions_counted = counted[keys[c]] if counted else range(1, len(s))
                steps = torch.tensor([j - 1 for j in positions_counted if j >= 1], dtype=torch.long)
                if len(steps):
                    totals[c] += logp[row_of[c], steps, torch.tensor([s[j + 1] for j in steps.tolist()])].sum()
    return dict(zip(keys, totals.tolist()))


def force(ids: Iterable[int]):
    for t in ids:
        yield ("force", t)


class TurnCounter:
    """Counts forced (input) and chosen (output) tokens of one turn."""

    def __init__(self):
        self.forced = 0
        self.chosen = 0


def fresh_values(candidates: tuple[dict, dict | None], held_value: str | None) -> tuple[dict, dict | None]:
    """``candidates`` (values, counted) without ``held_value``, unless it is the only one."""
    values, counted = candidates
    if held_value is None or held_value not in values or len(values) == 1:
        return candidates
    keep = [v for v in values if v != held_value]
    return {v: values[v] for v in keep}, ({v: counted[v] for v in keep} if counted is not None else None)


def offered_values(codec: Codec, message: str, held: dict[str, str] | None = None,
                   today=None) -> dict[str, tuple[dict, dict | None]]:
    """Per slot the message can fill, its allowed values (and their counted tokens): a value its
    type rejects is never a choice, a slot with none is not offered, and a value the conversation
    holds for the slot is left out when the message offers another (``fresh_values``)."""
    return {s: fresh_values(c, held.get(s)) if held else c for s in codec.wf.slots
            if (c := codec.value_candidates(s, message, today))[0]}


def named_held(codec: Codec, message: str, held: dict[str, str]) -> set[str]:
    """The copy slots whose held value ``message`` names: the value is one of the spans the copy
    constraint would offer for that slot ("Sorry, I meant Paris, not Zurich" with origin Zurich)."""
    return {s for s, v in held.items()
            if s in codec.wf.slots and codec.wf.slots[s].type not in CHOSEN_TYPES
            and v in codec.value_candidates(s, message)[0]}


def offered_keys(codec: Codec, available: Iterable[str], message: str, held: dict[str, str] | None) -> list[str]:
    """The slot names a form may fill after ``message`` (of the ``available`` ones): a correction
    names the value it replaces, so when the message names the held value of a slot, another held
    slot of the same type whose value it does not name is not offered. "Sorry, I meant Paris, not
    Zurich" with origin Zurich and destination Lima held can refill origin, never destination;
    a slot not yet held, a slot of another type, and every slot when the message names no held
    value (a step visited again) are offered as before. What it costs: "keep Zurich, the
    destination is Paris now" can only be read as a change of origin."""
    held = held or {}
    named = named_held(codec, message, held)
    kinds = {codec.wf.slots[s].type for s in named}  # none when nothing is named; never an enum's (named_held)
    return [s for s in available if s not in held or s in named or codec.wf.slots[s].type not in kinds]


def fill_form(codec: Codec, last_user: str, max_say_tokens: int, counter: TurnCounter,
              held: dict[str, str] | None = None, corrections_named: bool = True, today=None,
              at: str | None = None, edge_slots: bool = False, on_say: Callable[[str, dict], None] | None = None):
    """The program of one assistant turn on a prefilled form: returns (Form, raw text, valid).

    The structure is forced; the node id, whether there are slots, each slot name and each value
    (with what follows it) are chosen among the allowed sequences, at most as many slots as one
    step of the workflow collects; ``say`` is free text up to its closing quote.

    ``held``: the values the conversation holds so far (``fresh_values``). A value already held
    for a slot is not offered for it again when the message offers another one: "Lisbon, not
    Porto" with Porto held can only capture Lisbon. A message whose only candidate is the held
    value (a step visited again, a value confirmed) still offers it. With ``corrections_named``,
    the slot names are narrowed the same way (``offered_keys``): a correction refills the slot
    whose value it names, not another one of the same type.

    ``edge_slots``: the step the form moves to says which slots the move collects
    (``Workflow.collected_between`` from ``at``, the conversation's step before this turn): when the
    message offers a value for any of them, the form fills those first, every one the message
    offers a value for, and only then may add others. "Sept 21" after "when do you fly?", with the
    model moving on to the party size, is a date for ``departure_date``, never a second ``origin``.

    ``on_say(text, slots)``: called as the say is written, with its text so far (a template) and
    the form's slots (a server streams the say from it).
    """
    raw: list[int] = []

    def forced(ids):
        raw.extend(ids)
        counter.forced += len(ids)
        yield from force(ids)

    def chosen(candidates, counted=None, whole=False):
        return (yield from _tracked(choose(candidates, counted, whole), raw, counter))

    yield from forced(codec.form_head)
    node = yield from chosen(codec.node_candidates)
    yield from forced(codec.slots_key)
    slots: dict[str, str] = {}
    available = offered_values(codec, last_user, held, today)
    keys = offered_keys(codec, available, last_user, held) if corrections_named else list(available)
    asked = [s for s in codec.wf.collected_between(at, node) if s in keys] if edge_slots else []
    if asked:
        yield from forced(codec.first_key)
        more = True
    else:
        opening = {"none": codec.no_slots, **({"some": codec.first_key} if available else {})}
        more = (yield from chosen(opening)) == "some"
    while more:
        unused = [s for s in keys if s not in slots]
        due = [s for s in asked if s not in slots]
        key = yield from chosen({s: codec.key_candidates[s] for s in (due or unused)})
        yield from forced(codec.value_head)
        values, counted = available[key]
        room = len(unused) > 1 and len(slots) + 1 < codec.max_slots
        if len(due) > 1:  # another asked slot is still to fill
            ends = {"more": codec.value_more}
        else:
            ends = {"last": codec.value_last, **({"more": codec.value_more} if room else {})}
        candidates, decisions = {}, {}
        for value, ids in values.items():
            for end, end_ids in ends.items():
                candidates[(value, end)] = ids + end_ids
                own = counted[value] if counted else range(len(ids))
                decisions[(value, end)] = list(own) + list(range(len(ids), len(ids) + len(end_ids)))
        slots[key], end = yield from chosen(candidates, decisions, whole=True)
        more = end == "more"
        if more:
            yield from forced(codec.next_key)
    yield from forced(codec.say_head)
    if len(codec.say_openers) == 1:  # a tokenizer that never merges the opening quote (the tiny one)
        [(opener, say_start)] = codec.say_openers.items()
        yield from forced([opener])
    else:
        say_start = yield from chosen({text: [i] for i, text in codec.say_openers.items()})
    written = [raw[-1]]  # the say's tokens, its opener first: where it stands among known lines
    place = codec.drafts.step(codec.drafts.start(node), raw[-1])
    restart = codec.drafts.after_sentence(node)  # a say that left the known lines may take one up again
    say_ids: list[int] = []
    say_tail = ""
    closed = False
    for _ in range(max_say_tokens):
        if place is None and restart is not None and say_ids and say_ids[-1] in codec.ends_sentence:
            place = restart
        token = yield Choice(None, follow=functools.partial(codec.drafts.after, place) if place is not None else None)
        counter.chosen += 1
        raw.append(token)
        written.append(token)
        place = codec.drafts.step(place, token)
        if token in codec.say_ends:
            codec.drafts.add(node, written)
            say_tail, after = codec.say_ends[token]
            rest = FORM_CLOSE[1 + len(after):]
            if rest:
                yield from forced(codec.encode(rest))
            closed = True
            break
        say_ids.append(token)
        if on_say is not None:
            on_say(say_start + codec.decode(say_ids), slots)
    if not closed:  # ran out of room: the form is invalid; close it so the conversation goes on
        yield from forced(codec.encode(FORM_CLOSE))
    yield from forced(codec.end_of_turn)
    say = say_start + codec.decode(say_ids) + say_tail
    text = codec.decode(raw).split(END)[0]
    return Form(node, slots, say), text, closed


def free_form(codec: Codec, max_tokens: int, counter: TurnCounter):
    """The program of one assistant turn generated freely (no prefill, no constraint) up to the
    end of the turn: returns (Form, raw text, valid). A text that is no form is read leniently
    for where it says it is (so the simulated user can answer), and is invalid."""
    ids: list[int] = []
    ended = False
    for _ in range(max_tokens):
        token = yield Choice(None, mask="form")
        counter.chosen += 1
        if token == codec.end_id:
            ended = True
            break
        ids.append(token)
    tail = codec.newline if ended else codec.end_of_turn
    counter.forced += len(tail)
    yield from force(tail)
    text = codec.decode(ids)
    form, valid = read_form(text)
    return form, text, valid and ended


_NODE_FIELD = re.compile(r'"node"\s*:\s*"([^"]*)"')
_SLOTS_FIELD = re.compile(r'"slots"\s*:\s*(\{[^{}]*\})')
_SAY_FIELD = re.compile(r'"say"\s*:\s*"((?:[^"\\]|\\.)*)"')


def read_form(text: str) -> tuple[Form, bool]:
    """(form, parsed): the form a generated text holds; if it is not a valid form, whatever node,
    slots and say can still be read from it."""
    from subterra.forms import parse_form

    try:
        return parse_form(text), True
    except ValueError:
        pass
    node = m.group(1) if (m := _NODE_FIELD.search(text)) else ""
    slots: dict[str, str] = {}
    if m := _SLOTS_FIELD.search(text):
        try:
            found = json.loads(m.group(1))
            slots = {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}
        except ValueError:
            slots = {}
    say = m.group(1) if (m := _SAY_FIELD.search(text)) else ""
    return Form(node, slots, say), False


def _tracked(program, raw: list[int], counter: TurnCounter):
    """Run a choose program, recording its tokens into ``raw``; all of them are the model's output."""
    try:
        action = next(program)
        while True:
            if isinstance(action, Score):
                key = yield action
                action = program.send(key)
                continue
            if isinstance(action, Choice):
                token = yield action
            else:
                token = action[1]
                yield action
            counter.chosen += 1
            raw.append(token)
            action = program.send(token)
    except StopIteration as stop:
        return stop.value


SHARED_ATTENTION = "subterra_shared_context"
# what the current forward's attention reads besides the tokens it is given: ``segments`` every
# row shares, and ``step`` (a ``RowStep``) when the rows' own tokens live in a ``RowCache``
class _PerThread(threading.local):
    def __init__(self):
        self.state: dict = {"segments": [], "step": None}


_LOCAL = _PerThread()  # per thread: a server runs several models' forwards at once, one thread each


class RowCache:
    """Every row's own keys and values, per layer, preallocated: keys [rows, kv_heads, head_dim,
    capacity] (transposed), values [rows, kv_heads, capacity, head_dim].

    Rows do not advance together: a forward feeds each row its own run of tokens (a user's message
    in one go, one chosen token), written at that row's ``fill``. Only a row's first ``fill``
    positions are ever read for it.
    """

    def __init__(self, model, rows: int, capacity: int):
        import torch

        c = model.config
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        kv_heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
        param = next(model.parameters())
        layers, kind = range(c.num_hidden_layers), dict(dtype=param.dtype, device=param.device)
        # keys transposed: a query times them is a plain matrix product over the filled part
        # keys past a row's fill are masked before the softmax (never read); values there are
        # multiplied by a weight of 0, so they must be finite: zeros
        self.keys = [torch.empty((rows, kv_heads, head_dim, capacity), **kind) for _ in layers]
        self.values = [torch.zeros((rows, kv_heads, capacity, head_dim), **kind) for _ in layers]
        self.group = c.num_attention_heads // kv_heads

    def keep(self, index) -> None:
        """Only the rows ``index`` (a tensor of row numbers) go on."""
        self.keys = [k.index_select(0, index) for k in self.keys]
        self.values = [v.index_select(0, index) for v in self.values]

    def grow(self, k: int) -> None:
        """``k`` more rows, empty."""
        import torch

        self.keys = [torch.cat([x, x.new_empty((k, *x.shape[1:]))]) for x in self.keys]
        self.values = [torch.cat([x, x.new_zeros((k, *x.shape[1:]))]) for x in self.values]

    def restore(self, i: int, state: "RowState") -> None:
        """Row ``i`` starts with ``state``'s keys and values (its first ``state.length`` positions)."""
        for layer, (k, v) in enumerate(state.layers):
            self.keys[layer][i, :, :, : state.length] = k
            self.values[layer][i, :, : state.length] = v

    def saved(self, i: int, length: int) -> list[tuple]:
        """Copies of row ``i``'s first ``length`` keys (transposed) and values, per layer."""
        return [(k[i, :, :, :length].clone(), v[i, :, :length].clone()) for k, v in zip(self.keys, self.values)]

    def row(self, i: int, length: int) -> list[tuple]:
        """Row ``i``'s first ``length`` positions, per layer (batch 1): a context segment."""
        return [(k[i : i + 1, :, :, :length].transpose(2, 3), v[i : i + 1, :, :length]) for k, v in zip(self.keys, self.values)]


@dataclass
class RunGroup:
    """Rows of a ``RowStep`` feeding runs of similar length: their tokens but the last, attended
    over copies of these rows' caches."""

    rows: object  # [s] the rows
    index: object  # [s, E] packed index of each of their other tokens (padded to the group's longest)
    valid: object  # [s, E] bool
    allowed: object  # [s, 1, group * E, width]
    width: int


@dataclass
class RowStep:
    """One forward over a ``RowCache``, its rows' tokens packed into one sequence (no padding).

    Row r feeds ``ready[r]`` tokens, written at positions ``fill[r]`` on; each sees its row's
    positions up to its own. Attention runs in two parts, so that its cost follows the tokens fed,
    not rows x longest run: every row's *last* token (the one whose prediction is read) as one
    batched decode over all rows' caches, and the rest of the longer runs (``extra``) over the
    caches of those rows only, grouped by run length (up to 2, 4, 8, ... tokens): each group's
    runs are padded to its longest, not to the longest of the step (a drafted say line of 48
    tokens beside drafts of 3 padded the extra attention's work to 2.3x what it needed).
    """

    cache: RowCache
    token_rows: object  # [T] the row of each packed token
    token_positions: object  # [T] where it is written
    last: object  # [rows] the packed index of each row's last token (0 for a row feeding none)
    fed: object  # [rows] bool: the row feeds tokens this step
    main_allowed: object  # [rows, 1, 1, width]
    width: int
    extra: list["RunGroup"] = field(default_factory=list)  # the rows feeding more than one token, by run length

    @classmethod
    def of(cls, cache: RowCache, fill, ready) -> "RowStep":
        import numpy as np
        import torch

        fill, ready = np.asarray(fill, dtype=np.int64), np.asarray(ready, dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(ready)[:-1]])
        token_rows = np.repeat(np.arange(len(ready)), ready)
        token_positions = np.concatenate([fill[r] + np.arange(k) for r, k in enumerate(ready)]) if ready.sum() else np.zeros(0, np.int64)
        fed = ready > 0
        last = np.where(fed, starts + ready - 1, 0)
        last_pos = np.where(fed, fill + ready - 1, 0)
        width = int(last_pos.max()) + 1
        main_allowed = np.arange(width)[None, :] <= last_pos[:, None]
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
        step = cls(cache, t(token_rows), t(token_positions), t(last), t(fed), t(main_allowed[:, None, None, :]), width)
        longer = np.flatnonzero(ready > 1)
        lengths = np.ceil(np.log2(ready[longer] - 1)).astype(np.int64)  # a run's other tokens, by powers of 2
        for length in np.unique(lengths):
            extra = longer[lengths == length]
            e = int(ready[extra].max()) - 1
            j = np.arange(e)[None, :]
            valid = j < (ready[extra] - 1)[:, None]
            index = np.where(valid, starts[extra][:, None] + j, starts[extra][:, None])
            positions = np.where(valid, fill[extra][:, None] + j, fill[extra][:, None])
            extra_width = int(positions.max()) + 1
            allowed = np.arange(extra_width)[None, None, :] <= positions[:, :, None]  # [s, E, width]
            allowed = np.tile(allowed[:, None], (1, 1, cache.group, 1))  # query (g, j) at g * E + j
            step.extra.append(RunGroup(t(extra), t(index), t(valid), t(allowed), extra_width))
        return step


def penalties(vocab: int, banned_free: Sequence[int], masks: dict[str, Sequence[int]] | None = None) -> dict:
    """Per mask name (None: a free choice's default, ``banned_free``), what each token's
    prediction gets added before ``greedy`` picks: -inf for the banned ones."""
    import numpy as np

    out: dict[str | None, object] = {}
    for name, banned in {None: banned_free, **(masks or {})}.items():
        out[name] = np.zeros(vocab, dtype=np.float32)
        out[name][[b for b in banned if b < vocab]] = -np.inf
    return out


def greedy(action: Choice, row, penalties: dict) -> int:
    """The token ``action`` takes after the prediction ``row``: the likeliest allowed one (a free
    choice: the likeliest its mask's ``penalties`` leave)."""
    import numpy as np

    if action.allowed is None:
        return int(np.argmax(row + penalties[action.mask]))
    allowed = action.allowed
    return allowed[int(np.argmax(row[allowed]))] if len(allowed) > 1 else allowed[0]


def _attend(q, own_kt, own_v, allowed, layer: int, scale: float):
    """Attention of ``q`` [b, kv_heads, m, dim] over the shared segments, then its own keys
    (transposed, [b, kv_heads, dim, n]) and values [b, kv_heads, n, dim] where ``allowed``
    (broadcast to [b, kv_heads, m, n], or None)."""
    import torch

    b, kv_heads, m, dim = q.shape
    flat = q.transpose(0, 1).reshape(kv_heads, b * m, dim)
    scores = []
    for segment in _LOCAL.state["segments"]:
        seg_k, _ = segment[layer]
        part = torch.bmm(flat, seg_k[0].transpose(1, 2))  # [kv_heads, b*m, P]
        scores.append(part.reshape(kv_heads, b, m, -1).transpose(0, 1))
    own = torch.matmul(q, own_kt)
    if allowed is not None:
        own = own.masked_fill(~allowed, float("-inf"))
    scores.append(own)
    weights = torch.softmax((torch.cat(scores, dim=-1) if len(scores) > 1 else own).float() * scale, dim=-1).to(q.dtype)
    parts = torch.split(weights, [s.shape[-1] for s in scores], dim=-1)
    out = torch.matmul(parts[-1], own_v)
    for segment, w in zip(_LOCAL.state["segments"], parts[:-1]):
        _, seg_v = segment[layer]
        flat_w = w.transpose(0, 1).reshape(kv_heads, b * m, -1)
        out = out + torch.bmm(flat_w, seg_v[0]).reshape(kv_heads, b, m, dim).transpose(0, 1)
    return out


def _shared_context_attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
    """Attention over a context every row shares, then each row's own tokens.

    ``query``/``key``/``value`` are this forward's [batch, heads, L, dim] (after RoPE). The shared
    segments (batch 1: a route's system prompt, or the context a set of candidates continues) are
    read once per layer as one matrix product for all rows, never copied per row: that is what
    keeps a 1,200-token procedure prompt cheap across a batch. Without a ``RowStep``, each row's own
    tokens are this forward's (causal among them). Under a ``RowStep`` the batch is one packed
    sequence of every row's tokens: their keys and values are written to the ``RowCache`` first,
    and each token sees its row's positions up to its own.
    """
    import torch

    batch, heads, length, dim = query.shape
    kv_heads = key.shape[1]
    group = heads // kv_heads
    scale = scaling if scaling is not None else dim**-0.5
    layer = module.layer_idx
    step: RowStep | None = _LOCAL.state["step"]
    if step is None:
        allowed = None
        if length > 1:
            allowed = torch.ones(length, length, dtype=torch.bool, device=query.device).tril().repeat(group, 1)
        q = query.reshape(batch, kv_heads, group * length, dim)
        out = _attend(q, key.transpose(2, 3), value, allowed, layer, scale)
        return out.reshape(batch, heads, length, dim).transpose(1, 2).contiguous(), None
    keys, values = step.cache.keys[layer], step.cache.values[layer]
    keys[step.token_rows, :, :, step.token_positions] = key[0].transpose(0, 1)
    values[step.token_rows, :, step.token_positions] = value[0].transpose(0, 1)
    q = query[0]  # [heads, T, dim]
    out = torch.zeros(length, heads, dim, dtype=query.dtype, device=query.device)
    rows = step.last.shape[0]
    main = q[:, step.last].transpose(0, 1).reshape(rows, kv_heads, group, dim)
    main = _attend(main, keys[..., : step.width], values[:, :, : step.width], step.main_allowed, layer, scale)
    out[step.last[step.fed]] = main.reshape(rows, heads, dim)[step.fed]
    for runs in step.extra:
        s, e = runs.index.shape
        extra = q[:, runs.index].transpose(0, 1).reshape(s, kv_heads, group * e, dim)
        ek = keys[..., : runs.width].index_select(0, runs.rows)  # only the filled part is copied
        ev = values[:, :, : runs.width].index_select(0, runs.rows)
        extra = _attend(extra, ek, ev, runs.allowed, layer, scale).reshape(s, heads, e, dim).transpose(1, 2)
        out[runs.index[runs.valid]] = extra[runs.valid]
    return out[None], None


class shared_context:
    """Within it, ``model``'s forward attends to ``segments`` (per-layer key/value lists, batch 1)
    before each row's own tokens (``step``: see ``_shared_context_attention``)."""

    def __init__(self, model, segments: list[list[tuple]]):
        from transformers import AttentionInterface

        AttentionInterface.register(SHARED_ATTENTION, _shared_context_attention)
        self.config, self.segments = model.config, segments

    def __enter__(self):
        self.saved = (dict(_LOCAL.state), self.config._attn_implementation)
        _LOCAL.state.update(segments=self.segments, step=None)
        self.config._attn_implementation = SHARED_ATTENTION
        return self

    def set_step(self, step: RowStep | None) -> None:
        _LOCAL.state["step"] = step

    def __exit__(self, *exc):
        saved, self.config._attn_implementation = self.saved
        _LOCAL.state.clear()
        _LOCAL.state.update(saved)
        return False


@dataclass
class Prefix:
    """A context every row of a batch starts with (a route's system prompt), encoded once: its
    tokens, its key/value tensors per layer (batch 1) and the model's prediction after it."""

    ids: list[int]
    layers: list[tuple]
    logits: object  # numpy array (vocab,)


@dataclass
class RowState:
    """A row's own keys (transposed, [kv_heads, head_dim, length]) and values ([kv_heads, length,
    head_dim]) per layer, and the model's prediction after its last token: where a conversation's
    next turn starts (``Lockstep.run``'s ``resume``)."""

    layers: list[tuple]
    length: int
    logits: object  # numpy array (vocab,)

    @property
    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.layers)


MAX_RUN = 64  # a row feeds at most this many tokens in one forward
MAX_DRAFT = 48  # drafted tokens a row feeds after its choice (``Choice.follow``)


class Lockstep:
    """Drives many row programs through one batched, KV-cached forward per step.

    Every step feeds every running row the tokens it has ready: its own choice (one token, decoded
    greedily from the last forward's prediction), or a forced stretch (a user's message, the form's
    fixed structure) whole, up to ``max_run`` tokens. So a 30-token user message takes one forward,
    not thirty, while the other rows decode: a compile's eval runs about half the forwards it would
    one token per row per step. The rows' tokens go through the model packed into one sequence (no
    padding); each row's own keys and values go to a preallocated ``RowCache`` at its own fill.

    Rows may share a ``Prefix``: it is computed once (``encode_prefix``) and every row attends to
    that one copy (``shared_context``): it is never re-encoded, nor copied per row. A row still
    running when its room is full is cut off (``truncated``). When half the rows are done, the
    batch goes on with the others only, so a few long conversations do not keep paying for the
    finished ones. ``Choice(None)`` bans ``banned_free``; ``Choice(None, mask=NAME)`` bans
    ``masks[NAME]``.

    Speculative decoding: a choice that offers a draft (``Choice.follow``: a say line the model is
    likely writing, ``subterra.drafts``) feeds the chosen token and up to ``max_draft`` drafted
    ones in the same forward. The row keeps the drafted tokens greedy decoding picks, read from
    that forward's predictions in order, up to the first it would not: that is where the next
    choice is made, from the prediction already there. A row thus writes a known say line in one or
    two forwards instead of one per token; what it writes is what it would write without drafts.
    """

    def __init__(self, model, banned_free: Sequence[int], masks: dict[str, Sequence[int]] | None = None,
                 max_run: int = MAX_RUN, max_draft: int = MAX_DRAFT):
        self.model = model
        self.decoder = model.get_decoder()
        self.head = model.get_output_embeddings()
        self.max_run = max_run
        self.max_draft = max_draft
        self.device = next(model.parameters()).device
        self.penalties = penalties(self.head.weight.shape[0], banned_free, masks)

    def encode_prefix(self, ids: Sequence[int]) -> Prefix:
        """Run the shared context once (batch 1) and keep its cache and last prediction."""
        import torch

        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([list(ids)], device=self.device), use_cache=True)
        layers = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        return Prefix(list(ids), layers, out.logits[0, -1, :].float().cpu().numpy())

    def run(
        self,
        programs: list[Program],
        max_len: int,
        on_step: Callable[[float], None] | None = None,
        prefix: Prefix | None = None,
        on_score: Callable[[int, float], None] | None = None,
        resume: Sequence["RowState | None"] | None = None,
        on_finish: Callable[[int, "RowState | None"], None] | None = None,
        admit: Callable[[int, int], list[tuple[Program, "RowState | None"]]] | None = None,
        max_rows: int = 0,
    ) -> list[bool]:
        """Run every program to its end (or to ``max_len`` tokens, prefix included) after the
        shared ``prefix`` if any; returns which rows were truncated. ``on_step`` gets each batched
        forward's compute time, ``on_score`` (row, seconds) each row's own candidate scoring.
        ``resume`` (per row, or None) starts a row from the keys and values of tokens it was fed
        in an earlier run (its program feeds only what follows them); ``on_finish`` (row, state)
        gets each row's own keys and values when its program ends (a server keeps a
        conversation's between its turns; None if the row was cut off or fed nothing).

        Continuous batching: ``admit(slots, room)``, asked before every step, hands over new
        programs (with their ``RowState`` or None) for up to ``slots`` rows, each needing at
        most ``room`` tokens of its own: they take the rows of finished programs, and new rows up
        to ``max_rows``, and start at once beside the running ones. Rows are numbered in the order
        they came (the programs given first, then each admitted one)."""
        import numpy as np
        import torch

        n = len(programs)
        alive = [True] * n
        pending: list[object] = [self._advance(prog, None, i, alive) for i, prog in enumerate(programs)]
        rows = list(range(n))  # the original row of each batch position (finished rows are dropped)
        cut = [False] * n
        first = len(prefix.ids) if prefix is not None else 0
        room = max(1, max_len - first)  # own tokens a row may feed
        segments = [prefix.layers] if prefix is not None else []
        cache = RowCache(self.model, n, room)
        fill = np.zeros(n, dtype=np.int64)  # own tokens fed so far, per row
        queued: list[list[int]] = [[] for _ in range(n)]  # tokens ready to feed, per row
        logits = np.repeat(prefix.logits[None, :], n, axis=0) if prefix is not None else None
        for i, state in enumerate(resume or ()):
            if state is not None and 0 < state.length <= room:
                cache.restore(i, state)
                fill[i] = state.length
                if logits is None:
                    logits = np.zeros((n, state.logits.shape[-1]), dtype=np.float32)
                logits[i] = state.logits

        def finish(i: int) -> None:  # a program ended: were its last tokens still to fit?
            cut[rows[i]] = bool(fill[i] + len(queued[i]) > room)
            queued[i] = []
            if on_finish is not None:
                kept = not cut[rows[i]] and fill[i] > 0
                on_finish(rows[i], RowState(cache.saved(i, int(fill[i])), int(fill[i]), np.array(logits[i])) if kept else None)

        def admitted(new: list) -> None:  # programs that join the run: free rows first, then new ones
            nonlocal n, fill, logits
            free = [i for i in range(n) if not alive[i]]
            grow = max(0, len(new) - len(free))
            if grow:
                cache.grow(grow)
                programs.extend([None] * grow), pending.extend([None] * grow), rows.extend([0] * grow)
                queued.extend([] for _ in range(grow)), alive.extend([False] * grow)
                fill = np.concatenate([fill, np.zeros(grow, dtype=np.int64)])
                logits = np.concatenate([logits, np.repeat(prefix.logits[None, :], grow, axis=0)])
                free += list(range(n, n + grow))
                n += grow
            for i, (program, state) in zip(free, new):
                rows[i], programs[i], queued[i], alive[i] = len(cut), program, [], True
                cut.append(False)
                fill[i], logits[i] = 0, prefix.logits
                if state is not None and 0 < state.length <= room:
                    cache.restore(i, state)
                    fill[i], logits[i] = state.length, state.logits
                pending[i] = self._advance(program, None, i, alive)
                if not alive[i]:
                    finish(i)

        with torch.inference_mode(), shared_context(self.model, segments) as attention:
            while True:
                if admit is not None and prefix is not None:
                    new = admit(n - sum(alive) + max(0, max_rows - n), room)
                    if new:
                        admitted(new)
                if not any(alive):
                    break
                drafts: dict[int, list[int]] = {}  # row: the drafted tokens it feeds this step
                if 2 * sum(alive) <= n and n > 1:  # most rows are done: go on with the others only
                    keep = [i for i in range(n) if alive[i]]
                    cache.keep(torch.tensor(keep, device=self.device))
                    programs, pending, rows = [programs[i] for i in keep], [pending[i] for i in keep], [rows[i] for i in keep]
                    queued, fill = [queued[i] for i in keep], fill[keep]
                    logits = logits[keep] if logits is not None else None
                    n, alive = len(keep), [True] * len(keep)
                for i in range(n):
                    if not alive[i]:
                        continue
                    if not queued[i]:  # the last forward predicted after this row's last token
                        while isinstance(pending[i], Score):
                            context = segments + ([cache.row(i, int(fill[i]))] if fill[i] else [])
                            scoring = time.perf_counter()
                            key = score_candidates(self.model, context, first + int(fill[i]), logits[i],
                                                   pending[i].candidates, pending[i].counted)
                            if on_score is not None:
                                on_score(rows[i], time.perf_counter() - scoring)
                            pending[i] = self._advance(programs[i], key, i, alive)
                        action = pending[i]
                        if isinstance(action, Choice):
                            token = self._greedy(action, logits[i])
                            queued[i].append(token)
                            room_left = min(self.max_run, room - int(fill[i])) - 1
                            if action.follow is not None and self.max_draft and room_left > 0:
                                draft = action.follow(token, min(self.max_draft, room_left))
                                if draft:
                                    drafts[i] = draft
                            pending[i] = self._advance(programs[i], token, i, alive)
                            if i in drafts and alive[i] and isinstance(pending[i], Choice):
                                queued[i] += drafts[i]  # fed now, kept after the forward as far as they hold
                            else:
                                drafts.pop(i, None)
                    while alive[i] and isinstance(pending[i], tuple) and len(queued[i]) < self.max_run:
                        queued[i].append(pending[i][1])
                        pending[i] = self._advance(programs[i], None, i, alive)
                    if not alive[i]:
                        finish(i)
                    elif fill[i] >= room:  # no room left for what it still has to say
                        cut[rows[i]], alive[i], queued[i] = True, False, []
                ready = [min(len(queued[i]), self.max_run, room - int(fill[i])) for i in range(n)]
                if not any(ready):
                    break
                tokens: list[int] = []
                for i, k in enumerate(ready):
                    tokens += queued[i][:k]
                    queued[i] = queued[i][k:]
                step = RowStep.of(cache, fill, ready)
                attention.set_step(step)
                started = time.perf_counter()
                hidden = self.decoder(
                    input_ids=torch.tensor([tokens], device=self.device),
                    position_ids=(step.token_positions + first)[None].to(self.device),
                    use_cache=False,
                ).last_hidden_state
                new = self.head(hidden[0, step.last]).float().cpu().numpy()
                logits = new if logits is None else np.where(np.asarray(ready)[:, None] > 0, new, logits)
                if drafts:
                    self._verify(drafts, hidden[0], step, logits, programs, pending, alive, fill, ready)
                if on_step is not None:
                    on_step(time.perf_counter() - started)
                fill += np.asarray(ready, dtype=np.int64)
                for i in drafts:
                    if not alive[i]:
                        finish(i)
        return cut

    def _greedy(self, action: Choice, row) -> int:
        return greedy(action, row, self.penalties)

    def _verify(self, drafts: dict[int, list[int]], hidden, step: "RowStep", logits, programs, pending, alive,
                fill, ready) -> None:
        """Keep of each row's draft the tokens greedy decoding picks, in order, up to the first it
        does not: the program gets those, ``ready`` counts only them (the rest of the row's cache
        is written over later), and the row's prediction is the one after its last kept token."""
        import torch

        rows = sorted(drafts)
        # each drafting row fed [choice, d1 .. dk]: the predictions after choice .. d(k-1) decide d1 .. dk
        index = torch.cat([torch.arange(int(step.last[i]) - len(drafts[i]), int(step.last[i])) for i in rows])
        predicted = self.head(hidden[index]).float().cpu().numpy()
        at = 0
        for i in rows:
            draft = drafts[i]
            kept = 0
            for j, token in enumerate(draft):
                if not (alive[i] and isinstance(pending[i], Choice)) or self._greedy(pending[i], predicted[at + j]) != token:
                    break
                pending[i] = self._advance(programs[i], token, i, alive)
                kept += 1
            if kept < len(draft):  # the prediction after the last kept token
                logits[i] = predicted[at + kept]
            ready[i] -= len(draft) - kept
            at += len(draft)

    @staticmethod
    def _advance(prog: Program, value, i: int, alive: list[bool]):
        try:
            return prog.send(value) if value is not None else next(prog)
        except StopIteration:
            alive[i] = False
            return None


class ChatSession:
    """One live conversation with a compiled model (``subterra chat``): the runtime for one user.

    Forced tokens (the user's message, the form's structure) go through the model in one forward
    each; only the model's own choices are decoded token by token, a say line with its draft
    (``Lockstep``: the chosen token and up to ``max_draft`` drafted ones in one forward, kept up to
    the first greedy decoding would not pick; the cache is cut back to what was kept).
    """

    def __init__(self, model_dir: str, wf, max_say_tokens: int = 96, max_draft: int = MAX_DRAFT,
                 rules: ReadingRules = ReadingRules(), today=None):
        import numpy as np
        import torch
        from transformers import DynamicCache

        from subterra.lexicon import load_lexicon, whole_runs
        from subterra.student import load_compiled

        self.torch, self.np = torch, np
        self.tokenizer, self.model = load_compiled(model_dir)
        self.codec = Codec(self.tokenizer, wf, load_lexicon(model_dir), whole_runs(model_dir), rules.courtesy_values,
                           rules.typed_values, rules.function_words)
        self.today = today  # relative dates ("next Friday") are read from this day (None: the real today)
        self.wf = wf
        self.max_say = max_say_tokens
        self.cache = DynamicCache()
        self.position = 0
        self.logits = None
        vocab = self.model.get_output_embeddings().weight.shape[0]
        self.max_draft = max_draft
        self.forwards = 0  # the model's forwards so far (candidate scoring aside)
        self.penalties = penalties(vocab, self.codec.banned_in_say, self.codec.masks)
        self._buffer: list[int] = list(self.codec.system(wf.assistant))
        self.ended = False
        self.held: dict[str, str] = {}  # the values captured so far (see fill_form)
        self.at: str | None = None  # the step the conversation is at
        self.edge_slots = rules.edge_slots

    @property
    def length(self) -> int:
        """The conversation's tokens so far, the system prompt's included (fed or still to feed)."""
        return self.position + len(self._buffer)

    def _flush(self, predictions: int = 1):
        """Feed the buffered tokens; the predictions after the last ``predictions`` of them."""
        if not self._buffer:
            return None
        torch = self.torch
        ids = torch.tensor([self._buffer], device=self.model.device)
        with torch.inference_mode():
            out = self.model(input_ids=ids, past_key_values=self.cache, use_cache=True, logits_to_keep=predictions)
        self.forwards += 1
        self.cache = out.past_key_values
        rows = out.logits[0, -predictions:, :].float().cpu().numpy()
        self.logits = rows[-1]
        self.position += len(self._buffer)
        self._buffer = []
        return rows

    def _drafted(self, token: int, draft: list[int], program, action):
        """Feed ``token`` (chosen, already sent) and ``draft`` in one forward; send the program the
        drafted tokens greedy decoding picks, in order; cut the cache back after the last kept.
        Returns the program's next action."""
        start = self.length
        self._buffer += [token, *draft]
        predicted = self._flush(predictions=len(draft) + 1)  # after token, d1 .. dk
        kept = 0
        try:
            for j, drafted in enumerate(draft):
                if not isinstance(action, Choice) or greedy(action, predicted[j], self.penalties) != drafted:
                    break
                kept += 1
                action = program.send(drafted)
        finally:  # the program may end on a kept token: the cache holds what was kept, whatever happens
            self.cache.crop(-(len(draft) - kept))  # transformers 5: a negative count removes that many tokens
            self.position, self.logits = start + 1 + kept, predicted[kept]
        return action

    def respond(self, text: str) -> Form:
        """The model's form after the user's message ``text``, its ``say`` filled in as the user reads it."""
        self._buffer.extend(self.codec.user(text))
        program = fill_form(self.codec, text, self.max_say, TurnCounter(), self.held, today=self.today, at=self.at,
                            edge_slots=self.edge_slots)
        value = None
        try:
            action = next(program)
            while True:
                if isinstance(action, Score):
                    self._flush()
                    past = [(layer.keys, layer.values) for layer in self.cache.layers]
                    key = score_candidates(self.model, [past], self.position, self.logits, action.candidates, action.counted)
                    action = program.send(key)
                    continue
                if isinstance(action, Choice):
                    self._flush()
                    value = greedy(action, self.logits, self.penalties)
                    draft = action.follow(value, self.max_draft) if action.follow is not None and self.max_draft else []
                    action = program.send(value)
                    if draft and isinstance(action, Choice):
                        action = self._drafted(value, draft, program, action)
                    else:
                        self._buffer.append(value)
                else:
                    self._buffer.append(action[1])
                    action = next(program)
        except StopIteration as stop:
            form, _raw, _valid = stop.value
        self.held.update(form.slots)
        self.at = form.node
        node = self.wf.nodes.get(form.node)
        self.ended = bool(node and node.is_terminal)
        return Form(form.node, form.slots, user_say(form.say, self.held, node.say if node else ())[0])
