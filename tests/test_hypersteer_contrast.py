"""Vectors read off the model (:mod:`hooksteer.hypersteer.contrast`): the steering prompt's mean activation
difference on its answers, site by site, and a table that holds given vectors."""

from __future__ import annotations

import pytest
import torch
from test_hypersteer_distill import BASE, STEER

import hooksteer as hs
from hooksteer.data.schema import BasePrompt, Concept
from hooksteer.distill import DistillConfig, build_distill_teacher
from hooksteer.hypersteer import (
    ConceptVectors,
    HyperSteerConfig,
    HyperSteerFileError,
    HyperSteerTrainer,
    ReadOffSteer,
    mean_loss,
    prompt_difference_vectors,
)
from hooksteer.psr.teacher import pairs_from_distill, template_suffix_length

torch.set_num_threads(1)
CONCEPTS = [Concept(id=w, title=w, steering_prompts=[s]) for w, s in zip(("rivers", "castles"), STEER, strict=False)]
PROMPTS = [BasePrompt(id=f"p{i}", text=t) for i, t in enumerate(BASE[:3])]
CONFIG = DistillConfig(max_new_tokens=5, top_k=16, batch_size=3)


@pytest.fixture
def records(tiny_llama):
    return build_distill_teacher(tiny_llama, [(c, p) for c in CONCEPTS for p in PROMPTS], CONFIG, progress=False)


def _span_activations(model, tokens: torch.Tensor, response: int, k: int, layers: list[int]) -> list[torch.Tensor]:
    """resid_post at ``layers`` on the last ``k`` prompt tokens and the ``response`` answer tokens of ``tokens``."""
    _, cache = model.run_with_cache(tokens[None], names_filter=lambda n: n.endswith("hook_resid_post"))
    n = tokens.numel()
    return [cache[f"blocks.{layer}.hook_resid_post"][0, n - response - k : n] for layer in layers]


def _mean_gap(model, records, steering_prompt: str, layers: list[int], steering=None, k: int | None = None
              ) -> list[torch.Tensor]:
    """Mean over the span tokens (the last ``k`` prompt tokens, default the template, and the answer) of
    (prompted − plain) activations, the plain run steered by ``steering`` on every token, or on the span only when
    ``k`` is given."""
    only_span = k is not None
    k = template_suffix_length(model) if k is None else k
    pairs = [p for p, r in zip(pairs_from_distill(model, records), records, strict=True)
             if r.steering_prompt == steering_prompt]
    gaps: list[list[torch.Tensor]] = [[] for _ in layers]
    for pair in pairs:
        n = pair.response.numel()
        prompted = _span_activations(model, pair.steered, n, k, layers)
        if steering is None:
            plain = _span_activations(model, pair.plain, n, k, layers)
        else:
            width = pair.plain.numel()
            positions = list(range(width - n - k, width)) if only_span else "all"
            with hs.steer(model, steering, positions=positions):
                plain = _span_activations(model, pair.plain, n, k, layers)
        for i in range(len(layers)):
            gaps[i].append(prompted[i] - plain[i])
    return [torch.cat(g).mean(dim=0) for g in gaps]


def test_one_site_is_the_mean_activation_difference_on_the_answers(tiny_llama, records):
    vectors = prompt_difference_vectors(tiny_llama, records, [1])
    assert list(vectors) == [c.steering_prompts[0] for c in CONCEPTS]
    for steering_prompt, stack in vectors.items():
        assert stack.shape == (1, tiny_llama.cfg.d_model)
        expected = _mean_gap(tiny_llama, records, steering_prompt, [1])[0]
        torch.testing.assert_close(stack[0], expected, atol=1e-4, rtol=1e-4)
        assert float(stack.norm()) > 0
    first, second = vectors.values()
    assert not torch.allclose(first, second)  # each steering prompt its own vector


