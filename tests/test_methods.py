"""Parity tests for the vector-making methods: DiffMean, PCA, ActAdd and the random control.

Each method is checked against a hand-computed result, either on fixed activations (the activation
reader is monkeypatched) or on a tiny model whose activations are read independently with
``run_with_cache``.
"""

from __future__ import annotations

import importlib

import pytest
import torch

import hooksteer as hs
from hooksteer.methods.actadd import pad_id, pad_pair, per_position_vectors, steer_actadd
from hooksteer.methods.pca import pca_direction

torch.set_num_threads(1)

# the package re-exports functions named like their modules, so fetch the modules themselves
actadd_module = importlib.import_module("hooksteer.methods.actadd")
diffmean_module = importlib.import_module("hooksteer.methods.diffmean")
pca_module = importlib.import_module("hooksteer.methods.pca")

HOOK = "blocks.1.hook_resid_post"


def fake_reader(table: dict[str, list[list[float]]]):
    """A stand-in for collect_activations returning fixed (pos, d_model) activations per text."""

    def collect(model, texts, hook_name, *, batch_size=16):
        for text in texts:
            yield torch.tensor(table[text])

    return collect


class _Model:
    """Enough of a model for methods whose activation reader is monkeypatched."""


# ============================================================================ DiffMean
def test_diffmean_matches_hand_computed_means(monkeypatch):
    table = {"p1": [[1.0, 2.0], [3.0, 4.0]], "p2": [[5.0, 6.0]], "n1": [[1.0, 1.0]]}
    monkeypatch.setattr(diffmean_module, "collect_activations", fake_reader(table))
    mean = hs.methods.diffmean(_Model(), ["p1", "p2"], ["n1"], HOOK, aggregation="mean")
    last = hs.methods.diffmean(_Model(), ["p1", "p2"], ["n1"], HOOK, aggregation="last")
    # mean: positives -> [2, 3] and [5, 6] -> [3.5, 4.5]; minus [1, 1]
    assert mean.vector.tolist() == [2.5, 3.5]
    # last: positives -> [3, 4] and [5, 6] -> [4, 5]; minus [1, 1]
    assert last.vector.tolist() == [3.0, 4.0]
    assert mean.method == "diffmean" and mean.source["n_positive"] == 2


def test_diffmean_matches_run_with_cache_on_tiny_model(tiny_llama):
    positive, negative = ["I love sunny days", "I love my dog"], ["I hate cold rain"]

    def last_token(text: str) -> torch.Tensor:
        _, cache = tiny_llama.run_with_cache(text)
        return cache[HOOK][0, -1]

    expected = torch.stack([last_token(t) for t in positive]).mean(0) - last_token(negative[0])
    vector = hs.methods.diffmean(tiny_llama, positive, negative, HOOK, aggregation="last")
    torch.testing.assert_close(vector.vector, expected, rtol=1e-4, atol=1e-5)


# ============================================================================ PCA
def test_pca_paired_is_top_direction_of_differences(monkeypatch):
    # differences [3, 0], [-1, 0], [0, 1]: the x-axis carries most energy; mean difference (2/3, 1/3)
    table = {"p1": [[3.0, 0.0]], "p2": [[-1.0, 0.0]], "p3": [[0.0, 1.0]],
             "n1": [[0.0, 0.0]], "n2": [[0.0, 0.0]], "n3": [[0.0, 0.0]]}
    monkeypatch.setattr(pca_module, "collect_activations", fake_reader(table))
    vector = hs.methods.pca(_Model(), ["p1", "p2", "p3"], ["n1", "n2", "n3"], HOOK, mode="paired")
    torch.testing.assert_close(vector.vector, torch.tensor([2.0 / 3.0, 0.0]))
    unit = hs.methods.pca(_Model(), ["p1", "p2", "p3"], ["n1", "n2", "n3"], HOOK, scale="unit")
    torch.testing.assert_close(unit.vector, torch.tensor([1.0, 0.0]))
    assert vector.method == "pca" and vector.source["mode"] == "paired"


