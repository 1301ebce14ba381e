"""Steering through TransformerLens hook points: exactness, cleanup, absolute positions."""

import pytest
import torch

import hooksteer as hs
from hooksteer.hooks import AddPerToken, add_per_token, add_vector, track_positions

SITE = "blocks.1.hook_resid_post"
PROMPT = "the cat sat on the mat"


@pytest.fixture(params=["llama", "gpt2", "bridge"])
def steerable(request):
    """Every model class hooksteer supports: HookedTransformer (two architectures) and TransformerBridge."""
    return request.getfixturevalue({"llama": "tiny_llama", "gpt2": "tiny_gpt2", "bridge": "tiny_bridge"}[request.param])


def random_vector(model, seed=0, scale=1.0, site=SITE):
    g = torch.Generator().manual_seed(seed)
    return hs.SteeringVector(site, scale * torch.randn(model.cfg.d_model, generator=g))


def residual(model, tokens, site=SITE):
    _, cache = model.run_with_cache(tokens, names_filter=[site])
    return cache[site]


def no_hooks_left(model):
    return all(not hp.fwd_hooks and not hp.bwd_hooks for hp in model.hook_dict.values()) and not any(
        block._forward_pre_hooks for block in model.blocks
    )


@pytest.mark.parametrize(
    "positions, steered",
    [("all", None), ([1, 4], [1, 4]), ("prompt", None)],
)
def test_adds_exactly_alpha_v_at_chosen_positions_only(steerable, positions, steered):
    model = steerable
    tokens = model.to_tokens(PROMPT)
    steered = range(tokens.shape[1]) if steered is None else steered
    v = random_vector(model)
    clean = residual(model, tokens)
    with hs.steer(model, v * 3.0, positions=positions):
        dirty = residual(model, tokens)
    diff = (dirty - clean)[0]
    for pos in range(tokens.shape[1]):
        if pos in steered:
            torch.testing.assert_close(diff[pos], 3.0 * v.vector, atol=1e-5, rtol=0)
        else:
            assert torch.equal(dirty[0, pos], clean[0, pos])


def test_generated_positions_leave_the_prompt_untouched(tiny_llama):
    model = tiny_llama
    tokens = model.to_tokens(PROMPT)
    clean = model(tokens)
    with hs.steer(model, random_vector(model, scale=10.0), positions="generated"):
        assert torch.equal(model(tokens), clean)


def test_exit_restores_exact_logits_and_leaves_no_hooks(steerable):
    model = steerable
    tokens = model.to_tokens(PROMPT)
    clean = model(tokens)
    with hs.steer(model, random_vector(model, scale=5.0)):
        steered = model(tokens)
    assert not torch.allclose(steered, clean)
    assert torch.equal(model(tokens), clean)
    assert no_hooks_left(model)


def test_exception_inside_context_removes_hooks(tiny_llama):
    model = tiny_llama
    tokens = model.to_tokens(PROMPT)
    clean = model(tokens)
    with pytest.raises(RuntimeError, match="boom"):
        with hs.steer(model, random_vector(model, scale=5.0), positions="generated"):
            model(tokens)
            raise RuntimeError("boom")
    assert no_hooks_left(model)
    assert torch.equal(model(tokens), clean)


def test_exception_inside_a_hook_removes_hooks(tiny_llama):
    model = tiny_llama
    tokens = model.to_tokens(PROMPT)
    with pytest.raises(IndexError, match="fill_value"):
        with hs.steer(model, random_vector(model), per_token=torch.ones(2)):
            model(tokens)
    assert no_hooks_left(model)


def test_combined_v_and_minus_v_equals_no_steering(steerable):
    model = steerable
    tokens = model.to_tokens(PROMPT)
    v = random_vector(model, scale=4.0)
    clean = model(tokens)
    with hs.steer(model, v, -v):
        assert torch.equal(model(tokens), clean)


