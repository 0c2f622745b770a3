"""The programs of one assistant turn: a prefilled form (``fill_form``) or a freely written one
(``free_form``).

``fill_form`` forces the form's fixed structure — ``{"node": "``, ``", "slots": {``, ``"say": "``
— so the model generates values only, and constrains three of them:

* the node id is one of the workflow's node ids (not its successors: where to go is the model's
  call);
* a slot name is one of the workflow's slot names (those ``subterra.runtime.offers`` offers);
* a slot value is a verbatim span of the user's last message (whole words), an enum value, or
  yes/no for a boolean — the copy constraint: a value can be chosen but never misspelt.

Decoding is greedy inside those constraints (a trie over the allowed token sequences; values are
scored whole) and free for ``say`` (a template: ``{slot}`` for a value the conversation holds,
filled in by ``forms.user_say``, never shown with a placeholder the conversation does not hold;
its first token may be the opening quote merged with the say's start, as a byte-level BPE merges
' "{'). ``free_form`` is the other way to fill a form: the model writes the whole turn itself.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from typing import Callable

from subterra.forms import FORM_CLOSE, Form
from subterra.lexicon import FUNCTION_WORDS, words
from subterra.phrasing import placeholders
from subterra.runtime.actions import Choice, Score, force
from subterra.runtime.branch_words import answer_words, asked_with_question, off_script_words, pointed_branch
from subterra.runtime.candidates import CHOSEN_TYPES, COURTESY_WORDS, coded, courtesy_only, fits_type, is_code, named_choices, shaped_like, value_runs
from subterra.runtime.encoding import END, NO_RULES, Codec, ReadingRules
from subterra.runtime.offers import offered_keys, offered_values
from subterra.runtime.scoring import choose
from subterra.workflow import reachable


@dataclass
class TurnRecord:
    """One played assistant turn as a transcript keeps it."""

    node: str
    slots: dict[str, str]
    say: str
    raw: str  # the form text as generated
    valid: bool
    tokens_in: int
    tokens_out: int
    latency_s: float = 0.0


class TurnCounter:
    """Counts forced (input) and chosen (output) tokens of one turn."""

    def __init__(self):
        self.forced = 0
        self.chosen = 0


def fill_form(codec: Codec, last_user: str, max_say_tokens: int, counter: TurnCounter,
              held: dict[str, str] | None = None, corrections_named: bool = True, today=None,
              at: str | None = None, rules: ReadingRules = NO_RULES,
              on_say: Callable[[str, dict], None] | None = None):
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

    ``rules`` (``ReadingRules``; by default none) read the message:

    ``edge_slots``: the step the form moves to says which slots the move collects
    (``Workflow.collected_between`` from ``at``, the conversation's step before this turn): when the
    message offers a value for any of them, the form fills those first, every one the message
    offers a value for, and only then may add others. "Sept 21" after "when do you fly?", with the
    model moving on to the party size, is a date for ``departure_date``, never a second ``origin``.

    ``moves_need_values``: a move that surely collects a slot (``Workflow.collected_between``) is
    offered only when the message offers a value for it or the conversation holds one: a bare "hi"
    can stay at the greeting, never move on to the next question as if it had named a city.

    ``answers_move_on``: a message that gives a number or a date the step asks for, and the
    conversation does not hold yet, is an answer: the form does not keep the step ("the 2nd of
    July" after "when do you fly?" moves on), unless the step has a move back to itself.

    ``only_asked_values``: the form holds only the slots its move may collect (along any of its
    shortest ways: paying with miles holds the miles number), those its step asks for, and held ones whose
    value the message names (a correction): "can I just speak to someone, I hate typing" hands
    over holding nothing, never a name "hate typing".

    ``values_alone_move_on``: with ``answers_move_on``, a message that is little but a value for a
    text slot the step asks for, shaped like the slot's declared values, is such an answer too
    ("warsaw" after "which city are you leaving from?"); with ``first_message_answers`` these read a
    conversation's first message as an answer to the start step's question ("hi, CQ9H2F").

    ``answers_pick_moves``: with ``answers_move_on``, such an answer also decides where the form
    goes: only along a way that collects it ("Sept 21" after "when do you fly?" is never a handover).

    ``values_carry_on``: a message answering the questions of two steps or more moves past them all
    (``_carried``: "2 tickets Chicago to Havana on August 20th" at the greeting goes to the cabin).
    ``spans_once``: a span the form holds for one slot is not offered to another text slot ("Havana"
    the destination, "Chicago" the origin).

    ``say_from_lines``: the say is one the model was taught at the chosen step — one of the step's own
    lines whose placeholders the form holds, opened as the teacher opens them ("Thanks. ..."), decoded
    greedily among them; free text only at a step with no such line. ``rephrase_stays``: an off-script
    reply's opening ("Let me rephrase.") only on a say that asks its step again.

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

    available = offered_values(codec, last_user, held, today)
    read = _read_choices(codec, available, at, last_user)
    available.update({s: _only(available[s], v) for s, v in read.items()})
    yield from forced(codec.form_head)
    node = yield from chosen(moves_offered(codec, available, held, at, rules, last_user, frozenset(read)))
    yield from forced(codec.slots_key)
    slots: dict[str, str] = {}
    keys = offered_keys(codec, available, last_user, held) if corrections_named else list(available)
    named = _named_enums(codec.wf, last_user) | set(read)
    if rules.only_asked_values:
        wf = codec.wf
        step_asks = {s for e in wf.out_edges(node) for s in e.collect} | set(wf.nodes[node].collect)
        if rules.ahead_choices_named:  # a choice the next step asks for, only when the message names one ("switch
            step_asks = {s for s in step_asks if wf.slots[s].type != "enum" or s in named}  # plans pls" holds none)
        named_held = _corrected(last_user, held or {}, available) if rules.restated_values else _named(last_user, held or {})
        asked_or_named = set(wf.collected_between(at, node, surely=False)) | step_asks | named_held
        keys = [s for s in keys if s in asked_or_named]
        if rules.names_ahead_capitalised:  # nor, for a step further on, a name written lower-case ("squeeze")
            moved = set(wf.collected_between(at, node, surely=False)) | set(_asked(wf, at if at is not None else wf.start))
            keys = [s for s in keys if s in moved or not _names_only_lower(wf.slots[s], available[s][0])]
    asked = [s for s in codec.wf.collected_between(at, node) if s in keys] if rules.edge_slots else []
    if rules.answers_fill and at is not None:  # what the message answers of its step, where the move may collect it
        may = set(codec.wf.collected_between(at, node, surely=False))  # ("just 1 bag": the bag fare's count)
        asked += [s for s in _answered(codec, available, held or {}, at, named) if s in may and s in keys and s not in asked]
    ahead = _held_ahead(codec.wf, at, node, held or {}, available, last_user, named) if rules.values_held_ahead else {}
    keys += [s for s in ahead if s not in keys]
    asked += [s for s in ahead if s not in asked]  # held too, after what the move collects
    if asked:
        yield from forced(codec.first_key)
        more = True
    else:
        opening = {"none": codec.no_slots, **({"some": codec.first_key} if keys else {})}
        more = (yield from chosen(opening)) == "some"
    while more:
        unused = [s for s in keys if s not in slots]
        due = [s for s in asked if s not in slots]
        key = yield from chosen({s: codec.key_candidates[s] for s in (due or unused)})
        yield from forced(codec.value_head)
        values, counted = available[key]
        if key in ahead:  # a value held for a step further on: only one the message surely gives
            values = {v: ids for v, ids in values.items() if v in ahead[key]}
        if rules.spans_once and codec.wf.slots[key].type == "string":  # "Chicago to Havana": one city each
            values = {v: ids for v, ids in values.items() if v not in slots.values()} or values
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
    holding = {**(held or {}), **slots}
    again = not rules.rephrase_stays or node == at  # "Let me rephrase." before the same question only
    lines = {line: ids for line, ids in codec.say_lines(node, corrected_slots(slots, held), again).items()
             if all(p in holding for p in placeholders(line))} if rules.say_from_lines else {}
    if lines:
        say = yield from _tracked(_taught_say(codec, lines, slots, on_say), raw, counter)
        yield from forced(codec.end_of_turn)
        return Form(node, slots, say), codec.decode(raw).split(END)[0], True
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


def corrected_slots(slots: dict[str, str], held: dict[str, str] | None) -> tuple[str, ...]:
    """The slots of a form that put a held value right: only these may open the say with a
    correction's words ("Thanks, updated to Oslo."), never a value given for the first time."""
    return tuple(s for s in slots if s in (held or {}) and held[s] != slots[s])


