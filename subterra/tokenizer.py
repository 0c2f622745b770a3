"""A BPE tokenizer trained on the corpus, shaped for copying and for forms.

Pre-tokenisation isolates every word, every digit, every punctuation character and every run of
whitespace, so a word is the same tokens wherever it stands — after a space in the user's
message or after a quote in the form — and copying a value is copying token ids. BPE (byte-level,
so nothing is ever unknown) then learns the corpus's words; rare and unseen words split into
small pieces. Node ids and slot names are single added tokens: a node id can never come out
half-formed. So is each piece of the form's fixed structure (``subterra.forms.FORM_PIECES``:
``{"node": "``, ``",``, `` "slots":`` ...): a form's structure is a dozen tokens instead of ~35 single
characters, which the model would only learn to copy, and the runtime forces a piece in one step.
"""

from __future__ import annotations

from typing import Iterable

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from subterra.forms import FORM_PIECES

PAD, BOS, EOS = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (PAD, BOS, EOS)
PIECES = r"\s+|\d|[^\w\s]|_|[^\W\d_]+"

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

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PIECES), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_tokens([AddedToken(a, single_word=True, normalized=False) for a in sorted(set(atomic))])
    # matched longest first wherever they stand: '"},' before '"}', ' "slots":' before ' "'
    tok.add_tokens([AddedToken(p, normalized=False) for p in sorted(set(FORM_PIECES))])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=None
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def workflow_atoms(wf) -> list[str]:
    """Identifiers that must be one token each: node ids and slot names."""
    return list(wf.nodes) + list(wf.slots)
