"""Which branch of a decision a message takes, read by a pretrained language model: the words of the
world a compiled student never saw ("an awful echo on my calls" is an audio problem, "my meetwave bill"
a billing one).

The reader is a noisy channel (a generative classifier): for each branch of a decision step, a short
text written from the workflow alone — the assistant, the step's question, the branch's ``when`` and
the user lines training speaks for it (``phrasing_pool(..., SEEN)``, never a held-back line) — is read
by a pretrained causal model (SmolLM2-135M-Instruct by default, ``subterra.base_models``), and the
branch under which the message is the likeliest continuation is the one it reads. One more text, of
messages that answer nothing yet (the off-script lines training speaks: not understood, off topic;
and the lines of the steps the message answers on the way, "I'm Ada Moreno" at the greeting), stands
for no branch: a message likelier there points nowhere. A second, direct reading quotes the message
and asks what it means: how much likelier each branch's ``when`` follows it than it follows a message
saying nothing ("wrong" makes "the code did not match" likelier; ``BranchReader.direct``). The reader
points at a branch when its log-likelihood, plus ``direct_weight`` times its direct reading, passes
every other branch's by ``margin`` nats, and its log-likelihood alone passes the no-branch text's by
``nowhere_margin``.

It reads decisions with a branch that collects nothing (told by words only, ``told_by_words``); a
branch that collects a value has its text too (its lines with declared values said), but where it
reads likeliest, the values decide (``runtime.turns``). It is asked only where the workflow's own branch
words (``runtime.branch_words``) point nowhere. Each text's key-value cache is computed once (per
workflow definition and process); a message costs one forward over its own tokens, the texts batched,
and a message read once at a step is not read again.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

from subterra import phrasing as ph
from subterra.phrasing import SEEN, phrasing_pool
from subterra.workflow import Workflow

NOWHERE = ""  # the text of messages that answer no branch yet


def told_by_words(wf: Workflow, step: str) -> tuple[str, ...]:
    """The targets of ``step`` a branch reaches without collecting a value (at a step that collects
    none itself): the ways out that words alone choose."""
    if wf.nodes[step].collect:
        return ()
    return tuple(dict.fromkeys(e.target for e in wf.out_edges(step) if not e.collect))


def word_decision(wf: Workflow, step: str) -> bool:
    """Is ``step`` a decision with a branch told by words: two targets or more, one of them reached
    without a value ("I can't find my order e-mail" where the other branch collects the order number)?"""
    return len({e.target for e in wf.out_edges(step)}) >= 2 and bool(told_by_words(wf, step))


def _plain(text: str, wf: Workflow | None = None, k: int = 0) -> str:
    """``text`` with each placeholder said: one of its slot's declared values (the ``k``-th), else "it"."""
    def said(found: re.Match) -> str:
        slot = wf.slots.get(found.group(1)) if wf is not None else None
        return str(slot.values[k % len(slot.values)]) if slot is not None and slot.values else "it"
    return re.sub(r"\{([^}]*)\}", said, text).strip()


def branch_text(wf: Workflow, step: str, who: str, lines) -> str:
    """The text a message is read after: the assistant, the step's question, who answers and how."""
    ask = wf.nodes[step].say[0] if wf.nodes[step].say else wf.nodes[step].prompt
    examples = "".join(f"- {_plain(line)}\n" for line in lines)
    return (f"{wf.assistant.strip()}\nThe assistant asks: \"{_plain(ask)}\"\n"
            f"A customer who {who} answers, for example:\n{examples}-")