def test_simultaneous_sites_each_receive_their_vector(tiny_llama):
    model = tiny_llama
    tokens = model.to_tokens(PROMPT)
    a = random_vector(model, seed=1, site="blocks.0.hook_resid_post")
    b = random_vector(model, seed=2, site="blocks.2.hook_resid_pre")
    sites = [a.hook_name, b.hook_name, "blocks.1.hook_resid_pre"]
    _, clean = model.run_with_cache(tokens, names_filter=sites)
    with hs.steer(model, hs.SteeringSet([a, b])) as handle:
        assert sorted(handle.hook_names) == sorted([a.hook_name, b.hook_name])
        _, dirty = model.run_with_cache(tokens, names_filter=sites)
    torch.testing.assert_close(dirty[a.hook_name] - clean[a.hook_name], a.vector.expand(1, tokens.shape[1], -1), atol=1e-5, rtol=0)
    # the layer-1 input already carries layer 0's vector (propagated through block 1's residual)
    torch.testing.assert_close(dirty["blocks.1.hook_resid_pre"], dirty[a.hook_name])
    steered_at_b = dirty[b.hook_name] - model.blocks[1](dirty["blocks.1.hook_resid_pre"])
    torch.testing.assert_close(steered_at_b, b.vector.expand(1, tokens.shape[1], -1), atol=1e-4, rtol=0)


def test_steering_moves_output_in_the_intended_direction(tiny_llama):
    """Adding the unembedding direction of a token at the last layer raises that token's logit."""
    model = tiny_llama
    tokens = model.to_tokens(PROMPT)
    target = 7
    direction = model.W_U[:, target].detach().clone()
    site = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    vector = hs.SteeringVector(site, direction / direction.norm())
    clean = model(tokens).log_softmax(-1)[0, :, target]
    with hs.steer(model, vector * 20.0):
        steered = model(tokens).log_softmax(-1)[0, :, target]
    assert (steered > clean).all()


# --------------------------------------------------------------------------- absolute positions
def recorded_positions(model, prompt_tokens, max_new_tokens, use_cache):
    seen = []

    def coefficient(absolute):
        assert absolute.shape[0] == prompt_tokens.shape[0]
        seen.append(absolute[0].tolist())
        return torch.zeros_like(absolute, dtype=torch.float32)

    with hs.steer(model, random_vector(model), per_token=coefficient):
        model.generate(prompt_tokens, max_new_tokens=max_new_tokens, use_past_kv_cache=use_cache,
                       do_sample=False, stop_at_eos=False, verbose=False)
    return seen


def test_cached_generate_sees_absolute_positions(steerable):
    tokens = steerable.to_tokens(PROMPT)
    n = tokens.shape[1]
    seen = recorded_positions(steerable, tokens, 4, use_cache=True)
    assert seen == [list(range(n)), [n], [n + 1], [n + 2]]
    seen_uncached = recorded_positions(steerable, tokens, 3, use_cache=False)
    assert seen_uncached == [list(range(n)), list(range(n + 1)), list(range(n + 2))]


@pytest.mark.parametrize("mode", ["per_token", "generated", "answer"])
def test_cached_and_uncached_generation_agree_under_position_dependent_steering(steerable, mode):
    model = steerable
    tokens = model.to_tokens(PROMPT)
    v = random_vector(model, seed=3, scale=6.0)
    g = torch.Generator().manual_seed(4)
    if mode == "per_token":
        kwargs = {"per_token": torch.randn(32, generator=g) * 2.0}
    else:
        kwargs = {"positions": mode}
    outputs = {}
    for use_cache in (True, False):
        with hs.steer(model, v, **kwargs):
            outputs[use_cache] = model.generate(tokens, max_new_tokens=8, use_past_kv_cache=use_cache,
                                                do_sample=False, stop_at_eos=False, verbose=False)
    assert torch.equal(outputs[True], outputs[False])
    unsteered = model.generate(tokens, max_new_tokens=8, do_sample=False, stop_at_eos=False, verbose=False)
    assert not torch.equal(outputs[True], unsteered), "steering too weak for the test to mean anything"


