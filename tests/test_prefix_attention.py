"""Prefix steering (hooksteer.prefix_attention): chosen positions attend to a prefix's keys and values."""

from __future__ import annotations

import threading

import pytest
import torch

import hooksteer as hs
from hooksteer.data.schema import BasePrompt, Concept
from hooksteer.evaluate.base import JudgeScores
from hooksteer.evaluate.methods import GenerationSettings, PrefixSteering, build_methods
from hooksteer.evaluate.protocol import evaluate
from hooksteer.fast_generation import hf_twin
from hooksteer.generation import chat_prompts, generate_texts
from hooksteer.prefix_attention import (
    POSITIONS,
    PrefixKV,
    attend_to_prefix,
    generate_with_prefix,
    prefix_from_tokens,
    steering_prompt_prefix,
)


@pytest.fixture
def twin(tiny_bridge):
    return hf_twin(tiny_bridge)


def _ids(twin, n: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(5, twin.config.vocab_size, (n,), generator=generator)


@torch.no_grad()
def test_prefix_reproduces_the_full_sequence_also_through_the_kv_cache(twin):
    """B attending to A's keys and values (placed before it) computes what A+B computes on B's tokens."""
    a, b = _ids(twin, 7, 0), _ids(twin, 9, 1)
    full = twin(input_ids=torch.cat([a, b])[None]).logits[0, 7:]
    plain = twin(input_ids=b[None]).logits[0]
    prefix = prefix_from_tokens(twin, torch.cat([a, b]), start=0, span=7)
    assert prefix.span == 7 and len(prefix.keys) == twin.config.num_hidden_layers
    with attend_to_prefix(twin, prefix, positions="all"):
        steered = twin(input_ids=b[None]).logits[0]
        first = twin(input_ids=b[None, :5], use_cache=True)
        step = twin(input_ids=b[None, 5:6], past_key_values=first.past_key_values, use_cache=True).logits[0, -1]
    torch.testing.assert_close(steered, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(step, full[5], atol=1e-5, rtol=1e-5)
    assert (plain - full).abs().max() > 1e-2  # the prefix matters: without it B computes something else


@torch.no_grad()
def test_factor_zero_is_unsteered_and_the_factor_scales_the_effect(twin):
    a, b = _ids(twin, 6, 2), _ids(twin, 8, 3)
    prefix = prefix_from_tokens(twin, torch.cat([a, b]), start=0, span=6)
    plain = twin(input_ids=b[None]).logits[0]
    moved = []
    for factor in (0.0, 1.0, 4.0):
        with attend_to_prefix(twin, prefix, factor=factor, positions="all"):
            moved.append(float((twin(input_ids=b[None]).logits[0] - plain).abs().mean()))
    assert moved[0] < 1e-5 < moved[1] < moved[2]


@torch.no_grad()
def test_response_and_generated_modes_leave_the_request_unchanged(twin):
    a, b = _ids(twin, 5, 4), _ids(twin, 10, 5)
    prefix = prefix_from_tokens(twin, torch.cat([a, b]), start=0, span=5)
    plain = twin(input_ids=b[None]).logits[0]
    with attend_to_prefix(twin, prefix, factor=4.0, positions="response", template_tokens=3):
        response = twin(input_ids=b[None]).logits[0]
    with attend_to_prefix(twin, prefix, factor=4.0, positions="generated"):
        generated = twin(input_ids=b[None]).logits[0]
        first = twin(input_ids=b[None, :9], use_cache=True)
        step = twin(input_ids=b[None, 9:], past_key_values=first.past_key_values, use_cache=True).logits[0, -1]
    torch.testing.assert_close(response[:7], plain[:7], atol=1e-5, rtol=1e-5)  # the request: as unsteered
    assert (response[7:] - plain[7:]).abs().amax(dim=-1).min() > 1e-3       # the last 3 tokens: steered
    torch.testing.assert_close(generated, plain, atol=1e-5, rtol=1e-5)      # a prompt has no generated token
    assert (step - plain[9]).abs().max() > 1e-3                              # a generated one attends to it


@torch.no_grad()
def test_after_start_is_aligned_in_a_left_padded_batch(twin):
    """Each row of a left-padded batch gets what it gets alone (the prefix's start counts unpadded tokens)."""
    prefix = prefix_from_tokens(twin, torch.cat([_ids(twin, 3, 6), _ids(twin, 4, 7), _ids(twin, 5, 8)]), start=3,
                                span=4)
    short, long = _ids(twin, 5, 9), _ids(twin, 9, 10)
    batch = torch.stack([torch.cat([torch.zeros(4, dtype=torch.long), short]), long])
    mask = torch.stack([torch.cat([torch.zeros(4, dtype=torch.long), torch.ones(5, dtype=torch.long)]),
                        torch.ones(9, dtype=torch.long)])
    with attend_to_prefix(twin, prefix, factor=2.0, positions="after_start"):
        positions = (mask.cumsum(-1) - 1).clamp_min(0)  # as generate() numbers a left-padded row
        together = twin(input_ids=batch, attention_mask=mask, position_ids=positions).logits
        alone = [twin(input_ids=row[None]).logits[0] for row in (short, long)]
    torch.testing.assert_close(together[0, 4:], alone[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(together[1], alone[1], atol=1e-4, rtol=1e-4)
    plain = twin(input_ids=long[None]).logits[0]
    torch.testing.assert_close(alone[1][:3], plain[:3], atol=1e-5, rtol=1e-5)  # before the start: unsteered
    assert (alone[1][3:] - plain[3:]).abs().amax(dim=-1).min() > 1e-3


@torch.no_grad()
def test_the_attention_implementation_is_restored_also_after_an_error(twin):
    b = _ids(twin, 6, 11)
    prefix = prefix_from_tokens(twin, torch.cat([_ids(twin, 4, 12), b]), start=0, span=4)
    before, plain = twin.config._attn_implementation, twin(input_ids=b[None]).logits[0]
    with pytest.raises(RuntimeError, match="boom"), attend_to_prefix(twin, prefix, factor=3.0, positions="all"):
        raise RuntimeError("boom")
    assert twin.config._attn_implementation == before
    torch.testing.assert_close(twin(input_ids=b[None]).logits[0], plain)
    # another thread never sees this thread's prefix (it runs plain eager attention while one is active here)
    seen = {}
    with attend_to_prefix(twin, prefix, factor=3.0, positions="all"):
        thread = threading.Thread(target=lambda: seen.update(x=twin(input_ids=b[None]).logits[0]))
        thread.start()
        thread.join()
    torch.testing.assert_close(seen["x"], plain, atol=1e-5, rtol=1e-5)


def test_bad_arguments_are_refused(twin, tiny_bridge):
    prefix = prefix_from_tokens(twin, _ids(twin, 6, 13), start=1, span=3)
    for kwargs, message in (({"factor": -1.0}, "factor"), ({"factor": float("nan")}, "factor"),
                            ({"positions": "prompt"}, "positions"), ({"template_tokens": -1}, "template_tokens")):
        with pytest.raises(ValueError, match=message), attend_to_prefix(twin, prefix, **kwargs):
            pass
    short = PrefixKV(prefix.keys[:1], prefix.values[:1], prefix.start)
    with pytest.raises(ValueError, match="layers"), attend_to_prefix(twin, short):
        pass
    with pytest.raises(ValueError, match="does not fit"):
        prefix_from_tokens(twin, _ids(twin, 4, 14), start=2, span=5)
    with pytest.raises(ValueError, match="alike"):
        PrefixKV((prefix.keys[0],), (prefix.values[0][:, :1],), 0)
    with pytest.raises(TypeError, match="PrefixKV"):
        generate_with_prefix(tiny_bridge, ["Hi"], "volcanoes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty"):
        steering_prompt_prefix(tiny_bridge, "  ")
    assert set(POSITIONS) == {"response", "generated", "after_start", "all"}


def test_steering_prompt_prefix_is_the_prompts_span_in_the_chat_template(tiny_bridge):
    prefix = steering_prompt_prefix(tiny_bridge, "Talk about volcanoes.")
    from hooksteer.psr.teacher import plain_chat_prompt, steered_prompt_text

    steered = tiny_bridge.to_tokens(steered_prompt_text(tiny_bridge, "Talk about volcanoes.", "Reply.", "prefix"))[0]
    plain = tiny_bridge.to_tokens(plain_chat_prompt(tiny_bridge, "Reply."))[0]
    assert prefix.span == steered.shape[0] - plain.shape[0]
    span_text = tiny_bridge.tokenizer.decode(steered[prefix.start: prefix.start + prefix.span])
    assert "volcanoes" in span_text and "Reply" not in span_text
    again = prefix_from_tokens(hf_twin(tiny_bridge), steered, prefix.start, prefix.span)
    for key, other in zip(prefix.keys, again.keys, strict=True):
        torch.testing.assert_close(key, other)


def test_generate_with_prefix_steers_generation_and_factor_zero_does_not(tiny_bridge):
    prompts = ["Tell me a story.", "Describe your day, please."]
    prefix = steering_prompt_prefix(tiny_bridge, "Talk about volcanoes and lava.")
    plain = generate_texts(tiny_bridge, prompts, max_new_tokens=8)
    assert generate_with_prefix(tiny_bridge, prompts, prefix, factor=0.0, max_new_tokens=8) == plain
    steered = generate_with_prefix(tiny_bridge, prompts, prefix, factor=50.0, positions="after_start",
                                   max_new_tokens=8)
    assert steered != plain
    # chat=False takes formatted texts: the same answers
    texts = chat_prompts(tiny_bridge, prompts)
    assert generate_with_prefix(tiny_bridge, texts, prefix, factor=50.0, positions="after_start", chat=False,
                                max_new_tokens=8) == steered
    # residual steering installed with hs.steer still applies on top
    vector = hs.SteeringVector("blocks.0.hook_resid_post",
                               torch.randn(tiny_bridge.cfg.d_model, generator=torch.Generator().manual_seed(0)))
    with hs.steer(tiny_bridge, vector * 30.0):
        both = generate_with_prefix(tiny_bridge, prompts, prefix, factor=50.0, positions="after_start",
                                    max_new_tokens=8)
    assert both != steered
    assert hf_twin(tiny_bridge).config._attn_implementation == "sdpa"  # restored


def test_generate_with_prefix_refuses_foreign_hooks(tiny_bridge):
    prefix = steering_prompt_prefix(tiny_bridge, "Talk about volcanoes.")
    hook_point = tiny_bridge.hook_dict["blocks.0.hook_resid_post"]
    handle = hook_point.add_hook(lambda activation, hook: activation)
    try:
        with pytest.raises(ValueError, match="remove hooks"):
            generate_with_prefix(tiny_bridge, ["Hi there."], prefix, max_new_tokens=2)
    finally:
        tiny_bridge.reset_hooks()
    del handle


class _LengthJudge:
    """Rates by length only (the protocol's plumbing is what is tested here)."""

    name = "length"

    def rate(self, concept, instruction, outputs):
        return [JudgeScores(concept=min(2.0, len(o) / 10), instruction=1.0, fluency=1.0) for o in outputs]


def test_prefix_steering_in_the_evaluation_protocol(tiny_bridge):
    concepts = [Concept(id="dogs", title="Dogs", description="domestic animal", steering_prompts=["Talk about dogs."],
                        text="Dogs are domesticated descendants of wolves."),
                Concept(id="paris", title="Paris", description="capital of France",
                        steering_prompts=["Talk about Paris."], text="Paris is the capital of France.")]
    prompts = [BasePrompt(id=f"p{i}", text=f"Question number {i}?") for i in range(4)]
    method = PrefixSteering(factors=(1.0, 8.0))
    assert method.name == "prefix-response" and build_methods(["prefix"])[0].name == "prefix-response"
    result = evaluate(tiny_bridge, [method], concepts, prompts, judge=_LengthJudge(), factors=[0.5],
                      max_new_tokens=4, progress=False)
    rows = [r for r in result.concepts if r.method == "prefix-response"]
    assert len(rows) == 2 and {c.factor for c in rows[0].cells} == {1.0, 8.0}
    assert rows[0].info["steering_prompt"] == "Talk about dogs." and rows[0].info["prefix_tokens"] > 0
    steerer = method.prepare(tiny_bridge, concepts[0], concepts[1:])
    outputs = steerer.generate([p.text for p in prompts], [1.0, 8.0], GenerationSettings(max_new_tokens=4), seed=0)
    assert len(outputs) == 2 and all(len(row) == 4 for row in outputs)
    with pytest.raises(ValueError, match="positions"):
        PrefixSteering(positions="prompt")
    with pytest.raises(ValueError, match="duplicates"):
        PrefixSteering(factors=(1.0, 1.0))
    with pytest.raises(ValueError, match="steering prompts"):
        PrefixSteering(prompt_index=3).prepare(tiny_bridge, concepts[0], concepts[1:])


@torch.no_grad()
def test_a_pooled_prefix_is_one_key_per_layer_weighted_as_the_keys_it_stands_for(twin):
    b = _ids(twin, 8, 15)
    prefix = prefix_from_tokens(twin, torch.cat([_ids(twin, 5, 16), b]), start=0, span=5)
    pooled = prefix.pooled()
    assert pooled.span == 1 and pooled.weight == 5.0
    torch.testing.assert_close(pooled.values[-1][:, 0], prefix.values[-1].mean(dim=1))
    # five copies of one key/value attend exactly like that key/value counted five times
    repeated = PrefixKV(tuple(k[:, :1].expand(-1, 5, -1) for k in prefix.keys),
                        tuple(v[:, :1].expand(-1, 5, -1) for v in prefix.values), prefix.start)
    with attend_to_prefix(twin, repeated, positions="all"):
        full = twin(input_ids=b[None]).logits[0]
    with attend_to_prefix(twin, repeated.pooled(), positions="all"):
        summary = twin(input_ids=b[None]).logits[0]
    torch.testing.assert_close(summary, full, atol=1e-5, rtol=1e-5)
    plain = twin(input_ids=b[None]).logits[0]
    with attend_to_prefix(twin, pooled, positions="all"):
        assert (twin(input_ids=b[None]).logits[0] - plain).abs().amax(dim=-1).min() > 1e-3  # it steers every token
    method = PrefixSteering(pooled=True)
    assert method.name == "prefix-response-pooled" and method.config()["pooled"] is True
    assert "pooled" not in PrefixSteering().config()  # configs of saved evaluations stay comparable
    with pytest.raises(ValueError, match="weight"):
        PrefixKV(prefix.keys, prefix.values, 0, weight=0.0)


@torch.no_grad()
def test_a_boolean_mask_is_read_like_the_additive_one(twin):
    """The attention function accepts both mask kinds Hugging Face builds (True / 0 = attend)."""
    from hooksteer.prefix_attention import _prefix_attention

    attention = twin.model.layers[0].self_attn
    heads, kv_heads = twin.config.num_attention_heads, twin.config.num_key_value_heads
    dim = attention.head_dim
    generator = torch.Generator().manual_seed(17)
    query = torch.randn(2, heads, 5, dim, generator=generator)
    key, value = (torch.randn(2, kv_heads, 5, dim, generator=generator) for _ in range(2))
    allowed = torch.ones(2, 1, 5, 5, dtype=torch.bool).tril()
    allowed[0, :, :, :2] = False  # two padding keys in row 0
    allowed[0, :, :2, :2] = torch.eye(2, dtype=torch.bool)  # padded queries see themselves (no empty row)
    additive = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    by_bool, _ = _prefix_attention(attention, query, key, value, allowed, scaling=dim ** -0.5)
    by_float, _ = _prefix_attention(attention, query, key, value, additive, scaling=dim ** -0.5)
    torch.testing.assert_close(by_bool, by_float)
    prefix = prefix_from_tokens(twin, _ids(twin, 6, 18), start=1, span=3)
    with attend_to_prefix(twin, prefix, factor=2.0, positions="after_start"):
        steered_bool, _ = _prefix_attention(attention, query, key, value, allowed, scaling=dim ** -0.5)
        steered_float, _ = _prefix_attention(attention, query, key, value, additive, scaling=dim ** -0.5)
    torch.testing.assert_close(steered_bool, steered_float)
    assert (steered_bool - by_bool).abs().max() > 1e-4


class _VectorMethod:
    """A minimal inner method: one fixed residual vector (through ``hs.steer``, or a foreign hook), × factor."""

    name, uses_factors, factors = "vector", True, None

    def __init__(self, foreign: bool = False) -> None:
        self.foreign = foreign

    def prepare(self, model, concept, others):
        method = self

        class Steerer:
            info = {"inner": True}

            def generate(self, prompts, factors, settings, seed):
                vector = hs.SteeringVector("blocks.0.hook_resid_post", torch.ones(model.cfg.d_model))
                rows = []
                for factor in factors:
                    if method.foreign:  # a plain TransformerLens hook: generation leaves the twin
                        hook = model.hook_dict["blocks.0.hook_resid_post"]
                        hook.add_hook(lambda activation, hook, f=factor: activation + f)
                        try:
                            rows.append(generate_texts(model, prompts, max_new_tokens=settings.max_new_tokens))
                        finally:
                            model.reset_hooks()
                        continue
                    with hs.steer(model, vector * factor):
                        rows.append(generate_texts(model, prompts, max_new_tokens=settings.max_new_tokens))
                return rows

        return Steerer()

    def config(self):
        return {"name": self.name}


def test_with_prefix_runs_the_inner_method_while_the_prefix_is_attended_to(tiny_bridge):
    from hooksteer.evaluate.methods import WithPrefix

    concept = Concept(id="lava", title="Lava", description="molten rock", steering_prompts=["Talk about lava flows."],
                      text="Lava is molten rock.")
    prompts, settings = ["Tell me a story.", "Describe your day, please."], GenerationSettings(max_new_tokens=6)
    inner = _VectorMethod().prepare(tiny_bridge, concept, []).generate(prompts, [0.0, 3.0], settings, seed=0)
    method = WithPrefix(_VectorMethod(), positions="after_start", prefix_factor=50.0)
    assert method.name == "vector+prefix-after-start" and method.config()["inner"] == {"name": "vector"}
    steerer = method.prepare(tiny_bridge, concept, [])
    combined = steerer.generate(prompts, [0.0, 3.0], settings, seed=0)
    prefix = steering_prompt_prefix(tiny_bridge, "Talk about lava flows.")
    alone = generate_with_prefix(tiny_bridge, prompts, prefix, factor=50.0, positions="after_start", max_new_tokens=6)
    assert combined[0] == alone and combined[0] != inner[0]  # factor 0: the prefix alone
    assert combined[1] != alone                              # the vector still acts under the prefix
    assert steerer.info["inner"] and steerer.info["prefix_positions"] == "after_start"
    with pytest.raises(RuntimeError, match="without the bridge's Hugging Face twin"):
        WithPrefix(_VectorMethod(foreign=True)).prepare(tiny_bridge, concept, []).generate(prompts, [1.0], settings, 0)
    for bad in ({"prefix_factor": 0.0}, {"positions": "prompt"}):
        with pytest.raises(ValueError):
            WithPrefix(_VectorMethod(), **bad)
    with pytest.raises(TypeError, match="steering method"):
        WithPrefix("vector")


@torch.no_grad()
def test_attend_to_prefix_counts_the_passes_through_the_prefix(twin):
    b = _ids(twin, 6, 19)
    prefix = prefix_from_tokens(twin, torch.cat([_ids(twin, 3, 20), b]), start=0, span=3)
    with attend_to_prefix(twin, prefix, positions="all") as use:
        assert use.forward_passes == 0
        twin(input_ids=b[None])
        twin(input_ids=b[None])
    assert use.forward_passes == 2
