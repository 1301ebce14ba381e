"""The bridge's fast generation path (weight-sharing HF twin + replayed hooks) against references.

The reference is an *uncached* greedy loop: the full sequence is re-run at every step, so it does not
depend on any KV cache (a broken cache — e.g. a transformers release the bridge does not support —
makes cached generation diverge from it after the first token).
"""

from __future__ import annotations

import pytest
import torch

import hooksteer as hs
from hooksteer.fast_generation import fast_path_hooks, hf_twin, installed_hook_count
from hooksteer.generation import generate_tokens
from hooksteer.hooks import ReluGate

PROMPTS = ["the cat sat on the mat", "a dog", "hello there my friend, how are you"]
NEW = 6


def _uncached_greedy(bridge, prompt: str, new_tokens: int) -> list[int]:
    ids = bridge.tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        for _ in range(new_tokens):
            logits = bridge.original_model(ids).logits
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids[0, -new_tokens:].tolist()


def _tokens(bridge, *, fast: bool) -> list[list[int]]:
    rows = generate_tokens(bridge, PROMPTS, max_new_tokens=NEW, stop_at_eos=False, fast=fast)
    return [row.tolist() for row in rows]


@pytest.fixture
def vector(tiny_bridge):
    d_model = tiny_bridge.cfg.d_model
    return hs.SteeringVector("blocks.1.hook_resid_post", torch.randn(d_model, generator=torch.Generator().manual_seed(3)))


def test_twin_shares_the_bridges_weights(tiny_bridge):
    twin = hf_twin(tiny_bridge)
    assert hf_twin(tiny_bridge) is twin
    wrapped = dict(tiny_bridge.original_model.named_parameters())
    shared = dict(twin.named_parameters())
    name = "model.layers.0.self_attn.q_proj.weight"
    wrapped_name = next(n for n in wrapped if n.replace("._original_component", "") == name)
    assert shared[name] is wrapped[wrapped_name]
    bridge_tensors = {id(p) for p in tiny_bridge.original_model.parameters()}
    assert all(id(p) in bridge_tensors for p in twin.parameters()), "every twin parameter is a bridge parameter"


def test_unsteered_fast_and_hookpoint_paths_match_uncached_greedy(tiny_bridge):
    reference = [_uncached_greedy(tiny_bridge, p, NEW) for p in PROMPTS]
    assert _tokens(tiny_bridge, fast=True) == reference
    assert _tokens(tiny_bridge, fast=False) == reference


@pytest.mark.parametrize("mode", ["constant_all", "constant_generated", "per_token", "gated", "resid_pre"])
def test_steered_fast_path_matches_hookpoints_and_uncached_greedy(tiny_bridge, vector, mode):
    kwargs: dict = {}
    steering = vector * 8.0
    if mode == "constant_generated":
        kwargs["positions"] = "generated"
    elif mode == "per_token":
        kwargs.update(per_token=torch.linspace(0.0, 3.0, 64), fill_value=0.0)
    elif mode == "gated":
        kwargs["gate"] = ReluGate(vector.vector / vector.norm(), bias=0.5)
    elif mode == "resid_pre":
        steering = hs.SteeringVector("blocks.1.hook_resid_pre", vector.vector) * 8.0
    with hs.steer(tiny_bridge, steering, **kwargs):
        assert fast_path_hooks(tiny_bridge) is not None
        fast = _tokens(tiny_bridge, fast=True)
        hookpoints = _tokens(tiny_bridge, fast=False)
        reference = [_uncached_greedy(tiny_bridge, p, NEW) for p in PROMPTS]
    unsteered = _tokens(tiny_bridge, fast=True)
    assert fast == hookpoints == reference
    assert fast != unsteered, "the steering vector should change the greedy tokens"


def test_foreign_hooks_or_unsupported_sites_use_the_hookpoint_path(tiny_bridge, vector):
    calls = []

    def spy(activation, hook):
        calls.append(hook.name)
        return activation

    with tiny_bridge.hooks(fwd_hooks=[("blocks.0.hook_resid_post", spy)]):
        assert fast_path_hooks(tiny_bridge) is None
        generate_tokens(tiny_bridge, PROMPTS[:1], max_new_tokens=2)
    assert calls, "a user's own TransformerLens hook must still fire during generation"
    mid = hs.SteeringVector("blocks.1.hook_resid_mid", vector.vector)
    with hs.steer(tiny_bridge, mid):
        assert fast_path_hooks(tiny_bridge) is None
    assert fast_path_hooks(tiny_bridge) == []


def test_twin_hooks_are_removed_after_generation_and_after_errors(tiny_bridge, vector):
    twin = hf_twin(tiny_bridge)

    def count() -> int:
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in twin.modules())

    _tokens(tiny_bridge, fast=True)  # transformers installs its own output-recording hooks on first use
    before = count()
    with hs.steer(tiny_bridge, vector):
        _tokens(tiny_bridge, fast=True)
    assert count() == before
    bad = hs.SteeringVector("blocks.1.hook_resid_post", torch.ones(tiny_bridge.cfg.d_model))
    with pytest.raises(IndexError):
        with hs.steer(tiny_bridge, bad, per_token=torch.ones(2)):  # too few coefficients: raises mid-generation
            _tokens(tiny_bridge, fast=True)
    assert count() == before
    assert installed_hook_count(tiny_bridge) == 0


def test_psr_steering_takes_the_fast_path_and_matches_the_hookpoint_path(tiny_bridge):
    from hooksteer.psr import PSR, PSRConfig

    d_model = tiny_bridge.cfg.d_model
    g = torch.Generator().manual_seed(5)
    psr = PSR(PSRConfig(layers=[1], d_model=d_model, positions="all"))
    psr.set_layer(1, weight=torch.randn(d_model, generator=g), bias=0.5, z=torch.randn(d_model, generator=g) * 4)
    unsteered = _tokens(tiny_bridge, fast=True)
    with psr.steer(tiny_bridge, 3.0):
        plan = fast_path_hooks(tiny_bridge)
        assert plan is not None and len(plan) == 1, "PSR hooks are hooksteer's own: the fast path applies"
        fast = _tokens(tiny_bridge, fast=True)
        slow = _tokens(tiny_bridge, fast=False)
    assert fast == slow
    assert fast != unsteered
    assert fast_path_hooks(tiny_bridge) == []