def test_answer_positions_steer_the_last_prompt_token_and_every_generated_one(steerable):
    """``positions="answer"`` = explicit absolute indices ``n−1, n, n+1, …`` (every position predicting a generated
    token), in cached generation too; a plain forward of the prompt is steered at its last token only."""
    model = steerable
    tokens = model.to_tokens(PROMPT)
    n = tokens.shape[1]
    v = random_vector(model, seed=11, scale=8.0)
    clean = residual(model, tokens)
    with hs.steer(model, v, positions="answer"):
        dirty = residual(model, tokens)
    assert torch.equal(dirty[0, : n - 1], clean[0, : n - 1])
    torch.testing.assert_close(dirty[0, n - 1] - clean[0, n - 1], v.vector, atol=1e-5, rtol=0)
    kwargs = dict(max_new_tokens=6, do_sample=False, stop_at_eos=False, verbose=False)
    outputs = {}
    for name, positions in (("answer", "answer"), ("explicit", list(range(n - 1, n + 5))), ("generated", "generated")):
        with hs.steer(model, v, positions=positions):
            outputs[name] = model.generate(tokens, **kwargs)
    assert torch.equal(outputs["answer"], outputs["explicit"])
    assert not torch.equal(outputs["answer"], outputs["generated"]), "the last prompt token's steering must count"


def test_cached_generate_tokens_match_teacher_forced_steered_forward(tiny_llama):
    """Per-token steering in cached generate equals a single full forward with the same schedule."""
    model = tiny_llama
    tokens = model.to_tokens(PROMPT)
    v = random_vector(model, seed=5, scale=6.0)
    schedule = torch.randn(32, generator=torch.Generator().manual_seed(6)) * 2.0
    with hs.steer(model, v, per_token=schedule):
        generated = model.generate(tokens, max_new_tokens=6, do_sample=False, stop_at_eos=False, verbose=False)
        full_logits = model(generated)
    predicted = full_logits[0, tokens.shape[1] - 1 : -1].argmax(-1)
    assert torch.equal(predicted, generated[0, tokens.shape[1] :])


def test_per_token_without_enough_coefficients_can_fill(tiny_llama):
    model = tiny_llama
    tokens = model.to_tokens(PROMPT)
    v = random_vector(model, scale=3.0)
    clean = residual(model, tokens)
    with hs.steer(model, v, per_token=torch.tensor([1.0, 2.0]), fill_value=0.0):
        dirty = residual(model, tokens)
    diff = (dirty - clean)[0]
    torch.testing.assert_close(diff[1], 2.0 * v.vector, atol=1e-5, rtol=0)
    assert torch.equal(diff[2:], torch.zeros_like(diff[2:]))


def test_importable_hook_functions_with_model_hooks(tiny_llama):
    model = tiny_llama
    tokens = model.to_tokens(PROMPT)
    v = random_vector(model)
    clean = residual(model, tokens)
    with model.hooks(fwd_hooks=[(SITE, add_vector(v, 2.0))]):
        dirty = residual(model, tokens)
    torch.testing.assert_close((dirty - clean)[0, 3], 2.0 * v.vector, atol=1e-5, rtol=0)
    with track_positions(model) as tracker:
        hook = add_per_token(v.vector, lambda pos: (pos == 2).float() * 5.0, tracker=tracker)
        assert isinstance(hook, AddPerToken)
        with model.hooks(fwd_hooks=[(SITE, hook)]):
            dirty = residual(model, tokens)
    diff = (dirty - clean)[0]
    torch.testing.assert_close(diff[2], 5.0 * v.vector, atol=1e-5, rtol=0)
    assert torch.equal(diff[3], torch.zeros_like(diff[3]))
    assert no_hooks_left(model)


def test_gated_steering_uses_each_tokens_activation(tiny_llama):
    model = tiny_llama
    tokens = model.to_tokens(PROMPT)
    v = random_vector(model)
    clean = residual(model, tokens)
    w = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(8))
    gate = hs.ReluGate(w, bias=-(clean[0] @ w).median())
    expected_gate = gate(clean)[0].detach()
    assert (expected_gate == 0).any() and (expected_gate > 0).any()
    with hs.steer(model, v, gate=gate, coefficient=2.0):
        dirty = residual(model, tokens)
    expected = 2.0 * expected_gate[:, None] * v.vector
    torch.testing.assert_close((dirty - clean)[0], expected, atol=1e-5, rtol=0)


