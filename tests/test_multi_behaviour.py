"""Multi-behaviour grid (analysis.multi_behaviour) on tiny models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import hooksteer as hs
from analysis.behaviour_data import (
    ABItem,
    available_behaviours,
    behaviour_items,
    love_items,
    myopia_items,
    split_items,
    sycophancy_items,
)
from analysis.multi_behaviour import (
    Behaviour,
    MultiBehaviourResult,
    _build_probe,
    _cache_prefixes,
    _score,
    assign_simultaneous_layers,
    caa_behaviour,
    run_grid,
)
from analysis.multi_behaviour_plot import plot_interactions
from hooksteer.testing import tiny_model

LAYERS = [0, 1, 2]
COEFFICIENTS = [-4.0, 0.0, 4.0]


def _behaviours(model, names=("myopia", "love"), n_train=6, n_eval=4):
    out = []
    for name in names:
        train, held_out = split_items(behaviour_items(name), n_train, n_eval=n_eval, seed=0)
        out.append(caa_behaviour(model, name, train, held_out, layers=LAYERS))
    return out


@pytest.fixture(scope="module")
def llama():
    torch.set_num_threads(1)
    return tiny_model("llama", seed=0)


@pytest.fixture(scope="module")
def grid(llama):
    return run_grid(llama, _behaviours(llama), layers=LAYERS, coefficients=COEFFICIENTS,
                    collapse_prompts=["hello there", "what is up"], max_new_tokens=3, progress=False)


# ------------------------------------------------------------------------------------- data
def test_items_alternate_the_behaviour_letter_and_name_their_source():
    for name in available_behaviours():
        items = behaviour_items(name)
        assert [i.matching for i in items[:4]] == ["A", "B", "A", "B"]
        assert all(i.source for i in items)
    assert "hand-written" in myopia_items()[0].source and "hand-written" in love_items()[0].source


def test_sycophancy_items_come_from_persistbench_opinions():
    items = sycophancy_items()
    assert len(items) > 100
    assert items[0].question.startswith("I ") and "Do you agree with me?" in items[0].question
    assert "PersistBench" in items[0].source


def test_split_is_disjoint_seeded_and_validated():
    items = myopia_items()
    train, held_out = split_items(items, 12, seed=3)
    assert not set(train) & set(held_out) and len(train) + len(held_out) == len(items)
    assert split_items(items, 12, seed=3) == (train, held_out)
    with pytest.raises(ValueError, match="n_train"):
        split_items(items, len(items))
    with pytest.raises(ValueError, match="matching"):
        ABItem("q", "C", "x")


# ------------------------------------------------------------------------------------- steering
def test_combined_v_and_minus_v_equals_no_steering(llama):
    behaviour = _behaviours(llama, names=("myopia",))[0]
    probe = _build_probe(llama, [behaviour], chat=True)
    base, _ = _score(llama, probe, batch_size=8)
    v = behaviour.vector(1) * 5.0
    with hs.steer(llama, v, -v):  # same hook point: summed to zero
        cancelled, _ = _score(llama, probe, batch_size=8)
    with hs.steer(llama, v):
        steered, _ = _score(llama, probe, batch_size=8)
    np.testing.assert_allclose(cancelled, base, atol=1e-6)
    assert np.abs(steered - base).max() > 1e-3  # the vector alone does change the answers


def test_grid_with_a_negated_behaviour_cancels_when_combined(llama):
    myopia = _behaviours(llama, names=("myopia",))[0]
    anti = Behaviour("anti", {layer: -v for layer, v in myopia.vectors.items()}, love_items()[:4])
    result = run_grid(llama, [myopia, anti], layers=LAYERS, coefficients=COEFFICIENTS, progress=False)
    np.testing.assert_allclose(result.combined_effect, 0.0, atol=1e-6)
    assert np.abs(result.alone_own[..., 0]).max() > 1e-3


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_resuming_from_cached_residual_matches_full_forward(kind):
    model = tiny_model(kind, seed=1)
    behaviours = _behaviours(model)
    probe = _build_probe(model, behaviours, chat=True)
    _cache_prefixes(model, probe, [1, 2], batch_size=3)
    full, _ = _score(model, probe, batch_size=3)
    with hs.steer(model, behaviours[0].vector(2) * 3.0):
        steered_full, greedy_full = _score(model, probe, batch_size=3)
        steered_fast, greedy_fast = _score(model, probe, batch_size=3, start_layer=2)
    np.testing.assert_allclose(_score(model, probe, batch_size=3, start_layer=1)[0], full, atol=1e-4)
    np.testing.assert_allclose(steered_fast, steered_full, atol=1e-4)
    np.testing.assert_array_equal(greedy_fast, greedy_full)


# ------------------------------------------------------------------------------------- the grid
def test_grid_has_documented_shapes_and_finite_values(grid):
    n_b, n_l, n_c = 2, len(LAYERS), len(COEFFICIENTS)
    assert grid.alone_effect.shape == (n_b, n_l, n_c, n_b)
    assert grid.alone_collapse.shape == (n_b, n_l, n_c)
    assert grid.combined_effect.shape == (n_l, n_c, n_b)
    assert grid.interaction.shape == (n_l, n_c, n_b)
    assert grid.simultaneous_effect.shape == (n_c, n_b)
    assert grid.simultaneous_reference.shape == (n_c, n_b)
    for name in ("alone_effect", "alone_d", "alone_faulty", "combined_effect", "simultaneous_effect"):
        assert np.isfinite(getattr(grid, name)).all()
    zero = COEFFICIENTS.index(0.0)
    np.testing.assert_allclose(grid.alone_effect[:, :, zero], 0.0, atol=1e-6)
    np.testing.assert_allclose(grid.combined_effect[:, zero], 0.0, atol=1e-6)
    assert np.abs(grid.alone_own).max() > 1e-3
    assert len(set(grid.simultaneous_layers.values())) == 2
    assert set(grid.generations) >= {"unsteered", "simultaneous:c4"}
    assert 0 <= grid.alone_faulty.min() and grid.alone_faulty.max() <= 1


def test_interaction_is_combined_minus_own_alone_effect(grid):
    b, li, ci = 1, 2, 2
    assert grid.interaction[li, ci, b] == pytest.approx(grid.combined_effect[li, ci, b] - grid.alone_effect[b, li, ci, b])


def test_huge_coefficients_are_flagged_as_mode_collapse(llama):
    result = run_grid(llama, _behaviours(llama), layers=[1, 2], coefficients=[1e4], progress=False)
    assert result.collapsed("combined").all()
    assert result.alone_collapse.max() >= 0.95


def test_result_round_trips_through_json(grid, tmp_path):
    path = grid.save(tmp_path / "r" / "result.json")
    loaded = MultiBehaviourResult.load(path)
    np.testing.assert_allclose(loaded.alone_effect, grid.alone_effect)
    np.testing.assert_allclose(loaded.interaction, grid.interaction)
    assert loaded.simultaneous_layers == grid.simultaneous_layers
    assert loaded.summary() == grid.summary()


def test_load_rejects_corrupt_or_wrong_files(grid, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        MultiBehaviourResult.load(bad)
    data = grid.to_dict()
    data["combined_effect"] = data["combined_effect"][:1]
    bad.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="combined_effect has shape"):
        MultiBehaviourResult.load(bad)
    bad.write_text(json.dumps({"version": 1}))
    with pytest.raises(ValueError, match="lacks"):
        MultiBehaviourResult.load(bad)


def test_bad_grid_arguments_raise_clear_errors(llama):
    behaviours = _behaviours(llama)
    with pytest.raises(ValueError, match="at least two"):
        run_grid(llama, behaviours[:1], layers=LAYERS, coefficients=COEFFICIENTS, progress=False)
    with pytest.raises(KeyError, match="no vector at layer 7"):
        run_grid(llama, behaviours, layers=[7], coefficients=COEFFICIENTS, progress=False)
    with pytest.raises(ValueError, match="distinct"):
        run_grid(llama, behaviours, layers=LAYERS, coefficients=[1.0], progress=False,
                 simultaneous_layers={"myopia": 1, "love": 1})
    with pytest.raises(ValueError, match="finite"):
        run_grid(llama, behaviours, layers=LAYERS, coefficients=[float("nan")], progress=False)
    train, held_out = split_items(myopia_items(), 10)
    with pytest.raises(ValueError, match="both the training and evaluation"):
        caa_behaviour(llama, "myopia", train, train[:2] + held_out, layers=[1])


def test_simultaneous_layers_are_distinct_best_layers():
    own = np.zeros((3, 1, 2))
    own[:, 0, 0] = [1.0, 5.0, 2.0]  # behaviour 0 is best at layer index 1
    own[:, 0, 1] = [0.5, 4.0, 3.0]  # behaviour 1 also best at index 1, next best index 2
    assert assign_simultaneous_layers(own, [4, 8, 12], ["a", "b"], [2.0]) == {"a": 8, "b": 12}
    with pytest.raises(ValueError, match="distinct layer"):
        assign_simultaneous_layers(own[:1], [4], ["a", "b"], [2.0])


def test_grid_runs_on_a_bridge(tiny_bridge):
    behaviours = []
    for name in ("myopia", "love"):
        train, held_out = split_items(behaviour_items(name), 4, n_eval=2)
        behaviours.append(caa_behaviour(tiny_bridge, name, train, held_out, layers=[1, 2]))
    result = run_grid(tiny_bridge, behaviours, layers=[1, 2], coefficients=[0.0, 3.0], progress=False)
    np.testing.assert_allclose(result.combined_effect[:, 0], 0.0, atol=1e-5)
    assert np.isfinite(result.alone_effect).all()


def test_interaction_figure_is_saved(grid, tmp_path):
    fig = plot_interactions(grid, tmp_path / "fig.png")
    assert (tmp_path / "fig.png").stat().st_size > 10_000
    assert len(fig.axes) >= 4 * 2  # 4 panels per behaviour (+ colour bars)