def _taught_say(codec: Codec, lines: dict[str, list[int]], slots: dict, on_say):
    """Decode one of ``lines`` (say texts and their tokens through the form's close) greedily, a
    token at a time: the model picks wherever the lines part, the rest is forced; ``on_say`` hears
    the say so far after every token, as a freely written say's listener does."""
    live, written, closed = list(lines), [], False
    while True:
        depth = len(written)
        options = sorted({lines[k][depth] for k in live})
        if len(options) > 1:
            token = yield Choice(options)
        else:
            token = options[0]
            yield ("force", token)
        written.append(token)
        live = [k for k in live if lines[k][depth] == token]
        if len(live) == 1 and len(lines[live[0]]) == len(written):
            return live[0]
        closed = closed or token in codec.say_ends
        if on_say is not None and not closed:
            on_say(codec.say_openers.get(written[0], "") + codec.decode(written[1:]), slots)


def _named(message: str, held: dict[str, str]) -> set[str]:
    """The held slots whose value ``message`` says as whole words, in any case ("not Tokyo")."""
    return {s for s, v in held.items() if v and re.search(rf"(?<!\w){re.escape(v)}(?!\w)", message, re.I)}


def _asks_about(wf, at: str, target: str, message: str, held: dict[str, str]) -> bool:
    """``questions_point``: is ``message`` a question about the branch of ``at`` to ``target`` rather
    than a choice of it: a question, no request ("can I get business?") nor correction, about a branch
    whose lines never ask one ("is business a lot more?"; "what about economy?" may choose economy,
    whose lines ask "Can I see the economy prices?")."""
    return "?" in message and not _named(message, held) and not _REQUEST.match(message) \
        and not asked_with_question(wf, at, target)


