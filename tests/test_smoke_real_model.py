"""Smoke test on the embedded SmolLM2-135M-Instruct: a love/hate DiffMean vector does what it should."""

import pytest
import torch

import hooksteer as hs
from hooksteer.data.contrast import contrast_texts

pytestmark = pytest.mark.real_model

POSITIVE_WORDS = [" love", " happy", " wonderful", " joy", " great", " delighted", " beautiful"]
PROMPTS = ["Tell me about your day.", "What do you think of your neighbours?"]
SITE = "blocks.6.hook_resid_post"


@pytest.fixture(scope="module")
def model():
    return hs.load_model(progress=False)


@pytest.fixture(scope="module")
def love(model):
    positive, negative = contrast_texts("love_hate")
    return hs.methods.diffmean(model, positive, negative, SITE, aggregation="mean")


def positive_logprob(model, tokens, start):
    """Mean over continuation positions of log P(any positive word next)."""
    word_ids = torch.tensor([model.tokenizer.encode(w)[0] for w in POSITIVE_WORDS])
    logprobs = model(tokens).log_softmax(-1)[0, start - 1 : -1]
    return torch.logsumexp(logprobs[:, word_ids], dim=-1).mean().item()


def test_love_vector_raises_positive_word_logprob_in_greedy_continuations(model, love):
    assert love.hook_name == SITE and love.d_model == 576
    for prompt in PROMPTS:
        chat = model.to_tokens(hs.format_chat(model, prompt))
        continuation = model.generate(chat, max_new_tokens=12, do_sample=False, verbose=False, stop_at_eos=False)
        plain = positive_logprob(model, continuation, chat.shape[1])
        with hs.steer(model, love * 4.0):
            pushed = positive_logprob(model, continuation, chat.shape[1])
        with hs.steer(model, love * -4.0):
            pulled = positive_logprob(model, continuation, chat.shape[1])
        assert pushed > plain + 0.5, (prompt, plain, pushed)
        assert pulled < plain, (prompt, plain, pulled)
        assert torch.equal(model(continuation), model(continuation))  # no hooks left behind


def test_steered_generation_differs_and_unsteered_is_restored(model, love):
    chat = model.to_tokens(hs.format_chat(model, PROMPTS[0]))
    kwargs = dict(max_new_tokens=10, do_sample=False, verbose=False, stop_at_eos=False)
    before = model.generate(chat, **kwargs)
    with hs.steer(model, love * 4.0, positions="generated"):
        steered = model.generate(chat, **kwargs)
    after = model.generate(chat, **kwargs)
    assert not torch.equal(before, steered)
    assert torch.equal(before, after)
