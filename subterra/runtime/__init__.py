"""The deployed runtime: a compiled model, a one-line system prompt, and a form to fill.

There is no orchestrator: the procedure lives in the weights. The runtime only prefills the form's
fixed structure, so the model generates values only, and constrains the node id, the slot names
and the slot values (a value is copied from the user's message or chosen among declared values:
it can be chosen but never misspelt). Many conversations run at once, packed into one KV-cached
forward per step, the system prompt encoded once and shared by every row.

One job per module, each depending only on those above it:

* ``actions``: what a turn program asks of its driver (``Choice``, ``Score``, forced tokens);
* ``candidates``: the copy constraint on text (the spans a value may be copied from, type fit);
* ``encoding``: the chat format and the form as token ids (``Codec``), ``ReadingRules``;
* ``offers``: which slots and values a form is offered after a message, given what is held;
* ``row_cache``: every row's own keys and values, and how a packed step lays its tokens over them;
* ``attention``: the attention over a shared context, then each row's own tokens;
* ``scoring``: choosing among candidate sequences (a trie walk, or scored whole);
* ``turns``: the programs of one assistant turn (``fill_form``, ``free_form``);
* ``lockstep``: many conversations, one batched forward per step (``Lockstep``);
* ``chat``: one live conversation (``ChatSession``).

The names below are re-exported for callers that import them from the package; code in this
repository imports them from their module.
"""

from subterra.runtime.actions import Choice, Score, force
from subterra.runtime.attention import AttentionContext
from subterra.runtime.candidates import CHOSEN_TYPES, courtesy_only, fits_type, value_spans, word_spans
from subterra.runtime.chat import ChatSession
from subterra.runtime.encoding import END, Codec, ReadingRules
from subterra.runtime.lockstep import MAX_DRAFT, Lockstep, Prefix
from subterra.runtime.offers import offered_keys, offered_values
from subterra.runtime.row_cache import RowCache, RowState, RowStep
from subterra.runtime.scoring import candidate_scores
from subterra.runtime.turns import TurnCounter, TurnRecord, fill_form, free_form, read_form

__all__ = [
    "CHOSEN_TYPES", "END", "MAX_DRAFT", "AttentionContext", "ChatSession", "Choice", "Codec", "Lockstep", "Prefix",
    "ReadingRules", "RowCache", "RowState", "RowStep", "Score", "TurnCounter", "TurnRecord", "candidate_scores",
    "courtesy_only", "fill_form", "fits_type", "force", "free_form", "offered_keys", "offered_values", "read_form",
    "value_spans", "word_spans",
]
