"""The chat format and the form as token ids: what every row of a batch feeds and chooses among.

The form's fixed structure is cut where any tokenizer cuts (a letter meeting punctuation, before a
space), so a pretrained byte-level BPE sees the very tokens it was trained on; ``Codec`` holds each
piece as token ids, the node ids and slot names to choose among, the tokens that may end or open a
``say``, and a slot's allowed values as token sequences (``value_candidates``: the copy constraint
of ``subterra.runtime.candidates``). ``ReadingRules`` are how people's messages are read.
"""

from __future__ import annotations

import difflib
import functools
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

from subterra.drafts import SayDrafts
from subterra.runtime.cues import cued_elsewhere, cued_for, slot_cues
from subterra.lexicon import NAME_WORDS, frame_words, inflected, words
from subterra.forms import (  # the form's fixed structure, cut where every tokenizer cuts
    FIRST_KEY, FORM_CLOSE, FORM_HEAD, KEY_END, NEXT_KEY, NO_SLOTS, NODE_END, SAY_HEAD, SLOTS_KEY, VALUE_HEAD, VALUE_LAST,
    VALUE_MORE,
)
from subterra.runtime.candidates import (
    CHOSEN_TYPES, capitalised_values, code_shaped, code_spans, coded, courtesy_only, declared_whole, fits_type, named_choices, said_values, value_spans,
    word_spans, words_apart,
    written_as_names,
)

if TYPE_CHECKING:
    from subterra.workflow import Workflow

END = "<|im_end|>"