def _corrected(message: str, held: dict[str, str], available: dict) -> set[str]:
    """The held slots a message corrects: it names the held value and offers another ("not 2, 3");
    one saying a held value again and no other ("for 3 people that's steep") corrects nothing."""
    return {s for s in _named(message, held) if any(v != held[s] for v in available.get(s, ({},))[0])}


def moves_offered(codec: Codec, available: dict, held: dict[str, str] | None, at: str | None,
                  rules: ReadingRules, message: str = "", chosen: frozenset[str] = frozenset()) -> dict[str, list[int]]:
    """The node candidates after a message offering ``available`` values: with
    ``moves_need_values``, those whose move from ``at`` has a value for every slot it surely
    collects; with ``answers_move_on``, not ``at`` itself when the message answers its question
    with a number or a date, and with ``answers_pick_moves`` only a move that collects the answer (see
    ``fill_form``); the enum slots in ``chosen`` are named by the message (``_read_choices``). Every node
    when nothing would be left."""
    held = held or {}
    wf = codec.wf
    read = codec.read_spelled(message)  # branch words and enum values through a slip ("busines")
    named = (_named_enums(wf, read) | chosen) if rules.named_choices else set(chosen)
    # what the message gives: with ``named_choices`` an enum only when it names one of its values
    given = {s for s in available if not rules.named_choices or wf.slots[s].type != "enum" or s in named}
    if rules.names_ahead_capitalised:  # a name the step does not ask for is given only written as one ("extra" is none)
        step_asks = set(_asked(wf, at if at is not None else wf.start))
        given = {s for s in given if s in step_asks or not _names_only_lower(wf.slots[s], available[s][0])}
    known = given | set(held)
    moves = {n: ids for n, ids in codec.node_candidates.items()
             if not rules.moves_need_values or all(s in known for s in wf.collected_between(at, n))}
    step = at if at is not None or not rules.first_message_answers else wf.start  # a first message answers the start's question
    unpicked = moves
    corrects = rules.corrections_stay and bool(_corrected(message, held, available))  # "not latte, cappuccino":
    if rules.answers_move_on and step in moves and len(moves) > 1 and not corrects:  # a held value put right, no answer
        onward = wf.out_edges(step)
        answered = _answered(codec, available, held, step, named)
        if not answered and rules.values_alone_move_on:
            answered = _answered_alone(codec, available, held, step, message)
        by_code = []
        if not answered and rules.codes_among_words:  # "ok got it, 448210": the code answers, the words around it
            answered = by_code = _answered_by_code(codec, available, held, step, message)  # give nothing more
        by_name = []
        if not answered and rules.first_names_answer and step == wf.start and not held:  # "can you get me to
            answered = by_name = [s for s in _asked(wf, step) if s in available and wf.slots[s].type == "string"
                                  and _sure(wf.slots[s], available[s][0], message)]  # Cape Town"
        beyond = _beyond_range(wf, step, available, held, message) \
            if rules.out_of_range_answers and not answered and not _named(message, held) else []  # "6 instead of 4": a correction
        if beyond and all(e.target != step for e in onward):  # "about 25 of us" where at most 6 are booked:
            moves.pop(step)  # answered all the same, along a way that does not collect it (the large group's)
        elif answered and all(e.target != step for e in onward):
            moves.pop(step)
            unpicked = dict(moves)  # a held step's question may be passed as well (``held_steps_pass``)
            if rules.answers_pick_moves:
                moves = _collecting(wf, moves, step, answered, given - set(by_name)) or moves  # a name once: not
                if by_name or by_code:  # the next step's city too ("we are thinking of Mexico City": no origin); the carry goes further
                    moves = {n: ids for n, ids in moves.items() if n in {e.target for e in onward}} or moves
    if rules.values_carry_on:  # "2 tickets Chicago to Havana on August 20th": past every step it answers
        moves = _carried(codec, unpicked if rules.held_steps_pass else moves, at, held, available, message, rules) \
            or moves
    offering = {s: v for s, v in available.items() if not _names_only_lower(wf.slots[s], v[0])} \
        if rules.branch_over_lower_names else available  # "Is there an actual human ...?" names no city
    if rules.branch_words and step in moves and not _offers_asked(wf, offering, step, named):
        pointed = pointed_branch(codec.branch_words, step, read, rules.yes_no_words, stems=codec.stemmed_words,
                                 negations=rules.negated_words) or codec.read_branch(step, message)  # or as read
        if pointed is not None:  # that branch, or past it when the move surely collects more (the message said
            reach, branch = reachable(wf, pointed), set(wf.collected_between(step, pointed))  # more); the step itself
            chooses = rules.questions_choose and asked_with_question(wf, step, pointed) and not _off_script(read)
            aside = "?" in message and not chooses or _named(message, held)  # too for a question (not one as the
            # branch's lines ask, unless it says only what off-script lines say: "Are you a real person?") or a correction
            if rules.questions_point and _asks_about(wf, step, pointed, message, held):  # a question about a branch
                pointed, reach = step, set()  # keeps the step ("is business a lot more?" before choosing a cabin)
            stale = {s for s in _asked_again(wf, None) if s not in given}  # "It was refused": no new code given
            moves = {n: ids for n, ids in moves.items() if n == pointed or (n == step and aside)
                     or (n in reach and set(wf.collected_between(step, n)) - branch - stale)}
    if rules.moves_on_the_graph:  # never a step the procedure cannot reach from here ("INV-390554" is no login)
        onward = _onward(wf, at if at is not None else wf.start)
        return {n: ids for n, ids in moves.items() if n in onward} \
            or {n: ids for n, ids in codec.node_candidates.items() if n in onward}
    return moves or codec.node_candidates


