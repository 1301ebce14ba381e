"""DiffMean on tiny models: padding-invariant, aggregation modes, bad input."""

import pytest
import torch

import hooksteer as hs
from hooksteer.activations import collect_activations

POSITIVE = ["I love it", "what a joy this is to see", "lovely"]
NEGATIVE = ["I hate it", "what a pain", "awful weather today, truly"]
SITE = "blocks.1.hook_resid_post"


@pytest.mark.parametrize("aggregation", ["last", "mean"])
def test_batching_and_padding_do_not_change_the_vector(tiny_model, aggregation):
    batched = hs.methods.diffmean(tiny_model, POSITIVE, NEGATIVE, SITE, aggregation=aggregation, batch_size=8)
    single = hs.methods.diffmean(tiny_model, POSITIVE, NEGATIVE, SITE, aggregation=aggregation, batch_size=1)
    torch.testing.assert_close(batched.vector, single.vector, atol=1e-5, rtol=0)
    assert batched.method == "diffmean" and batched.source["aggregation"] == aggregation


def test_matches_hand_computed_mean_difference(tiny_llama):
    def per_text(texts, aggregation):
        acts = []
        for text in texts:
            _, cache = tiny_llama.run_with_cache(tiny_llama.to_tokens(text), names_filter=[SITE])
            a = cache[SITE][0]
            acts.append(a[-1] if aggregation == "last" else a.mean(0))
        return torch.stack(acts).mean(0)

    for aggregation in ("last", "mean"):
        expected = per_text(POSITIVE, aggregation) - per_text(NEGATIVE, aggregation)
        got = hs.methods.diffmean(tiny_llama, POSITIVE, NEGATIVE, SITE, aggregation=aggregation)
        torch.testing.assert_close(got.vector, expected, atol=1e-5, rtol=0)


def test_collect_activations_stops_at_the_site(tiny_llama):
    calls = []
    tiny_llama.blocks[2].register_forward_pre_hook(lambda *args: calls.append(1))
    acts = list(collect_activations(tiny_llama, ["hello there"], "blocks.0.hook_resid_post"))
    assert acts[0].shape == (tiny_llama.to_tokens("hello there").shape[1], tiny_llama.cfg.d_model)
    assert calls == []


def test_bad_inputs(tiny_llama):
    with pytest.raises(ValueError, match="empty"):
        hs.methods.diffmean(tiny_llama, [], NEGATIVE, SITE)
    with pytest.raises(ValueError, match="empty prompt"):
        hs.methods.diffmean(tiny_llama, ["ok", ""], NEGATIVE, SITE)
    with pytest.raises(TypeError, match="list of strings"):
        hs.methods.diffmean(tiny_llama, "I love it", NEGATIVE, SITE)
    with pytest.raises(hs.UnknownHookError, match="blocks.1.hook_resid_post"):
        hs.methods.diffmean(tiny_llama, POSITIVE, NEGATIVE, "blocks.1.hook_resid_postt")
    with pytest.raises(ValueError, match="aggregation"):
        hs.methods.diffmean(tiny_llama, POSITIVE, NEGATIVE, SITE, aggregation="max")
