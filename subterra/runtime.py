"""The deployed runtime: a compiled model, a one-line system prompt, and a form to fill.

There is no orchestrator: the procedure lives in the weights. The runtime only *prefills the
form's fixed structure* — ``{"node": "``, ``", "slots": {``, ``"say": "`` — so the model generates
values only, and constrains three of them:

* the node id is one of the workflow's node ids (not its successors: where to go is the model's
  call);
* a slot name is one of the workflow's slot names;
* a slot value is a verbatim span of the user's last message (whole words), an enum value, or
  yes/no for a boolean — the copy constraint: a value can be chosen but never misspelt.

Decoding is greedy inside those constraints (a trie over the allowed token sequences) and free
for ``say``. Many conversations run at once, in lockstep: every row feeds exactly one token per
step (forced structure, a user's message, or its own choice), so one batched forward with a KV
cache serves them all, with no padding.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Generator, Iterable, Sequence

from subterra.forms import Form, render_form

FORM_HEAD = '{"node": "'
AFTER_NODE = ', "slots": {'
AFTER_SLOTS = ', "say": "'
FORM_TAIL = "}<|im_end|>\n"
WORD = re.compile(r"\w")
TOKEN = re.compile(r"[^\s]+")  # a word of a message as written, punctuation attached
SENTENCE_BREAK = ",.;:!?"  # a word ending in one of these ends a value


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
    """Ask the driver for one token among ``allowed`` (None: any non-special token)."""

    allowed: list[int] | None


Program = Generator[object, int | None, None]


class Codec:
    """Token-level view of the chat format, shared by every row of a batch."""

    def __init__(self, tokenizer, wf, lexicon: frozenset[str] = frozenset(), runs_only: bool = True):
        self.tok = tokenizer
        self.wf = wf
        self.lexicon = lexicon
        self.runs_only = runs_only
        self._spans_of: tuple[str | None, list[str]] = (None, [])
        enc = self.encode
        self.quote = enc('"')
        self.form_head = enc(FORM_HEAD)
        self.after_node = enc(AFTER_NODE)
        self.after_slots = enc(AFTER_SLOTS)
        self.form_tail = enc(FORM_TAIL)
        self.close_brace = enc("}")
        self.open_key = enc('"')
        self.comma_key = enc(', "')
        self.key_to_value = enc(': "')
        self.node_candidates = {n: enc(n) + self.quote for n in wf.nodes}
        self.slot_candidates = {s: enc(s) + self.quote for s in wf.slots}
        specials = set(tokenizer.all_special_ids)
        self.quote_ids = {i for i in range(len(tokenizer)) if '"' in tokenizer.decode([i])}
        self.banned_in_say = sorted(specials)
        self._space_cache: dict[int, bool] = {}

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids))

    def system(self, text: str) -> list[int]:
        return self.encode(f"<|im_start|>system\n{text}<|im_end|>\n")

    def user(self, text: str) -> list[int]:
        return self.encode(f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n")

    def value_candidates(self, slot: str, message: str) -> tuple[dict[str, list[int]], dict[str, list[int]] | None]:
        """Allowed values of ``slot`` after ``message``, and which of their tokens are decisions.

        Enum and boolean slots choose among their values (every token counts). Free slots copy a
        span of whole words of the message: what counts is the span's first token, each
        word boundary (go on or stop) and the closing quote.
        """
        spec = self.wf.slots[slot]
        if spec.type in ("enum", "boolean"):
            values = spec.values if spec.type == "enum" else ("yes", "no")
            return {v: self.encode(v) + self.quote for v in values}, None
        candidates, counted = {}, {}
        if self._spans_of[0] != message:  # every slot of a turn reads the same message
            self._spans_of = (message, value_spans(message, self.lexicon, self.runs_only))
        spans = [v for v in self._spans_of[1] if fits_type(spec, v)]
        if not spans and spec.type != "string":  # a typed value inside a longer run ("2 adults")
            spans = [v for v in word_spans(message) if fits_type(spec, v)]
        for span in spans:
            ids = self.encode(span) + self.quote
            candidates[span] = ids
            counted[span] = [0] + [j for j in range(1, len(ids)) if j == len(ids) - 1 or self.is_space(ids[j])]
        return candidates, counted

    def is_space(self, token: int) -> bool:
        if token not in self._space_cache:
            self._space_cache[token] = self.decode([token]).isspace()
        return self._space_cache[token]


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
        current.append((m.start(), m.end()))
        if m.group()[-1] in SENTENCE_BREAK:
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
            if j > i and message[words[j - 1][1] - 1] in SENTENCE_BREAK:
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
    after each word, where it ends — since the rest of each word follows from the message.
    """

    candidates: dict[str, list[int]]
    counted: dict[str, list[int]] | None = None