# a question that asks for a thing rather than about it ("can I get business?", "could you book the 9:40?")
_REQUEST = re.compile(r"\W*(?:(?:hi|hello|hey|ok|okay|so|um|well|then|and)\W+)*(?:can|could|may)\s+(?:i|we|you)\s+"
                      r"(?:please\s+)?(?:get|have|book|take|go|do|put|switch|move|change|add|order|pay|try)\b", re.I)


def _carried(codec: Codec, moves: dict, at: str | None, held: dict[str, str], available: dict, message: str,
             rules: ReadingRules) -> dict:
    """``values_carry_on``: when the message answers the question of the step and of the step after
    it, and maybe more ("2 tickets Chicago to Havana on August 20th" at the greeting), the moves to
    the furthest step it carries the conversation to. A step is answered when it asks for values the
    conversation does not hold and the message gives every one of them surely (``_sure``), a text
    slot a span of its own (two slots never share "Havana"); with ``held_steps_pass``, a step whose
    values the conversation holds already is passed too, unless it lies on a loop ("one ticket to
    Auckland", then "October 12": the party-size question is passed); a step that asks for nothing
    (a decision) ends the carry, unless the message points at one of its branches (``branch_words``;
    with ``carry_into_branches`` after one answered step already: "my name is Ayesha Raza, my camera
    is just black" goes to the camera's branch; and a branch of the step itself that the message
    points at counts as a step answered). None when the message answers fewer than two steps."""
    wf = codec.wf
    sure = {s: _sure(wf.slots[s], available[s][0], message) for s in available}
    start = at if at is not None else wf.start
    ways: dict[str, tuple[str, ...]] = {start: ()}  # a step reached, with the slots answered on the way
    frontier, levels = [start], []
    corrects = _corrected(message, held, available) if rules.restated_values else _named(message, held)
    if rules.carry_into_branches and rules.branch_words and not corrects:  # a branch the message points at by
        first = pointed_branch(codec.branch_words, start, codec.read_spelled(message), stems=codec.stemmed_words,
                               negations=rules.negated_words) or _read_unless_valued(codec, start, message, available)
        if first is not None and rules.questions_point and _asks_about(wf, start, first, message, held):
            first = None  # (no mere yes or no, no correction, no question about it) is a step answered ("economy, the
            # classic one with 2 bags")
        if first is not None:
            ways[first], frontier, levels = (), [first], [{first: ()}]
    while frontier:
        reached: dict[str, tuple[str, ...]] = {}
        for node in frontier:
            for e in wf.out_edges(node):
                step_slots = wf.edge_slots(e)
                again = _asked_again(wf, node)  # a retry's new code: a held one does not answer it
                asked = [s for s in step_slots if s not in held or s in again]
                if e.target in ways or e.target in reached or not step_slots:
                    continue
                if not asked and not (rules.held_steps_pass and not _on_loop(wf, node)):
                    continue
                if not all(sure.get(s) for s in asked):
                    continue
                carried = ways[node] + tuple(asked)
                if _apart([sure[s] for s in carried if wf.slots[s].type == "string"]):
                    reached[e.target] = carried
        ways.update(reached)
        frontier = list(reached)
        if reached:
            levels.append({n: c for n, c in reached.items() if c})  # answered on the way, not only held
    furthest = levels[-1] if len(levels) >= 2 and levels[-1] else {}
    if rules.branch_words:  # a decision the carry reaches is passed too when the message points at one of its
        last = levels[-1] if levels and (len(levels) >= 2 or rules.carry_into_branches) else {}  # branches
        values = {w for carried in last.values() for s in carried for v in sure[s] for w in words(v)}
        answered = answer_words(wf, [n for n in ways if n not in last]) | COURTESY_WORDS | values \
            if rules.carry_into_branches else frozenset()  # nor a thanks closing an answer, nor the answer's own words
        # ("Okay, mostly from my Android phone. Thank you!": no "phone" of a call cut short)
        pointed = {n: p for n, carried in last.items() if carried  # a value answered on the way, not a branch alone
                   if (p := pointed_branch(codec.branch_words, n, codec.read_spelled(message), rules.yes_no_words, answered,
                                           codec.stemmed_words, rules.negated_words)
                       or (_says_more(message, answered)  # or as read after them, when it says more than the answers
                           and rules.carried_reading and not any(e.collect for e in wf.out_edges(n))  # at a decision told by words
                           and _read_unless_valued(codec, n, message, available, tuple(w for w in ways if w not in last))))
                   and not (rules.carry_into_branches and wf.collected_between(n, p))}  # values: answered, not pointed at
        # ("we fly out of Manchester" is read at no question of dates that one branch answers by a date)
        if rules.carry_into_branches:  # ("..., visa issue"): the branch instead of its decision
            furthest = {n: c for n, c in furthest.items() if n not in pointed}
        furthest = {**furthest, **{p: () for p in pointed.values()}}
    return {n: ids for n, ids in moves.items() if n in furthest}


