"""The shared-context attention (``subterra.runtime.attention``): rows packed into one forward over a
``RowCache`` attend as each row's own forward would; each forward reads only the context it is
handed."""

import pytest

from subterra.runtime.actions import Choice
from subterra.runtime.attention import SHARED_ATTENTION, AttentionContext
from subterra.runtime.lockstep import Lockstep
from subterra.runtime.row_cache import RowCache, RowStep

from conftest import sharp_model_and_prompts


def test_a_packed_step_attends_as_each_rows_own_forward(trained, corpus):
    """Rows feeding runs of different lengths (none, one token, several) after a shared prefix,
    packed into one sequence over a RowCache: each token's hidden state is the one a plain forward
    of its row alone gives (last tokens and the rest of the runs attend apart)."""
    import torch

    _, model, _, prompts = sharp_model_and_prompts(trained, corpus)
    prefix, rows = prompts[0][:5], [p[5:] for p in prompts]
    decoder = model.get_decoder()
    with torch.inference_mode():
        shared = model(input_ids=torch.tensor([prefix]), use_cache=True).past_key_values
        segments = [[(layer.keys, layer.values) for layer in shared.layers]]
        cache, fill = RowCache(model, len(rows), 64), [0] * len(rows)
        for ready in ([4, 1, 6], [3, 0, 1], [1, 5, 2]):
            step = RowStep.of(cache, fill, ready)
            tokens = [t for r, k in enumerate(ready) for t in rows[r][fill[r] : fill[r] + k]]
            with AttentionContext(model, segments, step) as attention:
                packed = decoder(input_ids=torch.tensor([tokens]), position_ids=(step.token_positions + len(prefix))[None],
                                 use_cache=False, attention_context=attention).last_hidden_state[0]
            at = 0
            for r, k in enumerate(ready):
                fill[r] += k
                alone = decoder(input_ids=torch.tensor([prefix + rows[r][: fill[r]]])).last_hidden_state[0, len(prefix):]
                torch.testing.assert_close(packed[at : at + k], alone[fill[r] - k : fill[r]], atol=1e-4, rtol=1e-4)
                at += k


def test_forwards_of_two_models_at_once_each_attend_to_their_own_context(trained, corpus):
    """Each forward is handed its own ``AttentionContext``: two models decoding at once, one thread
    each (a server serving two workflows), each with its own shared prefix, choose the very tokens
    each chooses alone."""
    import threading

    import torch

    def program(ids, out, n=12):
        for t in ids:
            yield ("force", t)
        for _ in range(n):
            out.append((yield Choice(None)))

    plays = []
    for seed, cut in ((0, 7), (1, 3)):  # other weights, another prefix length
        _, model, banned, prompts = sharp_model_and_prompts(trained, corpus)
        torch.manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, 0.5)
        driver = Lockstep(model, banned)
        prefix, rows = driver.encode_prefix(prompts[0][:cut]), [p[cut:] for p in prompts]

        def play(driver=driver, prefix=prefix, rows=rows):
            outputs = [[] for _ in rows]
            driver.run([program(r, o) for r, o in zip(rows, outputs)], max_len=cut + max(map(len, rows)) + 16, prefix=prefix)
            return outputs

        plays.append(play)
    alone = [play() for play in plays]
    assert alone[0] != alone[1]
    together: list[list] = [[], []]
    failures: list[BaseException] = []
    start = threading.Barrier(2)

    def serve(k: int) -> None:
        try:
            start.wait()
            for _ in range(3):
                together[k].append(plays[k]())
        except BaseException as exc:  # noqa: BLE001  reported below
            failures.append(exc)

    threads = [threading.Thread(target=serve, args=(k,)) for k in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures
    assert together == [[alone[0]] * 3, [alone[1]] * 3]


def test_a_forward_under_the_shared_attention_needs_its_context_and_the_models_own_attention_comes_back(trained, corpus):
    """A forward run inside an ``AttentionContext`` without being handed it fails loudly (never
    reads another forward's context); on leaving it, the model has its own attention again."""
    import torch

    _, model, _, prompts = sharp_model_and_prompts(trained, corpus)
    own = model.config._attn_implementation
    with pytest.raises(RuntimeError, match="attention_context"), torch.inference_mode(), AttentionContext(model, []):
        assert model.config._attn_implementation == SHARED_ATTENTION
        model(input_ids=torch.tensor([prompts[0]]), use_cache=False)
    assert model.config._attn_implementation == own
