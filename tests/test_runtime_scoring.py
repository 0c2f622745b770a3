"""Candidate sequences scored whole (``subterra.runtime.scoring``)."""

import pytest

from subterra.runtime.scoring import candidate_scores


def test_candidates_scored_over_a_shared_context_equal_a_plain_forward(trained):
    """Scoring candidates that attend to the context where it lies (a procedure prefix and a
    row's own tokens, never copied per candidate) gives the log-probabilities of running each
    context + candidate through the model from scratch."""
    import torch

    from subterra.student import load_compiled

    tokenizer, model = load_compiled(trained[1].model_dir)
    torch.manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    ids = tokenizer("I would like to fly to Cape Town on 9 May 2027, please.", add_special_tokens=False)["input_ids"]
    head, tail = ids[:7], ids[7:]
    candidates = {"a": ids[:3], "b": ids[3:8], "c": [ids[0]], "d": ids[5:7] + ids[1:2]}
    with torch.inference_mode():
        first = model(input_ids=torch.tensor([head]), use_cache=True)
        second = model(input_ids=torch.tensor([tail]), use_cache=True, position_ids=torch.arange(len(head), len(ids))[None],
                       past_key_values=first.past_key_values)
    segments = [[(l.keys[:, :, : len(head)], l.values[:, :, : len(head)]) for l in first.past_key_values.layers],
                [(l.keys[:, :, len(head):], l.values[:, :, len(head):]) for l in first.past_key_values.layers]]
    got = candidate_scores(model, segments, len(ids), second.logits[0, -1].float().numpy(), candidates)
    for key, seq in candidates.items():
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([ids + seq])).logits[0].float()
        logp = torch.log_softmax(logits, -1)
        expected = sum(float(logp[len(ids) - 1 + j, t]) for j, t in enumerate(seq))
        assert got[key] == pytest.approx(expected, abs=1e-3), key