def _read_unless_valued(codec: Codec, step: str, message: str, available: dict, before: tuple[str, ...] = ()) -> str | None:
    """The branch of ``step`` the reader reads ``message`` as taking (its words or as read), unless
    the message offers a value ``step`` asks for: then the values decide ("Lisbon" at the
    destination's question is no handover to read)."""
    if _offers_asked(codec.wf, available, step, _named_enums(codec.wf, message)):
        return None
    return codec.read_branch(step, message, before)


def _says_more(message: str, answered: frozenset[str]) -> bool:
    """Does ``message`` say a word beyond ``answered`` (the answers' words and values, thanks) and
    English function words? "I'm Ada Moreno." at the greeting says nothing more for a reader to read."""
    return any(w not in answered and w not in FUNCTION_WORDS for w in words(message))


def _asked_again(wf, node: str | None) -> frozenset[str]:
    """The slots ``node`` asks for again after a step before it collected them (a verification's
    retry asks for a new code): the value held is the one that failed, so it answers nothing there.
    With ``node`` None, every such slot of the workflow. Worked out once per workflow."""
    again = wf.__dict__.get("_asked_again")
    if again is None:
        again = wf.__dict__["_asked_again"] = {n: frozenset(
            s for e in wf.out_edges(n) for s in wf.edge_slots(e)
            if any(s in wf.edge_slots(u) and (u.target == n or n in reachable(wf, u.target))
                   for m in wf.nodes if m != n for u in wf.out_edges(m))) for n in wf.nodes}
        again[None] = frozenset().union(*again.values())
    return again[node]