def choose_sequence(candidates: dict[str, list[int]], counted: dict[str, list[int]] | None = None):
    """Choose one of ``candidates`` (token sequences); returns its key.

    Single-token choices (node ids, slot names, a brace) are one constrained argmax. Multi-token
    ones (values) are scored whole — the exact most likely sequence of the allowed set — so a
    value's first word cannot commit the model to a wrong span (``2027`` instead of ``9 May 2027``).
    """
    if not candidates:
        raise RuntimeError("no candidate to choose from")
    keys = list(candidates)
    if len(keys) == 1:
        key = keys[0]
    elif all(len(ids) <= 2 for ids in candidates.values()) and len({ids[0] for ids in candidates.values()}) == len(keys):
        token = yield Choice(sorted({ids[0] for ids in candidates.values()}))
        key = next(k for k in keys if candidates[k][0] == token)
        for t in candidates[key][1:]:
            yield ("force", t)
        return key
    else:
        key = yield Score(candidates, counted)
    for t in candidates[key]:
        yield ("force", t)
    return key


def score_candidates(model, past: list[tuple], position: int, first_logits, candidates: dict[str, list[int]], counted=None) -> str:
    """The key of the most likely candidate sequence after a context held in ``past``.

    ``past`` is the context's key/value tensors per layer (batch 1, ``position`` tokens);
    ``first_logits`` the model's prediction after the context.
    """
    import numpy as np
    import torch
    from transformers import DynamicCache

    keys = list(candidates)
    seqs = [candidates[k] for k in keys]
    first = torch.log_softmax(torch.as_tensor(first_logits, dtype=torch.float32), -1)
    totals = torch.stack([first[s[0]] for s in seqs])
    width = max(len(s) for s in seqs) - 1
    if width > 0:
        k = len(seqs)
        inputs = torch.zeros((k, width), dtype=torch.long)
        for row, s in enumerate(seqs):
            inputs[row, : len(s) - 1] = torch.tensor(s[:-1])
        cache = DynamicCache(
            ddp_cache_data=[(key.expand(k, -1, -1, -1), value.expand(k, -1, -1, -1)) for key, value in past]
        )
        positions = torch.arange(position, position + width)
        device = next(model.parameters()).device
        with torch.inference_mode():
            out = model(
                input_ids=inputs.to(device),
                past_key_values=cache,
                position_ids=positions.unsqueeze(0).expand(k, -1).to(device),
                cache_position=positions.to(device),
                use_cache=True,
            )
        logp = torch.log_softmax(out.logits.float().cpu(), -1)
        for row, s in enumerate(seqs):
            if len(s) > 1:
                positions_counted = counted[keys[row]] if counted else range(1, len(s))
                steps = torch.tensor([j - 1 for j in positions_counted if j >= 1], dtype=torch.long)
                if len(steps):
                    totals[row] += logp[row, steps, torch.tensor([s[j + 1] for j in steps.tolist()])].sum()
    return keys[int(np.argmax(totals.numpy()))]


def force(ids: Iterable[int]):
    for t in ids:
        yield ("force", t)


class TurnCounter:
    """Counts forced (input) and chosen (output) tokens of one turn."""

    def __init__(self):
        self.forced = 0
        self.chosen = 0