def test_relu_gate_with_zero_weight_equals_constant_steering(tiny_llama):
    model = tiny_llama
    tokens = model.to_tokens(PROMPT)
    v = random_vector(model)
    with hs.steer(model, v * 1.5):
        constant = model(tokens)
    with hs.steer(model, v, gate=hs.ReluGate(torch.zeros(model.cfg.d_model), bias=1.5)):
        gated = model(tokens)
    torch.testing.assert_close(gated, constant, atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- bad input
def test_unknown_hook_name_lists_close_valid_names(tiny_llama):
    v = hs.SteeringVector("blocks.1.hook_resid_pots", torch.ones(tiny_llama.cfg.d_model))
    with pytest.raises(hs.UnknownHookError, match=r"blocks\.1\.hook_resid_post") as info:
        with hs.steer(tiny_llama, v):
            pass
    assert "hook_resid_{pre,mid,post}" in str(info.value)
    assert no_hooks_left(tiny_llama)


def test_wrong_width_vector_rejected(tiny_llama):
    v = hs.SteeringVector(SITE, torch.ones(tiny_llama.cfg.d_model + 1))
    with pytest.raises(ValueError, match="another model"):
        with hs.steer(tiny_llama, v):
            pass


def test_bad_arguments(tiny_llama):
    v = random_vector(tiny_llama)
    with pytest.raises(ValueError, match="at least one"):
        with hs.steer(tiny_llama):
            pass
    with pytest.raises(ValueError, match="positions must be one of"):
        with hs.steer(tiny_llama, v, positions="everywhere"):
            pass
    with pytest.raises(ValueError, match=">= 0"):
        with hs.steer(tiny_llama, v, positions=[-1]):
            pass
    with pytest.raises(ValueError, match="PositionTracker"):
        add_vector(v, positions="generated")
    with pytest.raises(ValueError, match="NaN/inf"):
        add_vector(torch.tensor([float("nan")] * tiny_llama.cfg.d_model))
    with pytest.raises(ValueError, match="NaN/inf"):
        with hs.steer(tiny_llama, v, per_token=torch.tensor([1.0, float("inf")])):
            pass
    with pytest.raises(TypeError, match="SteeringVector"):
        with hs.steer(tiny_llama, torch.ones(3)):
            pass
    assert no_hooks_left(tiny_llama)


@pytest.mark.parametrize("kind", ["llama", "bridge"])
def test_left_padded_batch_uses_each_rows_own_positions(kind, request):
    """A per-token schedule gives the same tokens for a prompt whether it is generated alone or
    left-padded in a batch next to a longer prompt."""
    model = request.getfixturevalue({"llama": "tiny_llama", "bridge": "tiny_bridge"}[kind])
    prompts = ["the cat sat on the mat and looked out", "a dog"]
    v = random_vector(model, seed=9, scale=6.0)
    schedule = torch.randn(64, generator=torch.Generator().manual_seed(10)) * 2.0
    kwargs = dict(max_new_tokens=6, do_sample=False, stop_at_eos=False, verbose=False, return_type="tokens")
    with hs.steer(model, v, per_token=schedule) as handle:
        batched = model.generate(prompts, padding_side="left", **kwargs)
        lengths = handle.tracker.prompt_lengths.tolist()
        alone = [model.generate(p, **kwargs)[0] for p in prompts]
    assert lengths == [len(model.to_tokens(p)[0]) for p in prompts]
    for row, single in enumerate(alone):
        assert torch.equal(batched[row, -6:], single[-6:])
    with hs.steer(model, v, positions="generated") as handle:
        batched = model.generate(prompts, padding_side="left", **kwargs)
        alone = [model.generate(p, **kwargs)[0] for p in prompts]
    for row, single in enumerate(alone):
        assert torch.equal(batched[row, -6:], single[-6:])
