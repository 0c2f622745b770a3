"""Routes: the ways a workflow can be served, evaluated side by side on one holdout (the ladder).

A route is a name and how it generates forms: ``play(wf, episodes, config)`` plays held-out
scenarios against their users (scripted unless told) and returns one ``Transcript`` per scenario, which
``subterra.evaluation`` scores the same way for every route. ``SPECS`` is the one registry of routes
(what each is, which one is deployed, how each is priced). The four local routes are a 2 x 2:

| route | weights | system prompt | form |
|---|---|---|---|
| ``orchestrated`` | the base model | the whole procedure, every turn | free generation |
| ``orchestrated_prefill`` | the base model | the whole procedure, every turn | the runtime's prefilled form |
| ``compiled`` | the fine-tuned model | the workflow's one line | free generation |
| ``compiled_prefill`` | the fine-tuned model | the workflow's one line | the runtime's prefilled form |

The fifth, ``frontier``, is Claude with the whole procedure in context (``subterra.frontier``), played
when Claude is set up.

The prefilled form is the deployed runtime (``subterra.runtime.turns.fill_form``): its structure is
forced, the node id is constrained to the workflow's node ids, slot names to its slots and values
to spans of the user's message, so the two ``*_prefill`` rows differ from each other only in
weights and prompt. The copy constraint's lexicon is a compile artifact: it comes with the
fine-tuned weights, the base model has none.

A local route plays its scenarios in batches (``runtime.lockstep.Lockstep``): KV-cached, each row's
choice or forced stretch fed in one forward; its system prompt (for ``orchestrated*`` the whole
procedure, ~1,000 tokens) is encoded once per evaluation and shared by every row, never re-encoded. A
route that generates forms some other way (a hosted model) implements the same ``play``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Callable, Protocol, Sequence

from subterra.forms import user_say
from subterra.procedure import render_procedure
from subterra.runtime.actions import force
from subterra.runtime.encoding import Codec, ReadingRules
from subterra.runtime.lockstep import MAX_DRAFT
from subterra.runtime.turns import TurnCounter, TurnRecord, fill_form, free_form
from subterra.scenario import Scenario
from subterra.simulator import SCRIPTED, Users

if TYPE_CHECKING:
    from subterra.workflow import Workflow

@dataclass(frozen=True)
class RouteSpec:
    """What a route is, for everything that plays, prices, orders or promotes it."""

    name: str
    # what writes its forms: "base" (the pretrained model), "compiled" (the fine-tuned one), both
    # local model folders (``LocalRoute``); "frontier" (Claude, hosted: ``subterra.frontier``)
    weights: str
    procedure: bool  # the whole procedure in the system prompt (else the one-line assistant text)
    prefill: bool  # the runtime's prefilled, constrained form (else free generation)
    # how the compiled workflow is served: the quality gates, the repair rounds, the headline and
    # the cost report's multiplier read its scores
    deployed: bool = False
    # its measured tokens price a frontier model with the procedure in context when the frontier
    # route did not run: the same procedure and history read every turn, the form generated
    frontier_proxy: bool = False

    @property
    def local(self) -> bool:
        """Served by a local model folder, at self-hosted prices (else hosted, at frontier prices)."""
        return self.weights != "frontier"


# in ladder order; adding a route is an entry here (and, for a new way of generating forms, its play)
SPECS = {spec.name: spec for spec in (
    RouteSpec("orchestrated", "base", procedure=True, prefill=False, frontier_proxy=True),
    RouteSpec("orchestrated_prefill", "base", procedure=True, prefill=True),
    RouteSpec("compiled", "compiled", procedure=False, prefill=False),
    RouteSpec("compiled_prefill", "compiled", procedure=False, prefill=True, deployed=True),
    RouteSpec("frontier", "frontier", procedure=True, prefill=False),
)}
ROUTES = tuple(name for name, spec in SPECS.items() if spec.local)  # what an evaluation plays unless told
DEPLOYED = next(name for name, spec in SPECS.items() if spec.deployed)
# whose scores stand for the deployed agent: the deployed route, else another on the fine-tuned weights
DEPLOYED_OR_COMPILED = (DEPLOYED,) + tuple(name for name, spec in SPECS.items() if spec.weights == "compiled" and not spec.deployed)
FRONTIER_PROXY = next(name for name, spec in SPECS.items() if spec.frontier_proxy)
FRONTIER_ROUTE = next(name for name, spec in SPECS.items() if not spec.local)


PROGRESS_SECONDS = 20.0  # a local route reports how many conversations it has played at most this often


@dataclass(frozen=True)
class PlayConfig:
    """How a local route plays: batch size, generation limits, the copy constraint's settings."""

    # rows per lockstep batch (fewer if the KV cache would pass max_cache_gb): every step reads the
    # whole batch's cache, so fewer, larger steps win
    batch_size: int = 400
    max_cache_gb: float = 4.0  # fewer rows per batch if their KV cache would take more memory than this
    max_say_tokens: int = 96  # prefilled form: the free ``say`` text (travel_booking's longest in training: 70)
    max_form_tokens: int = 160  # free generation: the whole form
    use_lexicon: bool = True  # the compile's lexicon of procedure words narrows the copy constraint
    copy_runs: bool | None = None  # with the lexicon, a value is a whole run of non-procedure words (None: the model's rule)
    fresh_values: bool = True  # prefilled form: a value the conversation holds is not offered again beside another
    corrections_named: bool = True  # prefilled form: a correction refills the held slot whose value it names (offered_keys)
    torch_threads: int = 0  # CPU threads for the forward passes (0: torch's default, every core)
    draft_tokens: int = MAX_DRAFT  # prefilled form: say tokens drafted per forward from known say lines (0: none)
    # prefilled form: how people's messages are read (``runtime.encoding.ReadingRules``, where each is described)
    courtesy_values: bool = ReadingRules.courtesy_values
    typed_values: bool = ReadingRules.typed_values
    edge_slots: bool = ReadingRules.edge_slots
    function_words: bool = ReadingRules.function_words
    moves_need_values: bool = ReadingRules.moves_need_values
    answers_move_on: bool = ReadingRules.answers_move_on
    corrections_stay: bool = ReadingRules.corrections_stay
    only_asked_values: bool = ReadingRules.only_asked_values
    restated_values: bool = ReadingRules.restated_values
    answers_fill: bool = ReadingRules.answers_fill
    answers_pick_moves: bool = ReadingRules.answers_pick_moves
    values_alone_move_on: bool = ReadingRules.values_alone_move_on
    codes_among_words: bool = ReadingRules.codes_among_words
    out_of_range_answers: bool = ReadingRules.out_of_range_answers
    values_carry_on: bool = ReadingRules.values_carry_on
    spans_once: bool = ReadingRules.spans_once
    inflected_words: bool = ReadingRules.inflected_words
    held_steps_pass: bool = ReadingRules.held_steps_pass
    carry_into_branches: bool = ReadingRules.carry_into_branches
    values_held_ahead: bool = ReadingRules.values_held_ahead
    first_names_answer: bool = ReadingRules.first_names_answer
    first_message_answers: bool = ReadingRules.first_message_answers
    branch_words: bool = ReadingRules.branch_words
    stemmed_words: bool = ReadingRules.stemmed_words
    yes_no_words: bool = ReadingRules.yes_no_words
    other_answers: bool = ReadingRules.other_answers
    done_words: bool = ReadingRules.done_words
    negated_words: bool = ReadingRules.negated_words
    branch_over_lower_names: bool = ReadingRules.branch_over_lower_names
    questions_point: bool = ReadingRules.questions_point
    questions_choose: bool = ReadingRules.questions_choose
    carried_reading: bool = ReadingRules.carried_reading
    names_by_case: bool = ReadingRules.names_by_case
    cased_messages: bool = ReadingRules.cased_messages
    names_ahead_capitalised: bool = ReadingRules.names_ahead_capitalised
    ahead_choices_named: bool = ReadingRules.ahead_choices_named
    moves_on_the_graph: bool = ReadingRules.moves_on_the_graph
    codes_whole: bool = ReadingRules.codes_whole
    named_choices: bool = ReadingRules.named_choices
    said_values: bool = ReadingRules.said_values
    typo_words: bool = ReadingRules.typo_words
    declared_values_whole: bool = ReadingRules.declared_values_whole
    slot_cues: bool = ReadingRules.slot_cues
    counts_as_said: bool = ReadingRules.counts_as_said
    say_from_lines: bool = ReadingRules.say_from_lines
    rephrase_stays: bool = ReadingRules.rephrase_stays
    branch_reader: str = ReadingRules.branch_reader
    reader_margin: float = ReadingRules.reader_margin
    reader_nowhere_margin: float = ReadingRules.reader_nowhere_margin
    reader_direct_weight: float = ReadingRules.reader_direct_weight
    choice_margin: float = ReadingRules.choice_margin

    def reading_rules(self) -> ReadingRules:
        return ReadingRules(**{f.name: getattr(self, f.name) for f in fields(ReadingRules)})