def test_pca_sign_points_from_negative_to_positive(monkeypatch):
    # same geometry, mirrored: the mean difference is (-2/3, 0), so the vector must point to -x
    table = {"p1": [[-3.0, 0.0]], "p2": [[1.0, 0.0]], "p3": [[0.0, 0.5]],
             "n1": [[0.0, 0.0]], "n2": [[0.0, 0.0]], "n3": [[0.0, 0.0]]}
    monkeypatch.setattr(pca_module, "collect_activations", fake_reader(table))
    vector = hs.methods.pca(_Model(), ["p1", "p2", "p3"], ["n1", "n2", "n3"], HOOK)
    assert vector.vector[0] < 0
    torch.testing.assert_close(vector.vector.abs(), torch.tensor([2.0 / 3.0, 0.0]))


def test_pca_centred_hand_example():
    positive = torch.tensor([[1.0, 0.5], [1.0, -0.5]])
    negative = torch.tensor([[-1.0, 0.5], [-1.0, -0.5]])
    torch.testing.assert_close(pca_direction(positive, negative, mode="centred"), torch.tensor([1.0, 0.0]))


def test_pca_direction_equals_covariance_eigenvector():
    generator = torch.Generator().manual_seed(0)
    positive = torch.randn(40, 6, generator=generator) + torch.tensor([2.0, 0, 0, 0, 0, 0])
    negative = torch.randn(30, 6, generator=generator)
    stacked = torch.cat([positive, negative]).double()
    centred = stacked - stacked.mean(0)
    _, eigenvectors = torch.linalg.eigh(centred.T @ centred)
    expected = eigenvectors[:, -1].float()
    got = pca_direction(positive, negative, mode="centred")
    assert abs(float(got @ expected)) == pytest.approx(1.0, abs=1e-5)
    assert float((positive @ got).mean()) > float((negative @ got).mean())


def test_pca_errors():
    with pytest.raises(ValueError, match="as many positive as negative"):
        pca_direction(torch.ones(2, 3), torch.ones(3, 3), mode="paired")
    with pytest.raises(ValueError, match="no variance"):
        pca_direction(torch.ones(2, 3), torch.ones(2, 3), mode="paired")
    with pytest.raises(ValueError, match="NaN"):
        pca_direction(torch.tensor([[float("nan"), 0.0]]), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="mode"):
        pca_direction(torch.ones(1, 2), torch.zeros(1, 2), mode="other")  # type: ignore[arg-type]


def test_pca_on_tiny_model_separates_texts(tiny_gpt2):
    positive = ["I love sunny days", "I love my friend", "This is great"]
    negative = ["I hate rainy weather", "I hate the noise", "That was awful"]
    vector = hs.methods.pca(tiny_gpt2, positive, negative, HOOK, mode="paired")
    project = lambda texts: torch.stack(  # noqa: E731
        [a.mean(0) for a in hs.activations.collect_activations(tiny_gpt2, texts, HOOK)]) @ vector.vector
    assert float(project(positive).mean()) > float(project(negative).mean())


# ============================================================================ ActAdd
def test_actadd_per_position_difference_on_fixed_activations(monkeypatch):
    captured = {}

    def fake_activations(model, tokens, hook_name):
        captured["tokens"] = tokens
        return torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [1.0, 1.0]]])

    monkeypatch.setattr(actadd_module, "activations_for_tokens", fake_activations)
    monkeypatch.setattr(actadd_module, "check_hook_name", lambda model, name: None)
    monkeypatch.setattr(actadd_module, "tokenize", lambda model, text: torch.tensor([7, 8] if text == "Love" else [9]))
    monkeypatch.setattr(actadd_module, "pad_id", lambda model, text=" ": 0)
    vector = hs.methods.actadd(_Model(), "Love", "Hate", HOOK)
    assert captured["tokens"].tolist() == [[7, 8], [9, 0]]  # shorter prompt padded at the end
    assert vector.source["per_position"] == [[1.0, 1.0], [2.0, 3.0]]
    assert vector.source["positions"] == [0, 1]
    assert vector.vector.tolist() == [1.5, 2.0]
    assert vector.method == "actadd"