def _onward(wf, at: str) -> frozenset[str]:
    """The steps a conversation at ``at`` can still come to (``at`` itself too). Worked out once per
    workflow."""
    onward = wf.__dict__.setdefault("_onward", {})
    if at not in onward:
        onward[at] = frozenset(reachable(wf, at))
    return onward[at]


def _on_loop(wf, node: str) -> bool:
    """Can the conversation come back to ``node`` (an order's "anything else?")? Worked out once per
    workflow, as ``Workflow.collected_between`` keeps its answers."""
    loops = wf.__dict__.get("_on_loop")
    if loops is None:
        loops = wf.__dict__["_on_loop"] = frozenset(
            n for n in wf.nodes if any(n in reachable(wf, e.target) for e in wf.out_edges(n)))
    return node in loops


def _held_ahead(wf, at: str | None, node: str, held: dict[str, str], available: dict, message: str,
                named: set[str]) -> dict[str, set[str]]:
    """``values_held_ahead``: the values the form holds beyond its move, for steps further on: the
    first count and the first date a step after ``node`` asks for (in the order the steps come,
    outside loops), and every choice it asks for that the message names, each when the message
    gives it surely (``_sure``) and the conversation does not hold it ("one ticket to Auckland" at
    the greeting holds a party of 1). By slot, the values offered."""
    near = set(wf.collected_between(at, node, surely=False)) | set(_asked(wf, node))
    order, seen, queue = [], {node}, [node]
    while queue:
        n = queue.pop(0)
        if _on_loop(wf, n):
            continue
        if n != node:
            order += [s for s in _asked(wf, n) if s not in order]
        for e in wf.out_edges(n):
            if e.target not in seen:
                seen.add(e.target)
                queue.append(e.target)
    out: dict[str, set[str]] = {}
    for kind in ("integer", "date"):
        first = next((s for s in order if wf.slots[s].type == kind), None)
        if first is not None and first not in near and first not in held and first in available:
            out[first] = _sure(wf.slots[first], available[first][0], message)
    for s in order:
        if wf.slots[s].type == "enum" and s in named and s not in near and s not in held and s in available:
            out[s] = _sure(wf.slots[s], available[s][0], message)
    return {s: v for s, v in out.items() if v}