def branch_texts(wf: Workflow, step: str, before: tuple[str, ...] = ()) -> dict[str, str]:
    """Per target of ``step`` its text, and ``NOWHERE``'s: off-script lines and those of ``before``."""
    answers = [line for n in before for e in wf.out_edges(n) for line in phrasing_pool(e.user, SEEN)]
    texts = {}
    for target in dict.fromkeys(e.target for e in wf.out_edges(step)):
        edges = [e for e in wf.out_edges(step) if e.target == target]
        who = "; or ".join(dict.fromkeys(e.when for e in edges if e.when)) or "goes on"
        lines = [line for e in edges for line in phrasing_pool(e.user, SEEN)]
        if any(e.collect for e in edges):  # a branch that collects says declared values ("ORD-4417203.", not "it.")
            lines = [_plain(line, wf, k) for k, line in enumerate(lines)]
        if answers:  # the steps on the way answered first, as one message does ("I'm Ada Moreno. My camera is black.")
            lines = [f"{answers[i % len(answers)]} {line}" for i, line in enumerate(lines)]
        texts[target] = branch_text(wf, step, who, lines)
    nowhere = [*phrasing_pool(ph.UNCLEAR, SEEN), *phrasing_pool(ph.OFF_TOPIC, SEEN), *answers]
    texts[NOWHERE] = branch_text(wf, step, "does not answer yet", nowhere)
    return texts


def direct_head(wf: Workflow, step: str) -> str:
    """The text a message is quoted in to read what it means (``BranchReader.direct``)."""
    ask = wf.nodes[step].say[0] if wf.nodes[step].say else wf.nodes[step].prompt
    return f"{wf.assistant.strip()}\nThe assistant asks: \"{_plain(ask)}\"\nThe customer answers: \""


MEANS = "\"\nIn short, the customer's answer means:"  # after the quoted message, before a branch's ``when``
EMPTY = "..."  # the message a branch's ``when`` is compared against: its likelihood after saying nothing


def branch_whens(wf: Workflow, step: str) -> dict[str, str]:
    """Per target of ``step``, what its branch's ``when`` says (two ways to one step: either)."""
    return {t: "; or ".join(dict.fromkeys(e.when for e in wf.out_edges(step) if e.target == t and e.when))
            or t.replace("_", " ") for t in dict.fromkeys(e.target for e in wf.out_edges(step))}


def _what(wf: Workflow, slot: str) -> str:
    """How the choice readings name ``slot``: its description, else its name in words."""
    return (wf.slots[slot].description or slot.replace("_", " ")).strip().rstrip(".")


@dataclass(frozen=True)
class Reading:
    target: str | None  # the branch read, None when the message points at none by the margin
    scores: dict[str, float]  # per text (``NOWHERE``: ""), the message's log-likelihood after it
    direct: dict[str, float] | None = None  # per target, how much likelier its ``when`` is after the message