@dataclass
class Episode:
    """One held-out scenario to play: its reference conversation and a turn limit."""

    scenario: Scenario
    reference: list[dict]
    max_turns: int
    script: tuple | None = None  # a natural conversation's fixed user lines (subterra.natural.NaturalTurn)
    today: object = None  # the conversation's date (relative dates are read from it); None: the real today


@dataclass
class Transcript:
    """What happened in one played conversation."""

    scenario_id: str
    turns: list[TurnRecord] = field(default_factory=list)
    user_kinds: list[str] = field(default_factory=list)  # kind of the user message before each turn
    user_slots: list[dict] = field(default_factory=list)
    user_edges: list[str | None] = field(default_factory=list)  # the edge each answer took
    user_texts: list[str] = field(default_factory=list)
    ended: bool = False
    truncated: bool = False
    user_fallbacks: int = 0  # turns a model-played user had to leave to the scripted wording

    def heard(self, turn) -> None:
        """The user's message before the next turn."""
        self.user_kinds.append(turn.kind)
        self.user_slots.append(dict(turn.slots))
        self.user_edges.append(turn.edge)
        self.user_texts.append(turn.text)


class Route(Protocol):
    name: str

    def play(self, wf: Workflow, episodes: Sequence[Episode], config, progress: Callable[[int, int], None] | None = None,
             users: Users = SCRIPTED) -> list[Transcript]: ...


