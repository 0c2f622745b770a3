"""Batched lockstep decoding (``subterra.runtime.lockstep``): rows packed into one KV-cached forward a
step choose what each would alone, with a shared prefix, drafts, and rows that finish early."""

import json

from subterra.procedure import render_procedure
from subterra.runtime.actions import Choice
from subterra.runtime.encoding import Codec
from subterra.runtime.lockstep import Lockstep

from conftest import sharp_model_and_prompts


def test_lockstep_decoding_equals_plain_greedy_generation(trained, corpus):
    """Batched lockstep stepping (preallocated cache, each row's forced stretch fed whole, rows
    packed into one sequence) picks the same tokens as transformers' own greedy generation, row by row."""
    import torch

    tokenizer, model, banned, prompts = sharp_model_and_prompts(trained, corpus)
    outputs: list[list[int]] = [[] for _ in prompts]

    def program(prompt, out, n=6):
        for t in prompt:
            yield ("force", t)
        for _ in range(n):
            out.append((yield Choice(None)))

    forwards: list[float] = []
    driver = Lockstep(model, banned)
    driver.run([program(p, o) for p, o in zip(prompts, outputs)], max_len=max(map(len, prompts)) + 8, on_step=forwards.append)
    # a forced prompt goes in whole (up to max_run tokens a forward), then one forward per choice
    # but the last (nothing reads its prediction)
    assert len(forwards) == -(-max(map(len, prompts)) // driver.max_run) + 5
    for prompt, got in zip(prompts, outputs):
        with torch.inference_mode():
            expected = model.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False,
                                      suppress_tokens=banned, min_new_tokens=6)[0, len(prompt):].tolist()
        assert got == expected


def test_drafted_tokens_are_kept_only_where_greedy_decoding_picks_them(trained, corpus):
    """Speculative decoding: a choice's draft (``Choice.follow``) is fed in the same forward and
    kept up to the first token greedy decoding would not pick; a right draft saves forwards, a
    wrong one (partly or wholly) changes nothing that is generated."""
    import torch

    tokenizer, model, banned, prompts = sharp_model_and_prompts(trained, corpus)
    n = 8
    with torch.inference_mode():
        expected = [model.generate(torch.tensor([p]), max_new_tokens=n, do_sample=False, suppress_tokens=banned,
                                   min_new_tokens=n)[0, len(p):].tolist() for p in prompts]
    wrong = lambda t: (t + 1) % len(tokenizer)  # noqa: E731  a token greedy decoding does not pick there

    def program(prompt, out, draft_of):
        for t in prompt:
            yield ("force", t)
        for _ in range(n):
            k = len(out)
            out.append((yield Choice(None, follow=lambda token, limit, k=k: draft_of(k, token)[:limit])))

    drafts = {
        "right": lambda row: lambda k, token: expected[row][k + 1 :],
        "right, then wrong": lambda row: lambda k, token: expected[row][k + 1 : k + 3] + [wrong(t) for t in expected[row][k + 3 :]],
        "wrong": lambda row: lambda k, token: [wrong(t) for t in expected[row][k + 1 :]],
        "none": lambda row: lambda k, token: [],
    }
    forwards: dict[str, int] = {}
    for kind, make in drafts.items():
        outputs: list[list[int]] = [[] for _ in prompts]
        steps: list[float] = []
        driver = Lockstep(model, banned)
        driver.run([program(p, o, make(r)) for r, (p, o) in enumerate(zip(prompts, outputs))],
                   max_len=max(map(len, prompts)) + n + 2, on_step=steps.append)
        assert outputs == expected, kind
        forwards[kind] = len(steps)
    prompt_forwards = -(-max(map(len, prompts)) // driver.max_run)
    # right: the first choice and its draft in one forward, all kept; right for two tokens: three
    # tokens a forward; none and wrong: one a choice (the last choice is never fed)
    assert forwards == {"right": prompt_forwards + 1, "right, then wrong": prompt_forwards + -(-n // 3),
                        "wrong": prompt_forwards + n - 1, "none": prompt_forwards + n - 1}
    # a draft is cut where the row's room ends
    outputs = [[] for _ in prompts]
    Lockstep(model, banned, max_draft=2).run([program(p, o, drafts["right"](r)) for r, (p, o) in enumerate(zip(prompts, outputs))],
                                             max_len=max(map(len, prompts)) + n + 2)
    assert outputs == expected


def test_a_shared_prefix_is_encoded_once_and_changes_nothing(trained, mini_workflow, corpus):
    """Rows that start from a prefix encoded once (copied into every row's cache) choose the same
    tokens as rows that feed the prefix themselves."""
    import torch

    from subterra.student import load_compiled

    tokenizer, model = load_compiled(trained[1].model_dir)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    codec = Codec(tokenizer, mini_workflow)
    prefix = codec.system(render_procedure(mini_workflow))
    messages = [codec.user(json.loads(m)[1]["content"]) for m in corpus["messages"][:3]]

    def program(ids, out, n=5):
        for t in ids:
            yield ("force", t)
        for _ in range(n):
            out.append((yield Choice(None)))

    driver = Lockstep(model, codec.banned_in_say)
    together = [[] for _ in messages]
    driver.run([program(prefix + m, o) for m, o in zip(messages, together)], max_len=len(prefix) + 64)
    shared = [[] for _ in messages]
    encoded = driver.encode_prefix(prefix)
    driver.run([program(m, o) for m, o in zip(messages, shared)], max_len=len(prefix) + 64, prefix=encoded)
    assert shared == together and all(len(o) == 5 for o in shared)


def test_rows_that_finish_early_leave_the_batch_without_changing_the_others(trained, corpus):
    """Rows of very different lengths: once most are done the batch shrinks to the rest, and every
    row still chooses what it would alone; a row that runs out of room is reported as cut off."""
    import torch

    from subterra.student import load_compiled

    tokenizer, model = load_compiled(trained[1].model_dir)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    prompts = [tokenizer(json.loads(m)[1]["content"], add_special_tokens=False)["input_ids"] for m in corpus["messages"][:5]]
    lengths = [2, 3, 12, 2, 40]  # the last needs more room than the cache has

    def program(ids, out, k):
        for t in ids:
            yield ("force", t)
        for _ in range(k):
            out.append((yield Choice(None)))

    driver = Lockstep(model, list(tokenizer.all_special_ids))
    together = [[] for _ in prompts]
    max_len = max(map(len, prompts)) + 20
    cut = driver.run([program(p, o, k) for p, o, k in zip(prompts, together, lengths)], max_len=max_len)
    assert cut == [False, False, False, False, True]
    for p, k, got in zip(prompts, lengths, together):
        alone: list[int] = []
        driver.run([program(p, alone, k)], max_len=max_len)
        assert got == alone