def test_steered_by_its_read_off_vectors_the_model_matches_the_prompted_mean_at_every_site(tiny_llama, records):
    layers = [0, 1, 2]
    vectors = prompt_difference_vectors(tiny_llama, records, layers)
    table = ConceptVectors.from_vectors(tiny_llama, vectors, HyperSteerConfig(layers=layers))
    for steering_prompt in vectors:
        before = _mean_gap(tiny_llama, records, steering_prompt, layers)
        after = _mean_gap(tiny_llama, records, steering_prompt, layers, steering=table.vector(steering_prompt))
        for gap_before, gap_after in zip(before, after, strict=True):  # each site adds what the sites below did not
            assert float(gap_after.norm()) < 1e-3 * max(float(gap_before.norm()), 1.0)
        # the upper sites are not the plain differences: they are net of what the lower sites already caused
        assert not torch.allclose(vectors[steering_prompt][2], before[2], atol=1e-4)


def test_answer_positions_read_the_last_prompt_token_and_the_answer_and_steer_only_there(tiny_llama, records):
    """``positions="answer"``: the mean runs over the prompt's last token and the answer; steered there (and only
    there) by the vectors, the model's mean activation on those tokens is the prompted model's at every site."""
    layers = [0, 1, 2]
    vectors = prompt_difference_vectors(tiny_llama, records, layers, positions="answer")
    everywhere = prompt_difference_vectors(tiny_llama, records, [1])
    config = HyperSteerConfig(layers=layers, positions="answer")
    table = ConceptVectors.from_vectors(tiny_llama, vectors, config)
    for steering_prompt, stack in vectors.items():
        torch.testing.assert_close(stack[0], _mean_gap(tiny_llama, records, steering_prompt, [0], k=1)[0],
                                   atol=1e-4, rtol=1e-4)
        assert not torch.allclose(stack[1], everywhere[steering_prompt][0], atol=1e-4)  # another span, another mean
        before = _mean_gap(tiny_llama, records, steering_prompt, layers, k=1)
        after = _mean_gap(tiny_llama, records, steering_prompt, layers, steering=table.vector(steering_prompt), k=1)
        for gap_before, gap_after in zip(before, after, strict=True):
            assert float(gap_after.norm()) < 1e-3 * max(float(gap_before.norm()), 1.0)
    hyper = ReadOffSteer.read_off(tiny_llama, records, config)
    torch.testing.assert_close(hyper.vectors(list(vectors)), torch.stack(list(vectors.values())))  # gain 1, bias 0
    with pytest.raises(ValueError, match="positions must be 'all' or 'answer'"):
        prompt_difference_vectors(tiny_llama, records, [1], positions="prompt")
    with pytest.raises(ValueError, match="positions 'all' or 'answer'"):
        ReadOffSteer(tiny_llama, list(vectors), HyperSteerConfig(layer=1, positions="prompt"))


def test_a_table_of_given_vectors_round_trips_and_refuses_what_it_cannot_hold(tiny_llama, records, tmp_path):
    vectors = prompt_difference_vectors(tiny_llama, records, [0, 2])
    table = ConceptVectors.from_vectors(tiny_llama, vectors, HyperSteerConfig(layers=[0, 2]))
    table.save(tmp_path / "read_off")
    loaded = ConceptVectors.load(tmp_path / "read_off", tiny_llama)
    for key, stack in vectors.items():
        torch.testing.assert_close(loaded.vectors(key)[0], stack)
    with pytest.raises(ValueError, match="shape"):
        ConceptVectors.from_vectors(tiny_llama, {k: v[0] for k, v in vectors.items()}, HyperSteerConfig(layers=[0, 2]))
    with pytest.raises(ValueError, match="finite"):
        ConceptVectors.from_vectors(tiny_llama, {k: v * float("nan") for k, v in vectors.items()},
                                    HyperSteerConfig(layers=[0, 2]))
    with pytest.raises(ValueError, match="ungated"):
        ConceptVectors.from_vectors(tiny_llama, vectors, HyperSteerConfig(layers=[0, 2], gate="concept"))
    oracle = ConceptVectors.oracle(tiny_llama, [*vectors, "Write about music."], HyperSteerConfig(layers=[0, 2]))
    with pytest.raises(ValueError, match="Write about music"):
        oracle.set_vectors(vectors)
    single = ConceptVectors.from_vectors(tiny_llama, prompt_difference_vectors(tiny_llama, records, [1]),
                                         HyperSteerConfig(layer=1))  # (1, d_model) stacks fit a one-site table
    assert single.vectors(list(vectors)[0]).shape == (1, tiny_llama.cfg.d_model)