def conversation_program(codec: Codec, wf: Workflow, episode: Episode, turn_program, n_prefix: int, out: Transcript, clock,
                         users: Users = SCRIPTED):
    """One scenario, start to end, as a lockstep program (after the shared system prompt).

    ``turn_program(message, counter, held, at)`` is the route's way of filling one form (``at``: the step the conversation is at; ``held``: the
    slot values the conversation's forms captured so far). Tokens in per turn
    are the whole context the model reads (system prompt included); tokens out are the model's own.
    ``users`` makes the scenario's user (scripted, or a model in the scenario's persona).
    """
    if episode.script is not None:
        from subterra.natural import ScriptUser

        user = ScriptUser(episode.script)
    else:
        user = users.make(wf, episode.scenario)
    turn = user.opener()
    n_context = n_prefix
    held: dict[str, str] = {}
    at = None  # the step the conversation is at (None: before the first form)
    while len(out.turns) < episode.max_turns:
        message = codec.user(turn.text)
        yield from force(message)
        n_context += len(message)
        out.heard(turn)
        counter = TurnCounter()
        started = clock()
        form, raw, valid = yield from turn_program(turn.text, counter, held, at, **({"today": episode.today} if episode.today else {}))
        held.update(form.slots)
        at = form.node
        node = wf.nodes.get(form.node)
        say, complete = user_say(form.say, held, node.say if node else ())  # the template filled in, never a raw one
        record = TurnRecord(
            node=form.node, slots=form.slots, say=say, raw=raw, valid=valid and complete and _parses(raw, wf),
            tokens_in=n_context + counter.forced, tokens_out=counter.chosen,
            latency_s=clock() - started,
        )
        n_context += counter.forced + counter.chosen
        out.turns.append(record)
        turn = user.reply(form.node, say)
        out.user_fallbacks = getattr(user, "fallbacks", 0)
        if turn is None:
            out.ended = True
            return


def _parses(raw: str, wf: Workflow) -> bool:
    from subterra.forms import parse_form

    try:
        return parse_form(raw).node in wf.nodes
    except ValueError:
        return False


