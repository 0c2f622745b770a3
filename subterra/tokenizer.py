"""A BPE tokenizer trained on the corpus, shaped for copying and for forms.

Pre-tokenisation isolates every word, every digit, every punctuation character and every run of
whitespace, so a word is the same tokens wherever it stands — after a space in the user's
message or after a quote in the form — and copying a value is copying token ids. BPE (byte-level,
so nothing is ever unknown) then learns the corpus's words; rare and unseen words split into
small pieces, and a piece inside a word is a token of its own (``##don``), never the word it
spells: a holdout's "London" was ``L on don``, the last two the words "on" and the "don" of
"don't", and a from-scratch student read "I'll be leaving from London" as a cancellation (30 of
68 holdout failures of one compile). Node ids and slot names are single added tokens: a node id
can never come out half-formed. So is each piece of the form's fixed structure (``subterra.forms.FORM_PIECES``:
``{"node": "``, ``",``, `` "slots":`` ...): a form's structure is a dozen tokens instead of ~35 single
characters, which the model would only learn to copy, and the runtime forces a piece in one step.

A slot's placeholder in a say line (``{destination}``) is a token of its own too, not the slot's
name between braces. With the name token in both places, the row of ``destination`` that picks
the slot a value goes to was also the row a say line's placeholder is written with: editing the
words beside a placeholder ("Your flight to {destination}" -> "Your trip to {destination}") moved
the slot choice of held-out values, and an incremental recompile of such an edit lost far more
than one of a line without a placeholder. A placeholder token of its own keeps the two apart
(the measurements: ``docs/experiments.md``, *Placeholder tokens*).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Iterable

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from subterra.forms import FORM_PIECES

if TYPE_CHECKING:
    from subterra.workflow import Workflow

PAD, BOS, EOS = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (PAD, BOS, EOS)
PIECES = r"\s+|\d|[^\w\s]|_|[^\W\d_]+"
CONTINUES = "##"  # marks a piece that continues a word (never produced by text: "#" is a piece of its own)

# ChatML with generation markers, so TRL can train on assistant turns only.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|im_end|>' }}{% endif %}"
    "{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int, atomic: Iterable[str] = ()):
    """Train the BPE tokenizer and wrap it as a ``PreTrainedTokenizerFast`` with the chat template."""
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    # Every byte may continue a word ("Zürich" in a holdout, its bytes unseen inside a word in
    # training), so every continuing byte is in the vocabulary, or BPE would drop such a byte
    # without a word. They are given to the trainer up front, in a fixed order, as special tokens
    # of the throwaway ``trained`` tokenizer: the trainer would otherwise create each one it sees
    # in hash-map order, a different id per run, and its ties between merges of equal count are
    # broken by those ids, so the same corpus gave a different vocabulary every run
    # (huggingface/tokenizers#1794) and the same seed a different model.
    continuing = [CONTINUES + char for char in alphabet]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size + len(continuing),  # the continuing pieces take no room from the merges
        special_tokens=list(SPECIAL_TOKENS) + continuing,
        initial_alphabet=alphabet,
        continuing_subword_prefix=CONTINUES,
        show_progress=False,
    )
    trained = _shaped(Tokenizer(models.BPE(continuing_subword_prefix=CONTINUES)))
    trained.train_from_iterator(texts, trainer=trainer)
    model = json.loads(trained.to_str())["model"]
    vocab = dict(model["vocab"])
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tok = _shaped(Tokenizer(models.BPE(vocab=vocab, merges=merges, continuing_subword_prefix=CONTINUES)))
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tok.add_tokens([AddedToken(a, single_word=True, normalized=False) for a in sorted(set(atomic))])
    # matched longest first wherever they stand: '"},' before '"}', ' "slots":' before ' "'
    tok.add_tokens([AddedToken(p, normalized=False) for p in sorted(set(FORM_PIECES))])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=None
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _shaped(tok):
    """``tok`` with the pre-tokenizer and decoder of this module's tokenizers."""
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PIECES), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.Sequence([decoders.Replace(CONTINUES, ""), decoders.ByteLevel()])
    return tok


def workflow_atoms(wf: Workflow) -> list[str]:
    """Identifiers that must be one token each: node ids, slot names, and each slot's placeholder
    in a say line (``{destination}``), a token of its own rather than ``{`` + the slot's name."""
    return list(wf.nodes) + list(wf.slots) + [placeholder(s) for s in wf.slots]


def placeholder(slot: str) -> str:
    """How a say line names a slot's value: ``{slot}``."""
    return "{" + slot + "}"


def is_placeholder(atom: str) -> bool:
    """Is ``atom`` (one of ``workflow_atoms``) a slot's placeholder?"""
    return atom.startswith("{") and atom.endswith("}")