def test_actadd_matches_run_with_cache(tiny_llama):
    hook = "blocks.1.hook_resid_pre"
    vector = hs.methods.actadd(tiny_llama, "I love", "I hate it so much", hook)
    pad = pad_id(tiny_llama)
    tokens = pad_pair(tiny_llama.to_tokens("I love")[0], tiny_llama.to_tokens("I hate it so much")[0], pad)
    acts = [tiny_llama.run_with_cache(tokens[i : i + 1])[1][hook][0] for i in range(2)]
    expected = acts[0] - acts[1]
    torch.testing.assert_close(torch.tensor(vector.source["per_position"]), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(vector.vector, expected.mean(0), rtol=1e-4, atol=1e-5)


def test_steer_actadd_adds_each_difference_at_its_position(tiny_llama):
    hook = "blocks.1.hook_resid_pre"
    vector = hs.methods.actadd(tiny_llama, "Love", "Hate you", hook)
    differences = torch.tensor(vector.source["per_position"])
    tokens = tiny_llama.to_tokens("The weather is nice today")

    def manual(activation, hook):
        activation = activation.clone()
        activation[:, : differences.shape[0]] += 3.0 * differences
        return activation

    with tiny_llama.hooks(fwd_hooks=[(hook, manual)]):
        expected = tiny_llama(tokens)
    with steer_actadd(tiny_llama, vector, coefficient=3.0):
        got = tiny_llama(tokens)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert len(per_position_vectors(vector)) == differences.shape[0]
    assert all(not point.fwd_hooks for point in tiny_llama.hook_dict.values())  # removed on exit


def test_steer_actadd_in_left_padded_batch_matches_single_prompts(tiny_llama):
    vector = hs.methods.actadd(tiny_llama, "Love", "Hate you", "blocks.1.hook_resid_pre")
    prompts = ["The weather is nice today and sunny", "Hi"]
    settings = {"max_new_tokens": 5, "do_sample": False, "verbose": False, "stop_at_eos": False}
    with steer_actadd(tiny_llama, vector, coefficient=3.0):
        single = [tiny_llama.generate(p, **settings) for p in prompts]
        batched = tiny_llama.generate(prompts, padding_side="left", return_type="str", **settings)
    assert batched == single


def test_actadd_rejects_empty_prompt(tiny_llama):
    with pytest.raises(ValueError, match="empty"):
        hs.methods.actadd(tiny_llama, "Love", " ", HOOK)


# ============================================================================ random control
def test_random_like_has_same_norm_and_site_and_is_seeded():
    base = hs.SteeringVector(HOOK, torch.arange(1.0, 33.0), method="diffmean")
    first, again, other = (hs.methods.random_like(base, seed=s) for s in (3, 3, 4))
    assert first.norm() == pytest.approx(base.norm(), rel=1e-6)
    assert first.hook_name == base.hook_name and first.method == "random"
    assert torch.equal(first.vector, again.vector)
    assert not torch.equal(first.vector, other.vector)
    assert abs(first.cosine_similarity(base)) < 0.9
    assert first.source == {"seed": 3, "like": "diffmean", "norm": pytest.approx(base.norm())}


def test_random_like_rejects_zero_vector():
    with pytest.raises(ValueError, match="zero"):
        hs.methods.random_like(hs.SteeringVector(HOOK, torch.zeros(4)))


def test_methods_package_exports():
    assert set(hs.methods.__all__) >= {"diffmean", "pca", "actadd", "random_like", "steer_actadd"}