def fill_form(codec: Codec, last_user: str, max_say_tokens: int, counter: TurnCounter):
    """The program of one assistant turn: returns (Form, raw text, valid)."""
    raw: list[int] = []

    def forced(ids):
        raw.extend(ids)
        counter.forced += len(ids)
        yield from force(ids)

    def chosen(candidates, counted=None):
        return (yield from _tracked(choose_sequence(candidates, counted), raw, counter))

    yield from forced(codec.form_head)
    node = yield from chosen(codec.node_candidates)
    yield from forced(codec.after_node)
    slots: dict[str, str] = {}
    # only slots the message can fill are offered: a value its type rejects is never a choice
    available = {s: c for s in codec.wf.slots if (c := codec.value_candidates(s, last_user))[0]}
    while True:
        unused = [s for s in available if s not in slots]
        opener = codec.open_key if not slots else codec.comma_key
        options = {"close": codec.close_brace}
        if unused:
            options["more"] = opener
        what = yield from chosen(options)
        if what == "close":
            break
        key = yield from chosen({s: codec.slot_candidates[s] for s in unused})
        yield from forced(codec.key_to_value)
        values, counted = available[key]
        slots[key] = yield from chosen(values, counted)
    yield from forced(codec.after_slots)
    say_ids: list[int] = []
    closed = False
    for _ in range(max_say_tokens):
        token = yield Choice(None)
        counter.chosen += 1
        raw.append(token)
        if token in codec.quote_ids:
            closed = True
            break
        say_ids.append(token)
    if not closed:  # ran out of room: the form is invalid; close it so the conversation goes on
        yield from forced(codec.quote)
    yield from forced(codec.form_tail)
    say = codec.decode(say_ids)
    text = codec.decode(raw).split("<|im_end|>")[0]
    form = Form(node, slots, say)
    return form, text, closed


def _tracked(program, raw: list[int], counter: TurnCounter):
    """Run a choose_sequence program, recording its tokens into ``raw``; all of them are the model's output."""
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


_VISIBLE: list[int] = [0]  # how many cache positions the lockstep forward may see (all rows share it)
LOCKSTEP_ATTENTION = "subterra_lockstep"


