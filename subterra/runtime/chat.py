"""One live conversation with a compiled model (``subterra chat``): the runtime for one user."""

from __future__ import annotations

from typing import TYPE_CHECKING

from subterra.forms import Form, user_say
from subterra.runtime.actions import Choice, Score
from subterra.runtime.encoding import Codec, ReadingRules
from subterra.runtime.lockstep import MAX_DRAFT, greedy, penalties
from subterra.runtime.scoring import score_candidates
from subterra.runtime.turns import TurnCounter, fill_form

if TYPE_CHECKING:
    from subterra.workflow import Workflow


class ChatSession:
    """One live conversation with a compiled model (``subterra chat``): the runtime for one user.

    Forced tokens (the user's message, the form's structure) go through the model in one forward
    each; only the model's own choices are decoded token by token, a say line with its draft
    (``Lockstep``: the chosen token and up to ``max_draft`` drafted ones in one forward, kept up to
    the first greedy decoding would not pick; the cache is cut back to what was kept).
    """

    def __init__(self, model_dir: str, wf: Workflow, max_say_tokens: int = 96, max_draft: int = MAX_DRAFT,
                 rules: ReadingRules = ReadingRules(), today=None):
        import numpy as np
        import torch
        from transformers import DynamicCache

        from subterra.lexicon import load_lexicon, whole_runs
        from subterra.student import load_compiled

        self.torch, self.np = torch, np
        self.tokenizer, self.model = load_compiled(model_dir)
        self.codec = Codec(self.tokenizer, wf, load_lexicon(model_dir), whole_runs(model_dir), rules)
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
        self.rules = rules

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
                            rules=self.rules)
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