@dataclass(frozen=True)
class ReadingRules:
    """How the runtime reads people's messages: each rule chosen on the validation sets
    (``python -m bench.validate``), the one source of their defaults (eval, chat, serving)."""

    courtesy_values: bool = False  # may a span of only greetings and thanks ("hi", "good morning") be a value?
    typed_values: bool = True  # numbers and dates in people's words ("two of us", "next Friday") offered normalised
    edge_slots: bool = True  # the slots the chosen move collects are filled first ("Sept 21" is the date asked for)
    function_words: bool = True  # English frame words ("next month", "pls") never start or end a copied value
    inflected_words: bool = True  # a procedure word's plural or singular is one too ("flights" where "flight" is)
    moves_need_values: bool = True  # a move that collects a slot needs a value for it in the message (a bare "hi" stays)
    moves_on_the_graph: bool = True  # a move goes only to a step the procedure can reach from the current one
    only_asked_values: bool = True  # the form holds only what its move collects, or a held value it corrects
    restated_values: bool = True  # ... a held value said again, and no other for its slot, corrects nothing
    answers_fill: bool = True  # a number or date the step asks for is held when the move may collect it ("just 1 bag")
    answers_move_on: bool = True  # a number or date the step asks for, not yet held, is an answer: the step is not kept
    corrections_stay: bool = True  # ... not in a message putting a held value right ("not latte, cappuccino" in a loop)
    answers_pick_moves: bool = True  # ... and the form moves along a way that collects it ("Sept 21" is no handover)
    values_alone_move_on: bool = True  # a message that is little but a value shaped like the asked slot's is an answer ("warsaw")
    codes_among_words: bool = True  # ... and one code among any words for a slot of codes only ("ok got it, 448210")
    codes_whole: bool = True  # a slot of codes only (each declared value has a digit or "@") is offered only codes
    # with no more plain words than its values have ("final answer 650117": 650117; "it's x@y.com": x@y.com)
    out_of_range_answers: bool = True  # a count beyond the asked slot's range answers the step too ("about 25 of us")
    values_carry_on: bool = True  # a message answering several steps' questions moves past them all ("2 tickets Chicago to Havana")
    spans_once: bool = True  # a span the form holds for one text slot is not offered to another
    held_steps_pass: bool = True  # ... and past a step whose question the conversation holds the answer to (outside loops)
    carry_into_branches: bool = True  # ... and into the branch a decision's words point at, after one step answered
    values_held_ahead: bool = True  # a count, a date or a named choice a later step asks for is held when said ("one ticket")
    first_names_answer: bool = True  # a first message naming the start's value as a name ("get me to Cape Town") answers it
    first_message_answers: bool = True  # the rules above read a first message as an answer to the start step's question
    branch_words: bool = True  # a message saying words of one branch only ("lost") moves along that branch
    stemmed_words: bool = True  # ... compared by their stems ("recordings" says the "recording" branch's word)
    negated_words: bool = True  # ... a word said under a "not" points only where lines negate it; a negated yes word is a no
    yes_no_words: bool = True  # ... a yes or a no, however said ("yep", "nah"), is such a word when one branch's lines say it
    other_answers: bool = True  # ... and of two branches, where one's lines say a yes and neither's a no, a no is the other's
    # (and the other way round): "nah" where only "Yes, it says accepted" is said
    done_words: bool = True  # ... and so is a saying that there is nothing more ("thats all ta", "nothing else")
    questions_point: bool = True  # ... not a question about a branch whose lines never ask one: it keeps the step
    questions_choose: bool = True  # ... and a question pointing at a branch whose lines ask one too chooses it ("is
    # there an actual human I could speak with?" where a line asks "Can I just talk to a real person?"): no step kept
    carried_reading: bool = True  # a decision a message's answers carry it to is read by the reader too ("my name is
    # Ayesha Raza, my camera is just black"), not only by its branch words
    branch_over_lower_names: bool = True  # ... also beside a lower-case word where names are capitalised ("an actual human")
    names_by_case: bool = True  # a slot of proper names: a name capitalised mid-sentence leaves out lower-case spans
    cased_messages: bool = True  # ... and so does a message starting with a capital ("Sorry, lost you there.")
    names_ahead_capitalised: bool = True  # ... and one the step does not ask for is given only capitalised ("extra" is none)
    named_choices: bool = True  # an enum slot is offered only the declared values the message names, when it names any
    ahead_choices_named: bool = True  # a choice only the next step asks for is held only when the message names a value
    said_values: bool = True  # a declared value said word for word is offered whole, frame words and all ("in 10 minutes")
    typo_words: bool = True  # a word one slip away from one branch word or enum value's word is read as it ("busines")
    declared_values_whole: bool = True  # ... and no longer span holding it, nor an aside in brackets ("Paris CDG", "barcelona (BCN)")
    slot_cues: bool = True  # a span right after a word training's lines put before another slot's values only is not this
    # slot's ("Chicago to Havana": "to" is the destination's, so Havana is no origin)
    counts_as_said: bool = True  # a number slot is offered only counts: never a date's day ("6 September"), nor a span
    # of time in a unit the slot does not count ("3 hours flying", "one sec" are no party size)
    say_from_lines: bool = True  # the say is the chosen step's own line (the workflow's), scored whole, never another step's
    rephrase_stays: bool = True  # ... opened by an off-script reply ("Let me rephrase.") only when it asks its step again
    # where no branch word points, a pretrained model reads which branch a decision's message takes
    # (``runtime.branch_reader``: "an awful echo on my calls" is the audio branch): a base model's name
    # (``subterra.base_models``) or folder; "" for none
    branch_reader: str = "smollm2-135m"
    reader_margin: float = 2.0  # ... only when the branch is likelier than every other branch by this many nats
    reader_nowhere_margin: float = 3.0  # ... and than no branch at all by this many
    reader_direct_weight: float = 0.5  # ... its likelihood plus this times its direct reading (what the message means)
    # an enum the step asks for, said in none of its declared values' words, is read by the same model
    # ("gets really hot on the wrist" is an overheating): the value whose two readings (``BranchReader.choice``)
    # add up to this many nats at least, and pass every other value's by as many; 0 for no such reading
    choice_margin: float = 2.0