@dataclass(frozen=True)
class LocalRoute:
    """A route served by a local transformers model folder."""

    name: str
    model_dir: str
    procedure: bool
    prefill: bool

    def system_prompt(self, wf: Workflow) -> str:
        return render_procedure(wf) if self.procedure else wf.assistant

    def play(self, wf: Workflow, episodes: Sequence[Episode], config: PlayConfig = PlayConfig(),
             progress: Callable[[int, int], None] | None = None, users: Users = SCRIPTED) -> list[Transcript]:
        from subterra.lexicon import load_lexicon, whole_runs
        from subterra.runtime.lockstep import Lockstep
        from subterra.student import load_compiled

        if config.torch_threads:
            import torch

            torch.set_num_threads(config.torch_threads)
        tokenizer, model = load_compiled(self.model_dir)
        lexicon = load_lexicon(self.model_dir) if config.use_lexicon else frozenset()
        runs = whole_runs(self.model_dir) if config.copy_runs is None else config.copy_runs
        rules = config.reading_rules()
        codec = Codec(tokenizer, wf, lexicon, runs, rules)
        driver = Lockstep(model, codec.banned_in_say, codec.masks, max_draft=config.draft_tokens)
        prefix = driver.encode_prefix(codec.system(self.system_prompt(wf)))

        def turn_program(message: str, counter: TurnCounter, held: dict[str, str], at: str | None, today=None):
            if self.prefill:
                return fill_form(codec, message, config.max_say_tokens, counter, held if config.fresh_values else None,
                                 config.corrections_named, today, at, rules)
            return free_form(codec, config.max_form_tokens, counter)

        transcripts = [Transcript(e.scenario.id) for e in episodes]
        lengths = [len(codec.encode(tokenizer.apply_chat_template(e.reference[1:], tokenize=False))) for e in episodes]
        order = sorted(range(len(episodes)), key=lambda i: lengths[i])  # similar lengths share a batch
        room = 0 if self.prefill else config.max_form_tokens

        def cache_len(rows) -> int:
            return len(prefix.ids) + int(1.3 * max(lengths[i] for i in rows)) + 256 + room

        per_row = kv_bytes_per_token(model) * cache_len(order) if order else 1
        batch_size = max(1, min(config.batch_size, int(config.max_cache_gb * 2**30 // per_row)))
        batch_size = -(-len(order) // -(-len(order) // batch_size)) if order else 1  # as many batches, evened out
        done = 0
        reported = [time.monotonic()]

        def finished(program):  # a conversation ends: progress at most every PROGRESS_SECONDS, and at the end
            nonlocal done
            result = yield from program
            done += 1
            if progress is not None and (done == len(episodes) or time.monotonic() - reported[0] >= PROGRESS_SECONDS):
                reported[0] = time.monotonic()
                progress(done, len(episodes))
            return result

        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            # a turn's latency: every batched forward it waited for, and its own candidate scoring
            forwards, scoring = [0.0], [0.0] * len(batch)

            def on_step(dt: float) -> None:
                forwards[0] += dt

            def on_score(row: int, dt: float) -> None:
                scoring[row] += dt

            programs = [
                finished(conversation_program(codec, wf, episodes[i], turn_program, len(prefix.ids), transcripts[i],
                                              lambda row=row: forwards[0] + scoring[row], users))
                for row, i in enumerate(batch)
            ]
            cut = driver.run(programs, cache_len(batch), on_step=on_step, prefix=prefix, on_score=on_score)
            for i, truncated in zip(batch, cut):
                transcripts[i].truncated = truncated
        return transcripts


def kv_bytes_per_token(model) -> int:
    """Bytes one position of one row takes in the KV cache (keys and values, every layer)."""
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    return 2 * c.num_hidden_layers * heads * head_dim * next(model.parameters()).element_size()


def local_routes(names: Sequence[str], base_dir: str | None, compiled_dir: str) -> list[LocalRoute]:
    """The named local routes; those on the base model need ``base_dir`` (a pretrained model
    folder) and are left out without one."""
    out = []
    for name in names:
        if name not in ROUTES:
            raise ValueError(f"unknown route {name!r} (known: {', '.join(ROUTES)})")
        spec = SPECS[name]
        folder = base_dir if spec.weights == "base" else compiled_dir
        if folder:
            out.append(LocalRoute(name, folder, spec.procedure, spec.prefill))
    return out
