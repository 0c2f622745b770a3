"""Choosing among candidate token sequences: a greedy walk down their trie, or every sequence
scored whole.

``choose`` is a program (``subterra.runtime.actions``): it asks its driver for a ``Choice`` at every
branching token, or for a ``Score`` of the candidates whole; ``candidate_scores`` is how a driver
answers a ``Score``, the candidates run as one batch over the context where it lies.
"""

from __future__ import annotations

from subterra.runtime.actions import Choice, Score
from subterra.runtime.attention import AttentionContext


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
    The candidates run as one batch that attends to the context where it lies (``AttentionContext``),
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
        with torch.inference_mode(), AttentionContext(model, context) as attention:
            out = model(
                input_ids=inputs.to(device),
                position_ids=positions.unsqueeze(0).expand(k, -1).to(device),
                use_cache=False,
                attention_context=attention,
            )
        logp = torch.log_softmax(out.logits.float().cpu(), -1)
        for c, s in enumerate(seqs):
            if len(s) > 1:
                positions_counted = counted[keys[c]] if counted else range(1, len(s))
                steps = torch.tensor([j - 1 for j in positions_counted if j >= 1], dtype=torch.long)
                if len(steps):
                    totals[c] += logp[row_of[c], steps, torch.tensor([s[j + 1] for j in steps.tolist()])].sum()
    return dict(zip(keys, totals.tolist()))