def test_bad_input_is_refused(tiny_llama, records):
    with pytest.raises(ValueError, match="no distillation records"):
        prompt_difference_vectors(tiny_llama, [], [1])
    with pytest.raises(ValueError, match="block indices"):
        prompt_difference_vectors(tiny_llama, records, [3])


def test_read_off_steer_starts_at_the_read_off_vectors_and_trains_only_its_gains_and_biases(tiny_llama, records):
    config = HyperSteerConfig(layers=[0, 2], lr=0.05, batch_size=3, max_steps=20, eval_every=0)
    train = [r for r in records if r.steering_prompt == STEER[0]]
    new = [r for r in records if r.steering_prompt == STEER[1]]
    hyper = ReadOffSteer.read_off(tiny_llama, train, config)
    read = prompt_difference_vectors(tiny_llama, train, [0, 2])[STEER[0]]
    torch.testing.assert_close(hyper.vectors(STEER[0])[0], read)  # gain 1, bias 0
    with pytest.raises(KeyError, match="add_prompts"):
        hyper.vectors(STEER[1])
    table = hyper.table.detach().clone()
    before = mean_loss(hyper, train)
    HyperSteerTrainer(hyper, train, progress=False).train()
    assert mean_loss(hyper, train) < before
    torch.testing.assert_close(hyper.table, table)  # D is read, never trained
    assert not torch.allclose(hyper.site_gain.detach(), torch.ones(2)) and float(hyper.site_bias.detach().norm()) > 0
    new_read = prompt_difference_vectors(tiny_llama, new, [0, 2])  # a concept never trained on
    hyper.add_prompts(new_read)
    expected = hyper.site_gain.detach()[:, None] * new_read[STEER[1]] + hyper.site_bias.detach()
    torch.testing.assert_close(hyper.vectors(STEER[1])[0], expected)
    torch.testing.assert_close(hyper.table[0], table[0])  # the known rows are kept
    assert not torch.allclose(hyper.vectors(STEER[0]), hyper.vectors(STEER[1]))


def test_read_off_steer_saves_its_gains_and_is_not_mistaken_for_a_vector_table(tiny_llama, records, tmp_path):
    hyper = ReadOffSteer.read_off(tiny_llama, records, HyperSteerConfig(layer=1))
    with torch.no_grad():
        hyper.site_gain.fill_(0.5)
        hyper.site_bias.normal_()
    hyper.save(tmp_path / "read_off")
    loaded = ReadOffSteer.load(tmp_path / "read_off", tiny_llama)
    assert loaded.keys == hyper.keys and not loaded.table.requires_grad
    torch.testing.assert_close(loaded.vectors(hyper.keys), hyper.vectors(hyper.keys))
    assert loaded.vectors(STEER[0]).shape == (1, tiny_llama.cfg.d_model)
    with pytest.raises(HyperSteerFileError, match="ReadOffSteer.load"):
        ConceptVectors.load(tmp_path / "read_off", tiny_llama)
    ConceptVectors.oracle(tiny_llama, hyper.keys, HyperSteerConfig(layer=1)).save(tmp_path / "table")
    with pytest.raises(HyperSteerFileError, match="ConceptVectors.load"):
        ReadOffSteer.load(tmp_path / "table", tiny_llama)
    with pytest.raises(ValueError, match="floor"):
        ReadOffSteer(tiny_llama, hyper.keys, HyperSteerConfig(layer=1), shared=True)
    with pytest.raises(ValueError, match="ungated"):
        ReadOffSteer(tiny_llama, hyper.keys, HyperSteerConfig(layer=1, gate="shared"))
