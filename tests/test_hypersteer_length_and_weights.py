"""Two training options of HyperSteer and its bounds: a fixed vector length (``delta_norm``: only the direction is
learned) and token weights by how far the steering prompt moved the prediction (``token_weights="teacher_shift"``)."""

from __future__ import annotations

import pytest
import torch
from test_hypersteer_distill import BASE, STEER, records_from_vectors

from hooksteer.hypersteer import HyperSteer, HyperSteerConfig, HyperSteerConfigError, HyperSteerTrainer
from hooksteer.hypersteer.bounds import ConceptVectors
from hooksteer.hypersteer.data import collate
from hooksteer.hypersteer.deltas import with_norm
from hooksteer.hypersteer.loss import TeacherShiftCache, target_logits_above_site, teacher_shift_weights
from hooksteer.hypersteer.trainer import mean_loss

torch.set_num_threads(1)
LAYER = 2
cos = torch.nn.functional.cosine_similarity


def _truth(seed: int, norm: float = 12.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {STEER[0]: with_norm(torch.randn(1, 32, generator=g), norm)[0],
            STEER[1]: with_norm(torch.randn(1, 32, generator=g), norm)[0]}


# ---------------------------------------------------------------------------------------------- fixed length
def test_with_norm_rescales_rows_and_leaves_none_alone():
    delta = torch.tensor([[3.0, 4.0], [0.0, -2.0]])
    assert torch.allclose(with_norm(delta, 10.0).norm(dim=-1), torch.tensor([10.0, 10.0]))
    assert torch.allclose(with_norm(delta, 10.0)[1], torch.tensor([0.0, -10.0]))
    assert with_norm(delta, None) is delta


def test_a_fixed_length_oracle_learns_the_teachers_direction_at_that_length(tiny_llama, tmp_path):
    truth = _truth(5)
    records = records_from_vectors(tiny_llama, truth, layer=LAYER)
    config = HyperSteerConfig(layer=LAYER, delta_norm=12.0, lr=0.1, batch_size=4, max_steps=150, eval_every=0,
                              log_every=50)
    oracle = ConceptVectors.oracle(tiny_llama, list(truth), config)
    start = oracle.vectors(list(truth))
    assert torch.allclose(start.norm(dim=-1), torch.full((2,), 12.0))  # a random direction at the fixed length
    before = mean_loss(oracle, records)
    HyperSteerTrainer(oracle, records, progress=False).train()
    assert mean_loss(oracle, records) < 0.1 * before
    learned = oracle.vectors(list(truth))
    assert torch.allclose(learned.norm(dim=-1), torch.full((2,), 12.0), atol=1e-4)
    for row, vector in enumerate(truth.values()):
        assert float(cos(learned[row], vector, dim=0)) > 0.9
    assert float(oracle.vector(STEER[0]).vector.norm()) == pytest.approx(12.0, abs=1e-4)
    oracle.save(tmp_path / "fixed")
    again = ConceptVectors.load(tmp_path / "fixed", tiny_llama)
    assert again.config.delta_norm == 12.0 and torch.allclose(again.vectors(list(truth)), learned)


def test_a_free_length_oracle_is_unchanged_by_the_option():
    """Without ``delta_norm`` the table starts at zero (exactly "no steering"), as before the option existed."""
    config = HyperSteerConfig()
    assert config.delta_norm is None and config.token_weights == "uniform"


def test_hypersteer_vectors_have_the_fixed_length(tiny_llama):
    hyper = HyperSteer(tiny_llama, variant="no_context", n_blocks=1, layer=LAYER, delta_norm=7.5)
    vectors = hyper.vectors(STEER, BASE[:3])
    assert torch.allclose(vectors.norm(dim=-1), torch.full((3,), 7.5), atol=1e-4)
    assert float(cos(vectors[0], vectors[1], dim=0)) < 0.999  # the directions still depend on the prompt


@pytest.mark.parametrize(("overrides", "message"), [
    ({"delta_norm": -1.0}, "delta_norm must be a positive number"),
    ({"delta_norm": float("inf")}, "delta_norm must be a positive number"),
    ({"delta_norm": True}, "delta_norm must be a positive number"),
    ({"delta_norm": 5.0, "head_init_std": 0.0}, "head_init_std > 0"),
    ({"token_weights": "loud"}, "token_weights must be one of"),
    ({"token_weights": "teacher_shift", "loss": "ce"}, "needs loss='distill'"),
])
def test_bad_settings_are_refused_with_the_reason(overrides, message):
    with pytest.raises(HyperSteerConfigError, match=message):
        HyperSteerConfig(**overrides).validate()


# ---------------------------------------------------------------------------------------------- token weights
def _mixed_batch(model, k: int = 512):
    """A batch with one concept whose teacher *is* the unsteered model and one steered by a known vector."""
    records = records_from_vectors(model, {STEER[0]: torch.zeros(32), STEER[1]: _truth(6)[STEER[1]]}, layer=LAYER,
                                   k=k)
    config = HyperSteerConfig(layer=LAYER, token_weights="teacher_shift")
    trainer = HyperSteerTrainer(ConceptVectors.oracle(model, [STEER[0], STEER[1]], config), records, progress=False)
    batch = collate([trainer.train_data[0], trainer.train_data[len(BASE)]], pad_id=0)
    return trainer, batch


def test_teacher_shift_weights_vanish_where_prompting_changed_nothing(tiny_llama):
    trainer, batch = _mixed_batch(tiny_llama)
    resid = trainer.train_cache.get(batch)
    mask = batch.loss_mask()
    weights = teacher_shift_weights(target_logits_above_site(tiny_llama, resid, LAYER, mask), batch)
    per_row = mask.sum(1).tolist()
    unchanged, moved = weights[: per_row[0]], weights[per_row[0]:]
    assert unchanged.abs().max() < 1e-3 and moved.min() > 0.1
    assert float(weights.mean()) == pytest.approx(1.0, abs=1e-5)


def test_weights_are_all_one_when_the_teacher_is_the_unsteered_model(tiny_llama):
    records = records_from_vectors(tiny_llama, {STEER[0]: torch.zeros(32)}, layer=LAYER, k=512)
    trainer = HyperSteerTrainer(ConceptVectors.oracle(tiny_llama, [STEER[0]], HyperSteerConfig(
        layer=LAYER, token_weights="teacher_shift")), records, progress=False)
    batch = collate(trainer.train_data[:2], pad_id=0)
    logits = target_logits_above_site(tiny_llama, trainer.train_cache.get(batch), LAYER, batch.loss_mask())
    assert torch.equal(teacher_shift_weights(logits, batch), torch.ones(int(batch.loss_mask().sum())))


def test_weighted_loss_counts_only_the_moved_tokens_and_both_paths_agree(tiny_llama):
    trainer, batch = _mixed_batch(tiny_llama)
    with torch.no_grad():
        trainer.hyper.table.normal_(generator=torch.Generator().manual_seed(7)).mul_(4.0)
    fast_sum, fast_n = trainer.batch_loss(batch, trainer.train_cache)
    trainer.config.start_above_site = False  # the full forward with the steering hook, for comparison
    full_sum, full_n = trainer.batch_loss(batch, trainer.train_cache)
    assert fast_n == full_n and torch.allclose(fast_sum, full_sum, rtol=1e-4)
    # the first row's teacher is the unsteered model: its KL terms get weight ~0, so moving its vector does not
    # change the weighted loss, while the uniform loss does change
    trainer.config.start_above_site = True
    with torch.no_grad():
        trainer.hyper.table[0].mul_(-1.0)
    flipped_sum, _ = trainer.batch_loss(batch, trainer.train_cache)
    assert torch.allclose(flipped_sum, fast_sum, rtol=1e-3)
    trainer.config.token_weights = "uniform"
    uniform_sum, _ = trainer.batch_loss(batch, trainer.train_cache)
    trainer.hyper.table.data[0].mul_(-1.0)
    assert not torch.allclose(trainer.batch_loss(batch, trainer.train_cache)[0], uniform_sum, rtol=1e-3)


def test_weighted_training_still_finds_the_moved_concept_and_eval_kl_stays_unweighted(tiny_llama):
    truth = _truth(8)
    records = records_from_vectors(tiny_llama, truth, layer=LAYER)
    config = HyperSteerConfig(layer=LAYER, token_weights="teacher_shift", lr=0.1, batch_size=4, max_steps=150,
                              eval_every=0, log_every=50)
    oracle = ConceptVectors.oracle(tiny_llama, list(truth), config)
    HyperSteerTrainer(oracle, records, progress=False).train()
    learned = oracle.vectors(list(truth))
    for row, vector in enumerate(truth.values()):
        assert float(cos(learned[row], vector, dim=0)) > 0.8
    plain = ConceptVectors.oracle(tiny_llama, list(truth), HyperSteerConfig(layer=LAYER))
    with torch.no_grad():
        plain.table.copy_(oracle.table)
    assert mean_loss(oracle, records) == pytest.approx(mean_loss(plain, records), rel=1e-6)


def test_teacher_shift_is_computed_once_per_example_and_reused(tiny_llama):
    trainer, batch = _mixed_batch(tiny_llama)
    resid = trainer.train_cache.get(batch)
    calls = []

    def unsteered():
        calls.append(1)
        return target_logits_above_site(tiny_llama, resid, LAYER, batch.loss_mask())

    shifts = TeacherShiftCache()
    first = shifts.weights(batch, unsteered)
    again = shifts.weights(batch, unsteered)
    assert len(calls) == 1 and len(shifts) == 2 and torch.equal(first, again)
    assert torch.allclose(first, teacher_shift_weights(unsteered(), batch))
    # a batch of one cached row is renormalised on its own tokens: mean 1 again
    single = collate([trainer.train_data[len(BASE)]], pad_id=0)  # the second row of `batch`, already cached
    assert float(shifts.weights(single, unsteered).mean()) == pytest.approx(1.0, abs=1e-5) and len(calls) == 2


def test_training_fills_the_shift_cache_once(tiny_llama):
    records = records_from_vectors(tiny_llama, _truth(9), layer=LAYER)
    config = HyperSteerConfig(layer=LAYER, token_weights="teacher_shift", batch_size=4, max_steps=6, eval_every=0,
                              log_every=3)
    trainer = HyperSteerTrainer(ConceptVectors.oracle(tiny_llama, STEER[:2], config), records, progress=False)
    trainer.train()
    assert len(trainer.train_shifts) == len(records)