def _sure(spec, offered: dict, message: str) -> set[str]:
    """The values of a slot a message surely gives, to carry a conversation past its step: of a
    slot of names, a name written as one, capitalised where no sentence starts ("... tickets Chicago
    to Havana", never "adults", nor "Quick question, ..."); of another text slot, one of its declared
    values said word for word ("in 10 minutes", never "opening hours"); a number said as a count
    (never the day of a date), a date, a named enum value; never a yes/no."""
    from subterra.runtime.candidates import capitalised_values, is_capitalised, mid_sentence, said_values
    from subterra.typed_values import counts

    if spec.type == "string":
        if not capitalised_values(spec):
            return set(offered) & set(said_values(spec.values, message))
        return {v for v in offered if shaped_like(spec, v) and is_capitalised(v) and mid_sentence(message, v)}
    if spec.type == "integer":
        return set(offered) & set(counts(message))
    if spec.type == "date":
        return set(offered)
    if spec.type == "enum":  # a choice it names, not every choice offered ("yo large americano" names no milk)
        return set(offered) & set(named_choices(tuple(spec.values), message))
    return set()


def _apart(options: list[set[str]], taken: tuple[str, ...] = ()) -> bool:
    """Can each of ``options`` have a span of its own, no two the same or one inside another?"""
    if not options:
        return True
    first, rest = options[0], options[1:]
    return any(_apart(rest, taken + (v,)) for v in first
               if not any(v.casefold() in t.casefold() or t.casefold() in v.casefold() for t in taken))


def _asked(wf, at: str) -> tuple[str, ...]:
    """The slots step ``at`` asks for: its own and its branches'."""
    return tuple(dict.fromkeys(s for e in wf.out_edges(at) for s in wf.edge_slots(e)))


def _names_only_lower(spec, offered: dict) -> bool:
    """Is a slot of proper names (``capitalised_values``) offered no capitalised span?"""
    from subterra.runtime.candidates import capitalised_values, is_capitalised

    return spec.type == "string" and capitalised_values(spec) and not any(is_capitalised(v) for v in offered)


def _offers_asked(wf, available: dict, at: str, named: set[str]) -> bool:
    """Does the message offer a value for a slot ``at`` asks for ("the address is EX2 5DW")? An enum
    or yes/no slot is offered whatever the message says: not an answer by itself, unless the message
    names one of the enum's values (``named``, with ``named_choices``: "a latte, please")."""
    return any(s in available and (wf.slots[s].type not in CHOSEN_TYPES or s in named)
               for e in wf.out_edges(at) for s in wf.edge_slots(e))


def _off_script(message: str) -> bool:
    """Does ``message`` say only words the off-script lines training speaks say (besides English
    function words): "Are you a real person?", "Could you explain that differently?", which the model
    is taught to answer at the step, never to take a branch on ("can a person look at that first?" says more)?"""
    said = {w for w in words(message) if w not in FUNCTION_WORDS}
    return bool(said) and said <= off_script_words()


def _read_choices(codec: Codec, available: dict, at: str | None, message: str) -> dict[str, str]:
    """Per enum slot the step asks for that ``message`` names no declared value of, the value the
    reader reads it as giving, where it reads one (``Codec.read_choice``, ``choice_margin``): "the battery
    dies by lunch" at the fault's question is a battery that drains; never in a greeting or a thanks alone, nor where
    the step's branch words point at a branch that does not collect the slot."""
    wf = codec.wf
    step = at if at is not None else wf.start
    enums = [s for s in _asked(wf, step) if wf.slots[s].type == "enum" and s in available]
    if not enums or courtesy_only(message):  # "Howdy.", "No.": nothing to read a choice in
        return {}
    spelled = codec.read_spelled(message)
    pointed = pointed_branch(codec.branch_words, step, spelled, codec.yes_no_words, stems=codec.stemmed_words,
                             negations=codec.negated_words)
    taken = {s for e in wf.out_edges(step) if e.target == pointed for s in wf.edge_slots(e)}
    return {s: v for s in enums if (pointed is None or s in taken)  # "no, I'm good" points where no drink is asked for
            and not named_choices(tuple(wf.slots[s].values), spelled)
            and (v := codec.read_choice(step, s, message)) is not None and v in available[s][0]}


def _only(candidates: tuple[dict, dict | None], value: str) -> tuple[dict, dict | None]:
    """``candidates`` (values, counted) narrowed to ``value``."""
    values, counted = candidates
    return {value: values[value]}, ({value: counted[value]} if counted is not None else None)