def _lockstep_attention(module, query, key, value, attention_mask, **kwargs):
    """Attention for one new token per row over a preallocated cache: only the filled positions
    are looked at (a static cache would otherwise make every step attend over its whole length),
    and no mask is needed, since every filled position is visible to the newest token."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    n = _VISIBLE[0]
    return sdpa_attention_forward(module, query, key[:, :, :n], value[:, :, :n], None, **kwargs)


def _register_lockstep_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(LOCKSTEP_ATTENTION, _lockstep_attention)


class Lockstep:
    """Drives many row programs one token per step through one batched, KV-cached forward.

    All rows advance together from position 0, so there is no padding and one position per step;
    the cache is a preallocated ``StaticCache`` (appending to a dynamic cache copies it every step).
    A row still running when the cache is full is cut off (``truncated``).
    """

    def __init__(self, model, pad_id: int, banned_free: Sequence[int]):
        import numpy as np

        _register_lockstep_attention()
        self.model = model
        self.pad_id = pad_id
        self.device = next(model.parameters()).device
        vocab = model.get_output_embeddings().weight.shape[0]
        self.free_penalty = np.zeros(vocab, dtype=np.float32)
        self.free_penalty[list(banned_free)] = -np.inf

    def run(self, programs: list[Program], max_len: int, on_step: Callable[[float], None] | None = None) -> list[bool]:
        """Run every program to its end (or to ``max_len`` tokens); returns which rows were truncated."""
        import numpy as np
        import torch
        from transformers import StaticCache

        n = len(programs)
        alive = [True] * n
        pending: list[object] = [self._advance(prog, None, i, alive) for i, prog in enumerate(programs)]
        cache = StaticCache(config=self.model.config, max_cache_len=max_len)
        logits = None
        tokens = np.full(n, self.pad_id, dtype=np.int64)
        with torch.inference_mode():
            for step in range(max_len):
                if not any(alive):
                    break
                sent: list[int | None] = [None] * n
                for i in range(n):
                    if not alive[i]:
                        continue
                    while isinstance(pending[i], Score):
                        past = [(layer.keys[i : i + 1, :, :step], layer.values[i : i + 1, :, :step]) for layer in cache.layers]
                        key = score_candidates(self.model, past, step, logits[i], pending[i].candidates, pending[i].counted)
                        pending[i] = self._advance(programs[i], key, i, alive)
                    action = pending[i]
                    if isinstance(action, Choice):
                        row = logits[i]
                        if action.allowed is None:
                            token = int(np.argmax(row + self.free_penalty))
                        else:
                            allowed = action.allowed
                            token = allowed[int(np.argmax(row[allowed]))] if len(allowed) > 1 else allowed[0]
                        tokens[i] = sent[i] = token
                    else:
                        tokens[i] = action[1]
                started = time.perf_counter()
                _VISIBLE[0] = step + 1
                config = self.model.config
                usual, config._attn_implementation = config._attn_implementation, LOCKSTEP_ATTENTION
                try:
                    out = self.model(
                        input_ids=torch.from_numpy(tokens).to(self.device).unsqueeze(1),
                        past_key_values=cache,
                        use_cache=True,
                        cache_position=torch.tensor([step], device=self.device),
                    )
                finally:
                    config._attn_implementation = usual
                logits = out.logits[:, -1, :].float().cpu().numpy()
                if on_step is not None:
                    on_step(time.perf_counter() - started)
                for i in range(n):
                    if alive[i]:
                        pending[i] = self._advance(programs[i], sent[i], i, alive)
                    else:
                        tokens[i] = self.pad_id
        return list(alive)

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
    each; only the model's own choices are decoded token by token.
    """

    def __init__(self, model_dir: str, wf, max_say_tokens: int = 96):
        import numpy as np
        import torch
        from transformers import DynamicCache

        from subterra.lexicon import load_lexicon
        from subterra.student import load_compiled

        self.torch, self.np = torch, np
        self.tokenizer, self.model = load_compiled(model_dir)
        self.codec = Codec(self.tokenizer, wf, load_lexicon(model_dir))
        self.wf = wf
        self.max_say = max_say_tokens
        self.cache = DynamicCache()
        self.position = 0
        self.logits = None
        vocab = self.model.get_output_embeddings().weight.shape[0]
        self.free_penalty = np.zeros(vocab, dtype=np.float32)
        self.free_penalty[self.codec.banned_in_say] = -np.inf
        self._buffer: list[int] = list(self.codec.system(wf.assistant))
        self.ended = False

    def _flush(self) -> None:
        if not self._buffer:
            return
        torch = self.torch
        ids = torch.tensor([self._buffer], device=self.model.device)
        with torch.inference_mode():
            out = self.model(input_ids=ids, past_key_values=self.cache, use_cache=True)
        self.cache = out.past_key_values
        self.logits = out.logits[0, -1, :].float().cpu().numpy()
        self.position += len(self._buffer)
        self._buffer = []

    def respond(self, text: str) -> Form:
        """The model's form after the user's message ``text``."""
        self._buffer.extend(self.codec.user(text))
        program = fill_form(self.codec, text, self.max_say, TurnCounter())
        value = None
        try:
            action = next(program)
            while True:
                if isinstance(action, Score):
                    self._flush()
                    past = [(layer.keys, layer.values) for layer in self.cache.layers]
                    key = score_candidates(self.model, past, self.position, self.logits, action.candidates, action.counted)
                    action = program.send(key)
                    continue
                if isinstance(action, Choice):
                    self._flush()
                    row = self.logits
                    if action.allowed is None:
                        value = int(self.np.argmax(row + self.free_penalty))
                    else:
                        value = action.allowed[int(self.np.argmax(row[action.allowed]))]
                    self._buffer.append(value)
                    action = program.send(value)
                else:
                    self._buffer.append(action[1])
                    action = next(program)
        except StopIteration as stop:
            form, _raw, _valid = stop.value
        node = self.wf.nodes.get(form.node)
        self.ended = bool(node and node.is_terminal)
        return form