# a form with no reading rule of its own (the copy constraint and the held values only)
NO_RULES = ReadingRules(
    inflected_words=False, edge_slots=False, moves_need_values=False, moves_on_the_graph=False, only_asked_values=False, restated_values=False,
    answers_fill=False, answers_move_on=False, corrections_stay=False, answers_pick_moves=False,
    values_alone_move_on=False, codes_among_words=False, codes_whole=False, out_of_range_answers=False, values_carry_on=False, spans_once=False,
    held_steps_pass=False, carry_into_branches=False, values_held_ahead=False, first_names_answer=False,
    first_message_answers=False, branch_words=False, stemmed_words=False, negated_words=False, yes_no_words=False, other_answers=False, done_words=False,
    questions_point=False, questions_choose=False, carried_reading=False, branch_over_lower_names=False, names_by_case=False, cased_messages=False,
    names_ahead_capitalised=False, named_choices=False, ahead_choices_named=False, typo_words=False, said_values=False,
    declared_values_whole=False, slot_cues=False, counts_as_said=False, say_from_lines=False, rephrase_stays=False, branch_reader="", choice_margin=0.0)


class Codec:
    """Token-level view of the chat format, shared by every row of a batch."""

    def __init__(self, tokenizer, wf: Workflow, lexicon: frozenset[str] = frozenset(), runs_only: bool = True,
                 rules: ReadingRules = ReadingRules()):
        self.tok = tokenizer
        self.wf = wf
        # English frame words: never a whole value ("anyone" in "Hello, anyone there?"), and they cut runs
        # too ("Seoul next month": "Seoul")
        frame = frame_words(wf) if rules.function_words else frozenset()
        if lexicon and rules.inflected_words:
            lexicon = inflected(lexicon, wf)
        lexicon = lexicon | frame if lexicon else lexicon
        self._no_value = frame | NAME_WORDS if frame else frozenset()  # nor frame words and name joiners ("of us")
        self.lexicon = lexicon
        self.runs_only = runs_only
        self.courtesy_values = rules.courtesy_values  # may a span of only greetings and thanks ("hi", "good morning") be a value?
        self.typed_values = rules.typed_values  # offer numbers and dates said in people's words, normalised (subterra.typed_values)
        self.names_by_case = rules.names_by_case  # a name written capitalised leaves out the lower-case spans
        self.cased_messages = rules.cased_messages  # ... and a message starting with a capital
        self.named_choices = rules.named_choices  # an enum slot is offered the values the message names, when it names any
        self.yes_no_words = rules.yes_no_words  # a yes or a no is a branch word
        self.other_answers = rules.other_answers  # ... and of two branches, the one whose lines say neither
        self.done_words = rules.done_words  # ... and "that's all" a word too
        self.stemmed_words = rules.stemmed_words  # branch words compared by their stems
        self.negated_words = rules.negated_words  # ... and a word under a negation as a word of its own
        self.said_values = rules.said_values  # a declared value said word for word is offered whole
        self.typo_words = rules.typo_words  # branch words and enum values read through a slip of the keyboard
        self.declared_values_whole = rules.declared_values_whole  # ... and no longer span holding it
        self.cues = slot_cues(wf) if rules.slot_cues else {}  # words before one slot's values only ("to" Havana)
        self.codes_whole = rules.codes_whole  # a slot of codes is offered only spans shaped as its codes
        self.counts_as_said = rules.counts_as_said  # a number slot is offered only what reads as a count of its kind
        self._reader = (rules.branch_reader, rules.reader_margin, rules.reader_nowhere_margin,
                        rules.reader_direct_weight)  # which pretrained model reads branches, if any, and how
        self.choice_margin = rules.choice_margin  # ... and enum values said in other words
        self._spans_of: tuple[str | None, list[str]] = (None, [])
        self._said_of: tuple[str | None, list[str]] = (None, [])
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
        self._say_lines: dict[tuple, dict[str, list[int]]] = {}

    def encode(self, text: str) -> list[int]:
        return list(self._encoded(text))

    def say_lines(self, node: str, slots: tuple[str, ...] = (), asks_again: bool = True) -> dict[str, list[int]]:
        """The says a model is taught at ``node`` (templates): each of the step's own lines, opened
        the ways the training's teacher opens one (``teacher.say_openings``; ``slots``: the form's,
        which a correction's opening may name; an off-script reply's opening only when the say
        ``asks_again``), as a form holds them: from the say's opening token through the form's close,
        tokenized as in training."""
        import json

        from subterra.teacher import opened, say_openings

        known = self._say_lines.get((node, slots, asks_again))
        if known is not None:  # every row of a batch asks again at the same step
            return known
        head = self.say_head
        lines = self._say_lines[(node, slots, asks_again)] = {}
        for opening in say_openings(slots, asks_again):
            for line in self.wf.nodes[node].say:
                text = opened(opening, line)
                ids = self.encode(SAY_HEAD + json.dumps(text, ensure_ascii=False)[1:-1] + FORM_CLOSE)
                if ids[: len(head)] == head:
                    lines[text] = ids[len(head):]
        return lines

    @functools.cached_property
    def _encoded(self) -> Callable[[str], tuple[int, ...]]:
        """The tokenizer, remembering: the rows of a batch encode the same spans over and over."""
        tok = self.tok
        return functools.lru_cache(maxsize=1 << 16)(lambda text: tuple(tok(text, add_special_tokens=False)["input_ids"]))

    @functools.cached_property
    def branch_words(self) -> dict[str, dict[str, frozenset[str]]]:
        """Per decision step, the words said for one of its branches only (``runtime.branch_words``)."""
        from subterra.lexicon import FUNCTION_WORDS, NAME_WORDS
        from subterra.runtime.branch_words import branch_words

        return branch_words(self.wf, FUNCTION_WORDS | NAME_WORDS, self.yes_no_words, self.stemmed_words,
                            self.negated_words, self.other_answers, self.done_words)

    @functools.cached_property
    def reader(self):
        """The pretrained branch reader (``runtime.branch_reader``), loaded on first use; None without one."""
        name, margin, nowhere_margin, direct_weight = self._reader
        if not name:
            return None
        from subterra.runtime.branch_reader import load_reader

        return load_reader(name, self.wf, margin, nowhere_margin=nowhere_margin, direct_weight=direct_weight)

    def read_choice(self, step: str, slot: str, message: str) -> str | None:
        """The declared value of the enum ``slot`` the reader reads ``message`` (at ``step``) as giving,
        if one passes ``choice_margin`` and every other value by it; None without a reader or margin."""
        if not self._reader[0] or self.choice_margin <= 0 or not message.strip():
            return None
        direct, channel = self.reader.choice(step, slot, message)
        both = {v: direct[v] + channel[v] for v in direct}
        best, second = sorted(both, key=both.get, reverse=True)[:2]
        return best if both[best] >= self.choice_margin and both[best] - both[second] >= self.choice_margin else None

    def read_branch(self, step: str, message: str, before: tuple[str, ...] = ()) -> str | None:
        """The branch of the word decision ``step`` the reader reads ``message`` as taking (after
        answering the steps ``before``), if any; None without a reader or at any other step."""
        from subterra.runtime.branch_reader import word_decision

        if not self._reader[0] or not word_decision(self.wf, step):
            return None
        return self.reader.read(step, message, before).target

    @functools.cached_property
    def _spelled_words(self) -> tuple[frozenset[str], tuple[str, ...]]:
        """(words read as they are, words a slip is read as): the lexicon and the targets; the targets are
        the words of five letters or more that training's user lines and the branches' ``when`` say at
        decisions (``branch_words.answer_words``), and the enum values' words."""
        from subterra.runtime.branch_words import answer_words

        decisions = [n for n in self.wf.nodes if len(self.wf.out_edges(n)) > 1]
        targets = {w for w in answer_words(self.wf, decisions) if w.isalpha()}
        targets |= {w for v in self._enum_values for w in words(str(v))}
        targets = {w for w in targets if len(w) >= MIN_SLIP_LENGTH}
        return frozenset(self.lexicon) | targets, tuple(sorted(targets))

    def read_spelled(self, message: str) -> str:
        """``message`` with each word of five letters or more that is no known word but one slip away from
        exactly one branch word or enum value's word (``typo_words``) read as that word ("busines" ->
        "business", "capuccino" -> "cappuccino"); the message itself when the rule is off. Values are
        still copied from the message as written; this reading only points at branches and names choices."""
        if not self.typo_words:
            return message
        return _respelled(message, *self._spelled_words)

    def said_first(self, slot: str, candidates: tuple[dict, dict | None], message: str,
                   held_value: str | None) -> tuple[dict, dict | None]:
        """``declared_values_whole``: of a slot whose declared values share no word (``words_apart``),
        only the declared values ``message`` says, when it says one the slot does not hold ("ok back.
        new york, JFK": "new york"); every candidate otherwise ("not Lisbon, Porto" with Lisbon held)."""
        spec = self.wf.slots[slot]
        if not self.declared_values_whole or spec.type != "string" or not spec.values \
                or not words_apart(tuple(map(str, spec.values))):
            return candidates
        values, counted = candidates
        held = (held_value or "").casefold()
        said = [v for v in said_values(spec.values, message) if v in values and v.casefold() != held]
        if not said:
            return candidates
        return {v: values[v] for v in said}, ({v: counted[v] for v in said} if counted is not None else None)

    def _said_anywhere(self, message: str) -> list[str]:
        """The declared text values of any slot that ``message`` says word for word (``said_values``)."""
        if self._said_of[0] != message:
            declared = tuple(str(v) for spec in self.wf.slots.values() if spec.type == "string" for v in spec.values or ())
            self._said_of = (message, said_values(declared, message))
        return self._said_of[1]

    @functools.cached_property
    def _enum_values(self) -> tuple[str, ...]:
        return tuple(v for spec in self.wf.slots.values() if spec.type == "enum" for v in spec.values)

    def _names_choices(self, texts) -> bool:
        """Does any of ``texts`` name a declared value of an enum slot (``named_choices``)?"""
        return any(named_choices(self._enum_values, str(t)) for t in texts)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids))

    def system(self, text: str) -> list[int]:
        return self.encode(f"<|im_start|>system\n{text}<|im_end|>\n")

    def user(self, text: str) -> list[int]:
        return self.encode(f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n")

    def value_candidates(self, slot: str, message: str, today=None) -> tuple[dict[str, list[int]], dict[str, list[int]] | None]:
        """Allowed values of ``slot`` after ``message``, and which of their tokens are decisions.

        Enum and boolean slots choose among their values (every token counts); with the
        ``named_choices`` rule, an enum among those the message names when it names any
        (``named_choices``: "cappuccino, please" offers only cappuccino), and a span naming an enum's
        value is no text slot's value unless its declared values name one too. Free slots copy a
        span of whole words of the message: what counts is the span's first token and each token
        that starts a word (go on or stop); the rest of a word follows from the message. Integer and
        date slots are also offered what the message says in people's words, normalised ("two of
        us" -> ``2``, "next Friday" -> the date from ``today``; every token of those counts). With the
        ``said_values`` rule, a span saying one of the slot's declared values word for word is offered
        whole, whatever frame words it holds ("in 10 minutes").
        """
        spec = self.wf.slots[slot]
        if spec.type in CHOSEN_TYPES:
            values = spec.values if spec.type == "enum" else ("yes", "no")
            if spec.type == "enum" and self.named_choices:
                values = named_choices(tuple(values), self.read_spelled(message)) or values
            return {v: self.encode(v) for v in values}, None
        candidates, counted = {}, {}
        if self._spans_of[0] != message:  # every slot of a turn reads the same message
            self._spans_of = (message, value_spans(message, self.lexicon, self.runs_only))
        spans = [v for v in self._spans_of[1] if fits_type(spec, v)]
        if not spans and spec.type != "string":  # a typed value inside a longer run ("2 adults")
            spans = [v for v in word_spans(message) if fits_type(spec, v)]
        if not self.courtesy_values:
            spans = [v for v in spans if not courtesy_only(v)]
        if self._no_value:
            spans = [v for v in spans if not (said := set(words(v))) or not said <= self._no_value]
        if self.named_choices and spec.type == "string" and not self._names_choices(spec.values):
            spans = [v for v in spans if not self._names_choices((v,))]  # "large cup" is no name
        if self.names_by_case and spec.type == "string" and capitalised_values(spec):
            spans = written_as_names(message, spans, self.cased_messages)  # "my mother, Marisol Vega": not "mother"
        wording = (spec.description or "") if self.counts_as_said and spec.type == "integer" else None
        if wording is not None:  # "6 September", "3 hours flying": no party size
            from subterra.typed_values import parsed_values

            said = parsed_values(spec.type, message, today, spec.min, spec.max, wording)
            spans = [v for v in spans if not v.isdigit() or str(int(v)) in said]
        if self.said_values and spec.values:  # "in 10 minutes", though "in" is a frame word
            spans = [v for v in said_values(spec.values, message) if v not in spans and fits_type(spec, v)] + spans
        if self.declared_values_whole and spec.type == "string":
            apart = bool(spec.values) and words_apart(tuple(map(str, spec.values)))
            spans = declared_whole(spans, said_values(spec.values, message) if apart else [], message,
                                   self._said_anywhere(message))
        if self.codes_whole and spec.type == "string" and coded(spec):  # "final answer 650117": 650117
            spans = list(dict.fromkeys([v for v in spans if code_shaped(spec, v)]
                                       + [v for v in code_spans(message) if code_shaped(spec, v) and fits_type(spec, v)]))
        if self.cues and spec.type == "string":
            spans = [v for v in spans if not cued_elsewhere(self.cues, message, v, slot)]
            cued = [v for v in spans if cued_for(self.cues, message, v, slot)]
            spans = cued or spans  # "to Havana" names the destination: no other span is it
        for span in spans:
            ids = self.encode(span)
            candidates[span] = ids
            counted[span] = [0] + [j for j in range(1, len(ids)) if self.starts_word[ids[j]]]
        if self.typed_values and spec.type in ("integer", "date"):
            from subterra.typed_values import parsed_values

            for value in parsed_values(spec.type, message, today, spec.min, spec.max, wording):
                if value not in candidates and fits_type(spec, value):
                    ids = self.encode(value)
                    candidates[value] = ids
                    counted[value] = list(range(len(ids)))
        return candidates, counted


MIN_SLIP_LENGTH = 5  # shorter words are too close to too many others ("whole", "while") to read through a slip
SLIP_RATIO = 0.85  # difflib's similarity at least: "busines"/"business" 0.93, "expresso"/"espresso" 0.88,
# never "cancer"/"cancel" (0.83) nor "economic"/"economy" (0.80)


@functools.lru_cache(maxsize=1 << 14)  # every row of a batch, and every rule of a turn, reads the same message
def _respelled(message: str, known: frozenset[str], targets: tuple[str, ...]) -> str:
    """``message`` with each unknown word of ``MIN_SLIP_LENGTH`` letters or more read as the one target
    it is a slip of (``Codec.read_spelled``)."""
    def fixed(m: re.Match) -> str:
        word = m.group().casefold()
        if len(word) < MIN_SLIP_LENGTH or word in known:
            return m.group()
        close = difflib.get_close_matches(word, targets, n=2, cutoff=SLIP_RATIO)
        return close[0] if len(close) == 1 else m.group()

    return re.sub(r"[^\W\d_]+", fixed, message)