def _named_enums(wf, message: str) -> set[str]:
    """The enum slots ``message`` names a declared value of (``named_choices``)."""
    return {s for s, spec in wf.slots.items() if spec.type == "enum" and named_choices(tuple(spec.values), message)}


def _answered(codec: Codec, available: dict, held: dict[str, str], at: str, named: set[str] = frozenset()) -> list[str]:
    """The slots ``at`` asks for that the message answers: a number or a date it offers, new
    (``_new``); an enum it names a value of (``named``, with ``named_choices``: "large"; held or not, as
    a loop asks again)."""
    wf = codec.wf
    asked = _asked(wf, at)
    return [s for s in asked if s in available and (
        (wf.slots[s].type in ("integer", "date") and _new(wf, at, s, held, available)) or s in named)]


def _new(wf, at: str, slot: str, held: dict[str, str], available: dict) -> bool:
    """Is a value offered for ``slot`` new: none held yet, or ``at`` asks for it again (a retry's
    code) and the message offers another than the one held?"""
    return slot not in held or (slot in _asked_again(wf, at) and any(v != held[slot] for v in available[slot][0]))


def _beyond_range(wf, at: str, available: dict, held: dict[str, str], message: str) -> list[str]:
    """The number slots ``at`` asks for, not yet held, that the message answers with a count
    outside the slot's range only ("about 25 singers" for a party of at most 6)."""
    from subterra.typed_values import counts

    asked = _asked(wf, at)
    said = counts(message)
    out = []
    for s in asked:
        spec = wf.slots[s]
        if spec.type == "integer" and s not in held and s not in available and said \
                and not any(fits_type(spec, n) for n in said):
            out.append(s)
    return out


def _answered_alone(codec: Codec, available: dict, held: dict[str, str], at: str, message: str) -> list[str]:
    """The text slot ``at`` asks for that ``message`` answers with little but a value: the message's
    one run of non-frame words, at least half its words, is offered for the slot, new (``_new``), and
    has the shape of the slot's declared values (``shaped_like``): "warsaw" after "which city are you
    leaving from?", never "transaction refused" for a miles number nor "it's about a bereavement"
    for a name."""
    wf = codec.wf
    runs = value_runs(message, codec.lexicon)
    if len(runs) != 1 or 2 * len(words(runs[0])) < len(words(message)):
        return []
    return [s for s in _asked(wf, at) if wf.slots[s].type == "string" and s in available
            and _new(wf, at, s, held, available) and runs[0] in available[s][0] and shaped_like(wf.slots[s], runs[0])]


def _answered_by_code(codec: Codec, available: dict, held: dict[str, str], at: str, message: str) -> list[str]:
    """The slot of codes (``coded``: every declared value has a digit or an ``@``) ``at`` asks for
    that the message's one run with a digit or an ``@`` answers, whatever words stand around it
    ("ok got it, 448210"), when it is offered for the slot, new (``_new``) and shaped like its values."""
    wf = codec.wf
    codes = [r for r in value_runs(message, codec.lexicon) if is_code(r)]
    if len(codes) != 1:
        return []
    return [s for s in _asked(wf, at) if wf.slots[s].type == "string" and coded(wf.slots[s]) and s in available
            and _new(wf, at, s, held, available) and codes[0] in available[s][0] and shaped_like(wf.slots[s], codes[0])]


def _collecting(wf, moves: dict, at: str, answered: list[str], given: set[str]) -> dict:
    """The moves that collect an answered slot: a step the answer's own branch leads to, or one
    further on when the move surely collects more than that branch does, of what the message gives
    (``given``; the message said more: "Sept 21, two of us" may pass the party-size question;
    "Sept 21" alone never passes its large-group branch to a handover, nor does a value held from an
    earlier round of a loop)."""
    direct = {e.target: set(wf.edge_slots(e)) for e in wf.out_edges(at) if set(answered) & set(wf.edge_slots(e))}
    branch = set.union(*direct.values()) if direct else set()
    return {n: ids for n, ids in moves.items()
            if set(answered) & set(wf.collected_between(at, n, surely=False))
            and (n in direct or (set(wf.collected_between(at, n)) - branch) & given)}


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