class BranchReader:
    """A pretrained causal model reading which branch of a word decision a message takes."""

    def __init__(self, model, tokenizer, wf: Workflow, margin: float, nowhere_margin: float | None = None,
                 direct_weight: float = 0.0):
        self.model, self.tok, self.wf, self.margin = model, tokenizer, wf, margin
        self.nowhere_margin = margin if nowhere_margin is None else nowhere_margin
        self.direct_weight = direct_weight
        self._prefixes: dict[str, tuple] = {}

    def _prefix(self, text: str):
        """The keys and values of ``text`` (per layer), its length and the log-probabilities after it."""
        found = self._prefixes.get(text)
        if found is None:
            import torch

            ids = self.tok(text, return_tensors="pt").input_ids
            with torch.no_grad():
                out = self.model(ids, use_cache=True)
            layers = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
            found = self._prefixes[text] = (layers, ids.shape[1], torch.log_softmax(out.logits[0, -1], -1))
        return found

    def likelihoods(self, texts: list[str], message: str) -> list[float]:
        """The log-likelihood of ``message`` (as one more example line) after each of ``texts``: one
        forward over the message's tokens for all of them, their caches padded on the left."""
        import torch
        from transformers import DynamicCache

        ids = self.tok(" " + " ".join(message.split()), add_special_tokens=False).input_ids
        if not ids or not texts:
            return [0.0] * len(texts)
        layers, longest, prefixes = self._padded(tuple(texts))
        mask = torch.tensor([[0] * (longest - length) + [1] * (length + len(ids)) for _, length, _ in prefixes])
        positions = torch.tensor([[length + j for j in range(len(ids))] for _, length, _ in prefixes])
        with torch.no_grad():  # the cache grows into new tensors: the padded prefixes stay as they are
            out = self.model(torch.tensor([ids] * len(texts)), past_key_values=DynamicCache(layers),
                             attention_mask=mask, position_ids=positions, use_cache=True)
        rest = torch.log_softmax(out.logits[:, :-1], -1).gather(2, torch.tensor([ids[1:]] * len(texts))[..., None])
        return [float(first[ids[0]] + rest[k].sum()) for k, (_, _, first) in enumerate(prefixes)]

    @functools.lru_cache(maxsize=256)
    def _padded(self, texts: tuple[str, ...]):
        """The caches of ``texts`` padded on the left to the longest and batched, kept per set of texts."""
        import torch

        prefixes = [self._prefix(text) for text in texts]
        longest = max(length for _, length, _ in prefixes)
        pad = torch.nn.functional.pad
        layers = [tuple(torch.cat([pad(p[0][i][kv], (0, 0, longest - p[1], 0)) for p in prefixes]) for kv in (0, 1))
                  for i in range(len(prefixes[0][0]))]
        return layers, longest, prefixes

    def continuations(self, head: str, tail: str, endings: list[str]) -> list[float]:
        """The log-likelihood of each of ``endings`` after ``head`` + ``tail``: the head's cache kept,
        the tail read once after it, then every ending in one batched forward (padded on the right)."""
        import torch
        from transformers import DynamicCache

        layers_of, length, _ = self._prefix(head)
        tail_ids = self.tok(tail, add_special_tokens=False).input_ids
        ends = [self.tok(e, add_special_tokens=False).input_ids for e in endings]
        with torch.no_grad():
            said = self.model(torch.tensor([tail_ids]), past_key_values=DynamicCache([tuple(kv) for kv in layers_of]),
                              position_ids=torch.arange(length, length + len(tail_ids))[None], use_cache=True)
        first = torch.log_softmax(said.logits[0, -1], -1)  # an ending's first token
        length += len(tail_ids)
        width = max(len(e) for e in ends)
        ids = torch.tensor([e + [0] * (width - len(e)) for e in ends])
        mask = torch.tensor([[1] * (length + len(e)) + [0] * (width - len(e)) for e in ends])
        positions = torch.arange(length, length + width).repeat(len(ends), 1)
        layers = [tuple(torch.cat([kv] * len(ends)) for kv in (layer.keys, layer.values))
                  for layer in said.past_key_values.layers]
        with torch.no_grad():
            out = self.model(ids, past_key_values=DynamicCache(layers), attention_mask=mask, position_ids=positions)
        logp = torch.log_softmax(out.logits, -1)
        return [float(first[e[0]] + sum(logp[k, j - 1, t] for j, t in enumerate(e) if j)) for k, e in enumerate(ends)]

    @functools.lru_cache(maxsize=1 << 14)
    def direct(self, step: str, message: str) -> dict[str, float]:
        """Per target of ``step``, how much likelier its ``when`` is said to be what the message means
        than what saying nothing means (a pointwise mutual information, in nats): the direct reading
        beside the noisy channel's ("wrong" means "the code did not match")."""
        said, nothing = self._means(step, message), self._said_nothing(step)
        return {t: said[t] - nothing[t] for t in said}

    @functools.lru_cache(maxsize=256)
    def _said_nothing(self, step: str) -> dict[str, float]:
        """Per target of ``step``, its ``when``'s log-likelihood after a message that says nothing."""
        return self._means(step, EMPTY)

    def _means(self, step: str, message: str) -> dict[str, float]:
        """Per target of ``step``, its ``when``'s log-likelihood as what ``message`` means."""
        whens = branch_whens(self.wf, step)
        said = self.continuations(direct_head(self.wf, step), message + MEANS, [f" {w}." for w in whens.values()])
        return dict(zip(whens, said))

    @functools.lru_cache(maxsize=1 << 14)
    def choice(self, step: str, slot: str, message: str) -> tuple[dict[str, float], dict[str, float]]:
        """Per declared value of the enum ``slot``, two readings of ``message`` (the answer to
        ``step``'s question): how much likelier the value is said to be what it gives for the slot
        than what saying nothing gives (a pointwise mutual information, in nats: "gets really hot on
        the wrist" gives an overheating), and the message's log-likelihood as said by a customer
        whose slot holds the value, less its mean over the values (the noisy channel's)."""
        message = " ".join(message.split())
        said, nothing = self._gives(step, slot, message), self._gives(step, slot, EMPTY)
        texts = self._choice_texts(step, slot)
        channel = dict(zip(texts, self.likelihoods(list(texts.values()), message)))
        mean = sum(channel.values()) / len(channel)
        return {v: said[v] - nothing[v] for v in said}, {v: c - mean for v, c in channel.items()}

    @functools.lru_cache(maxsize=256)
    def _choice_texts(self, step: str, slot: str) -> dict[str, str]:
        spec, what = self.wf.slots[slot], _what(self.wf, slot)
        ask = self.wf.nodes[step].say[0] if self.wf.nodes[step].say else self.wf.nodes[step].prompt
        return {str(v): f"{self.wf.assistant.strip()}\nThe assistant asks: \"{_plain(ask)}\"\n"
                        f"A customer whose {what} is \"{v}\" answers in their own words:\n\"" for v in spec.values}

    @functools.lru_cache(maxsize=256)
    def _gives(self, step: str, slot: str, message: str) -> dict[str, float]:
        values = [str(v) for v in self.wf.slots[slot].values]
        said = self.continuations(direct_head(self.wf, step), f"{message}\"\nIn short, {_what(self.wf, slot)}:",
                                  [f" {v}." for v in values])
        return dict(zip(values, said))

    def read(self, step: str, message: str, before: tuple[str, ...] = ()) -> Reading:
        """The branch of ``step`` ``message`` takes, if one passes every other text by the margin."""
        if not word_decision(self.wf, step) or not message.strip():
            return Reading(None, {})
        return self._read(step, " ".join(message.split()), tuple(before))

    @functools.lru_cache(maxsize=1 << 14)
    def _read(self, step: str, message: str, before: tuple[str, ...]) -> Reading:
        texts = branch_texts(self.wf, step, before)
        scores = dict(zip(texts, self.likelihoods(list(texts.values()), message)))
        branches = [t for t in scores if t != NOWHERE]
        if all(scores[t] - scores[NOWHERE] < self.nowhere_margin for t in branches):
            return Reading(None, scores)  # no branch passes the no-branch text: nothing to read further
        direct = self.direct(step, message) if self.direct_weight else None
        both = {t: v + (self.direct_weight * direct[t] if direct else 0.0) for t, v in scores.items() if t != NOWHERE}
        best, second = sorted(both, key=both.get, reverse=True)[:2]  # a branch that collects: the values decide
        told = best in told_by_words(self.wf, step) and both[best] - both[second] >= self.margin \
            and scores[best] - scores[NOWHERE] >= self.nowhere_margin
        return Reading(best if told else None, scores, direct)


@functools.lru_cache(maxsize=4)
def _load(folder: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model.eval()
    return model, tokenizer


_READERS: dict[tuple, BranchReader] = {}
MAX_READERS = 32


def load_reader(name: str, wf: Workflow, margin: float, data_dir: str | Path | None = None,
                nowhere_margin: float | None = None, direct_weight: float = 0.0) -> BranchReader:
    """The reader of base model ``name`` (a named one, ``subterra.base_models``, converted once into
    the data folder; or a folder) for ``wf``; one model per process, however many workflows read, and
    one reader per workflow definition, its texts' caches and its readings kept between plays."""
    from subterra.base_models import resolve

    folder = resolve(name, data_dir)
    key = (folder, wf.content_hash, margin, nowhere_margin, direct_weight)
    if key not in _READERS:
        if len(_READERS) >= MAX_READERS:  # a long-lived server that saw many definitions: the oldest goes
            _READERS.pop(next(iter(_READERS)))
        model, tokenizer = _load(folder)
        _READERS[key] = BranchReader(model, tokenizer, wf, margin, nowhere_margin, direct_weight)
    return _READERS[key]
