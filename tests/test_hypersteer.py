"""HyperSteer on tiny models: shapes, gradients, equivalence of the fast path, training, persistence."""

from __future__ import annotations

import json

import pytest
import torch

import hooksteer as hs
from hooksteer.data.schema import SteeringExample
from hooksteer.hypersteer import (
    VARIANTS,
    HyperSteer,
    HyperSteerConfig,
    HyperSteerConfigError,
    HyperSteerFileError,
    HyperSteerTrainer,
    checkpoint_dirs,
    latest_checkpoint,
)
from hooksteer.hypersteer.blocks import HyperBlock
from hooksteer.hypersteer.data import ResidCache, collate, encode_examples
from hooksteer.hypersteer.loss import (
    steered_logits_above_site,
    steered_logits_full,
    steered_loss_above_site,
    target_loss,
)

torch.set_num_threads(1)

STEER = ["Talk about cats.", "Mention the sea in every answer.", "Be very rude."]
BASE = ["Tell me about your day.", "What is the capital of France?", "Write a poem."]


def examples(n: int = 6, target: str = "The cat sat.") -> list[SteeringExample]:
    return [SteeringExample(f"c{i % 3}", STEER[i % 3], BASE[(i // 3) % 3], target) for i in range(n)]


def batch_and_resid(hyper: HyperSteer, data: list[SteeringExample]):
    encoded = encode_examples(hyper.base_model, data, hyper.config)
    batch = collate(encoded, pad_id=0)
    resid = ResidCache(hyper.base_model, hyper.layer, "off").get(batch)
    return batch, resid


def delta_for(hyper: HyperSteer, batch, resid):
    mask = batch.context_mask()
    context = resid[:, : mask.shape[1]] if hyper.config.variant == "cross_attention" else None
    return hyper(batch.h_ids, batch.h_lengths, context, mask if context is not None else None, batch.pool_mask)


# ----------------------------------------------------------------------------- architecture
@pytest.mark.parametrize("variant", VARIANTS)
def test_each_variant_gives_vectors_of_the_right_shape(tiny_model, variant):
    hyper = HyperSteer(tiny_model, loss="ce", variant=variant, n_blocks=2)
    vector = hyper.vector(STEER[0], BASE[0])
    assert isinstance(vector, hs.SteeringVector)
    assert vector.hook_name == "blocks.2.hook_resid_post" and vector.d_model == tiny_model.cfg.d_model
    assert vector.method == "hypersteer" and vector.source["steering_prompt"] == STEER[0]
    many = hyper.vector(STEER, BASE)
    assert isinstance(many, list) and len(many) == 3
    table = hyper.vectors(STEER[0], BASE)  # one steering prompt broadcast over three base prompts
    assert table.shape == (3, tiny_model.cfg.d_model)
    # batched rows equal one-at-a-time rows (padding does not leak)
    assert torch.allclose(table[2], hyper.vectors(STEER[0], BASE[2])[0], atol=1e-6)


@pytest.mark.parametrize("variant", ["no_context", "cross_attention"])
def test_mean_pooling_reads_the_mean_of_the_real_tokens(tiny_llama, variant):
    hyper = HyperSteer(tiny_llama, loss="ce", variant=variant, n_blocks=1, pooling="mean", seed=1)
    seen = {}
    hyper.ln_final.register_forward_pre_hook(lambda module, args: seen.__setitem__("pooled", args[0].detach()))
    captured = {}
    hyper.blocks[-1].register_forward_hook(lambda module, args, out: captured.__setitem__("x", out.detach()))
    table = hyper.vectors(STEER, BASE)
    lengths = [len(tiny_llama.to_tokens(s)[0]) for s in STEER]
    first = 1 + int(bool(tiny_llama.cfg.default_prepend_bos))  # BOS and the first (attention-sink) token are left out
    x = captured["x"]
    for row, n in enumerate(lengths):
        torch.testing.assert_close(seen["pooled"][row], x[row, first:n].mean(0))
    # padding does not leak: each row equals the same prompt alone
    torch.testing.assert_close(table[1], hyper.vectors(STEER[1], BASE[1])[0], atol=1e-6, rtol=1e-5)
    last = HyperSteer(tiny_llama, loss="ce", variant=variant, n_blocks=1, seed=1, pooling="last")
    assert not torch.allclose(last.vectors(STEER, BASE), table)


def test_pooling_is_saved_and_validated(tiny_llama, tmp_path):
    hyper = HyperSteer(tiny_llama, loss="ce", variant="no_context", n_blocks=1, pooling="mean")
    hyper.save(tmp_path / "h")
    assert HyperSteer.load(tmp_path / "h", tiny_llama).config.pooling == "mean"
    with pytest.raises(HyperSteerConfigError, match="pooling must be one of"):
        HyperSteer(tiny_llama, loss="ce", pooling="max")


def test_variants_that_read_the_base_prompt_require_it(tiny_llama):
    with pytest.raises(ValueError, match="needs base_prompt"):
        HyperSteer(tiny_llama, loss="ce", variant="cross_attention", n_blocks=1).vector(STEER[0])
    no_context = HyperSteer(tiny_llama, loss="ce", variant="no_context", n_blocks=1)
    assert torch.equal(no_context.vector(STEER[0]).vector, no_context.vector(STEER[0], BASE[1]).vector)


def test_hyper_block_without_cross_attention_equals_the_base_block(tiny_model):
    x = torch.randn(2, 6, tiny_model.cfg.d_model)
    block = HyperBlock(tiny_model.blocks[1])
    assert torch.allclose(block(x), tiny_model.blocks[1](x), atol=1e-6)
    assert all(p.requires_grad for p in block.parameters())
    assert not any(p.requires_grad for p in tiny_model.blocks[1].parameters())  # original untouched


def test_default_layer_is_two_thirds_and_head_starts_small(tiny_llama):
    hyper = HyperSteer(tiny_llama, loss="ce")
    assert hyper.layer == 2 and hyper.config.variant == "cross_attention"
    assert hyper.vector(STEER[0], BASE[0]).norm() < 0.5
    zero = HyperSteer(tiny_llama, loss="ce", head_init_std=0.0)
    assert zero.vector(STEER[0], BASE[0]).norm() == 0.0


# ----------------------------------------------------------------------------- bad settings
@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"layer": 3}, "out of range"), ({"layer": -1}, "out of range"), ({"n_blocks": 4}, "exceeds"),
     ({"variant": "magic"}, "variant must be"), ({"n_blocks": 0}, "n_blocks must be"),
     ({"batch_size": 0}, "batch_size")],
)
def test_bad_config_raises_a_clear_error(tiny_llama, overrides, message):
    with pytest.raises(HyperSteerConfigError, match=message):
        HyperSteer(tiny_llama, HyperSteerConfig(**overrides))


def test_unknown_config_field_is_rejected(tiny_llama):
    with pytest.raises(HyperSteerConfigError, match="unknown"):
        HyperSteer(tiny_llama, n_block=2)
    with pytest.raises(HyperSteerConfigError, match="unknown"):
        HyperSteerConfig.from_dict({"variant": "no_context", "learning_rate": 1.0})


# ----------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("variant", VARIANTS)
def test_gradients_reach_h_and_never_the_base_model(tiny_llama, variant):
    hyper = HyperSteer(tiny_llama, loss="ce", variant=variant, n_blocks=2)
    batch, resid = batch_and_resid(hyper, examples(3))
    loss_sum, n = target_loss(steered_logits_above_site(tiny_llama, resid, hyper.layer, delta_for(hyper, batch, resid)),
                              batch)
    (loss_sum / n).backward()
    for name, param in hyper.named_parameters():
        assert param.grad is not None, name
    assert hyper.head.weight.grad.abs().sum() > 0
    assert hyper.blocks[0].attn.W_Q.grad.abs().sum() > 0
    if variant == "cross_attention":
        assert hyper.blocks[0].cross.W_K.weight.grad.abs().sum() > 0
    for name, param in tiny_llama.named_parameters():
        assert not param.requires_grad and param.grad is None, name


def test_trainer_optimises_h_only(tiny_llama):
    hyper = HyperSteer(tiny_llama, loss="ce", n_blocks=1, batch_size=3, max_steps=2, eval_every=0)
    trainer = HyperSteerTrainer(hyper, examples(6), progress=False)
    trainer.train()
    base_ids = {id(p) for p in tiny_llama.parameters()}
    optimised = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    assert optimised and not any(id(p) in base_ids for p in optimised)
    assert trainer.optimizer.state and not any(id(p) in base_ids for p in trainer.optimizer.state)
    assert all(p.grad is None for p in tiny_llama.parameters())


def test_frozen_embeddings_are_not_optimised(tiny_llama):
    hyper = HyperSteer(tiny_llama, loss="ce", n_blocks=1, freeze_embeddings=True)
    assert not hyper.embed.W_E.requires_grad and hyper.head.weight.requires_grad


# ----------------------------------------------------------------------------- the fast path
@pytest.mark.parametrize("variant", VARIANTS)
def test_start_above_site_equals_full_forward_with_steering_hook(tiny_model, variant):
    hyper = HyperSteer(tiny_model, loss="ce", variant=variant, n_blocks=1, head_init_std=0.5)
    data = examples(3, target="cats and dogs and the sea")
    data[1] = SteeringExample("x", STEER[1], "Hi", "ok")  # rows of different lengths
    batch, resid = batch_and_resid(hyper, data)
    delta = delta_for(hyper, batch, resid)
    assert delta.norm() > 1.0
    fast = steered_logits_above_site(tiny_model, resid, hyper.layer, delta)
    full = steered_logits_full(tiny_model, batch.tokens, hyper.layer, delta)
    for row, length in enumerate(batch.lengths.tolist()):
        assert torch.allclose(fast[row, :length], full[row, :length], atol=1e-5)
    fast_loss, n_fast = target_loss(fast, batch)
    full_loss, n_full = target_loss(full, batch)
    assert n_fast == n_full and torch.allclose(fast_loss, full_loss, rtol=1e-5)
    picked_loss, n_picked = steered_loss_above_site(tiny_model, resid, hyper.layer, delta, batch, "ce")
    assert n_picked == n_full and torch.allclose(picked_loss, full_loss, rtol=1e-5)
    # ... and equals hooksteer.steer with the SteeringVector that hyper.vector() returns
    encoded = encode_examples(tiny_model, data[:1], hyper.config)
    single = collate(encoded, pad_id=0)
    vector = hyper.vector(data[0].steering_prompt, data[0].base_prompt)
    with hs.steer(tiny_model, vector):
        steered = tiny_model(single.tokens)
    length = int(batch.lengths[0])
    assert torch.allclose(steered[0], fast[0, :length], atol=1e-5)


def test_full_forward_training_gives_the_same_loss(tiny_llama):
    losses = []
    for above in (True, False):
        hyper = HyperSteer(tiny_llama, loss="ce", n_blocks=1, head_init_std=0.3, start_above_site=above)
        trainer = HyperSteerTrainer(hyper, examples(6), progress=False)
        batch = collate(trainer.train_data[:3], trainer.pad_id)
        loss_sum, n = trainer.batch_loss(batch, trainer.train_cache)
        losses.append(float((loss_sum / n).detach()))
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_activation_cache_reuses_rows(tiny_llama):
    hyper = HyperSteer(tiny_llama, loss="ce", n_blocks=1)
    encoded = encode_examples(tiny_llama, examples(4), hyper.config)
    cache = ResidCache(tiny_llama, hyper.layer, "cpu")
    first = cache.get(collate(encoded[:2], 0))
    assert len(cache) == 2
    again = cache.get(collate(encoded[1:3], 0))
    assert len(cache) == 3
    assert torch.equal(again[0, : int(collate(encoded[1:2], 0).lengths[0])],
                       first[1, : int(collate(encoded[1:2], 0).lengths[0])])


# ----------------------------------------------------------------------------- training
@pytest.mark.parametrize("variant", VARIANTS)
def test_loss_drops_on_a_reachable_toy_task(tiny_llama, variant, tmp_path):
    # Target: the same fixed text after any prompt - reachable by a constant vector.
    data = examples(6, target="cats cats cats")
    hyper = HyperSteer(tiny_llama, loss="ce", variant=variant, n_blocks=1, lr=1e-2, batch_size=6, max_steps=30,
                       eval_every=30, log_every=5, head_init_std=0.0)
    result = HyperSteerTrainer(hyper, data, data[:3], output_dir=tmp_path, progress=False).train()
    first, last = result.train_loss[0]["loss"], result.train_loss[-1]["loss"]
    assert last < first - 1.0, (first, last)
    assert [e["step"] for e in result.eval_loss] == [0, 30]
    before, after = result.eval_loss[0]["eval_loss"], result.eval_loss[-1]["eval_loss"]
    assert after < before - 1.5, (before, after)  # 6.4 -> ~4.5 nats (random tiny model: limited logit range)
    history = json.loads((tmp_path / "history.json").read_text())
    assert history["steps"] == 30 and (tmp_path / "model.safetensors").is_file()


def test_training_resumes_from_a_checkpoint(tiny_llama, tmp_path):
    data = examples(6)
    config = HyperSteerConfig(loss="ce", n_blocks=1, lr=1e-3, batch_size=2, max_steps=5, save_every=2, keep_checkpoints=0,
                              eval_every=0, warmup_steps=1)
    straight = HyperSteer(tiny_llama, config)
    HyperSteerTrainer(straight, data, output_dir=tmp_path / "a", progress=False).train()
    assert [p.name for p in checkpoint_dirs(tmp_path / "a")] == [
        "checkpoint-000002", "checkpoint-000004", "checkpoint-000005"]
    assert latest_checkpoint(tmp_path / "a").name == "checkpoint-000005"

    resumed = HyperSteer(tiny_llama, config)
    trainer = HyperSteerTrainer(resumed, data, output_dir=tmp_path / "b", progress=False)
    result = trainer.train(resume_from=tmp_path / "a" / "checkpoint-000002")
    assert result.steps == 5
    for (name, a), (_, b) in zip(straight.named_parameters(), resumed.named_parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name


def test_resume_rejects_a_mismatched_or_bad_checkpoint(tiny_llama, tmp_path):
    data = examples(6)
    hyper = HyperSteer(tiny_llama, loss="ce", n_blocks=1, batch_size=2, max_steps=2, eval_every=0)
    HyperSteerTrainer(hyper, data, output_dir=tmp_path, progress=False).train()
    other = HyperSteer(tiny_llama, loss="ce", n_blocks=1, batch_size=2, max_steps=3, eval_every=0)
    with pytest.raises(HyperSteerFileError, match="total steps"):
        HyperSteerTrainer(other, data, progress=False).train(resume_from=latest_checkpoint(tmp_path))
    with pytest.raises(HyperSteerFileError, match="not a training checkpoint"):
        HyperSteerTrainer(other, data, progress=False).train(resume_from=tmp_path / "nowhere")


# ----------------------------------------------------------------------------- persistence
@pytest.mark.parametrize("variant", VARIANTS)
def test_save_load_reproduces_vectors_exactly(tiny_model, variant, tmp_path):
    hyper = HyperSteer(tiny_model, loss="ce", variant=variant, n_blocks=2, seed=3)
    with torch.no_grad():
        for param in hyper.parameters():
            param.add_(0.01 * torch.randn_like(param))
    hyper.save(tmp_path / "h")
    loaded = HyperSteer.load(tmp_path / "h", tiny_model)
    assert loaded.config == hyper.config
    assert torch.equal(loaded.vectors(STEER, BASE), hyper.vectors(STEER, BASE))
    unseen = loaded.vector("Zebras! Write only about zebras and jazz, 🎷.", "Any news?")
    assert torch.isfinite(unseen.vector).all() and unseen.norm() > 0


def test_load_rejects_another_model_and_corrupt_files(tiny_llama, tiny_model_factory, tmp_path):
    hyper = HyperSteer(tiny_llama, loss="ce", n_blocks=1)
    hyper.save(tmp_path / "h")
    wider = tiny_model_factory("llama", d_model=64, d_head=16)
    with pytest.raises(HyperSteerFileError, match="d_model"):
        HyperSteer.load(tmp_path / "h", wider)
    deeper = tiny_model_factory("llama", n_layers=4)
    with pytest.raises(HyperSteerFileError, match="n_layers"):
        HyperSteer.load(tmp_path / "h", deeper)
    weights = tmp_path / "h" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(HyperSteerFileError, match="corrupt or truncated"):
        HyperSteer.load(tmp_path / "h", tiny_llama)
    (tmp_path / "h" / "config.json").write_text("{not json")
    with pytest.raises(HyperSteerFileError, match="not valid JSON"):
        HyperSteer.load(tmp_path / "h", tiny_llama)
    with pytest.raises(HyperSteerFileError, match="no HyperSteer"):
        HyperSteer.load(tmp_path / "missing", tiny_llama)


def test_steering_with_per_row_vectors_in_a_batch(tiny_llama):
    hyper = HyperSteer(tiny_llama, loss="ce", n_blocks=1, head_init_std=0.5)
    deltas = hyper.vectors(STEER[:2], BASE[:2])
    tokens = tiny_llama.to_tokens(BASE[:2], padding_side="right")
    with tiny_llama.hooks(fwd_hooks=[(hyper.hook_name, hs.add_vector(deltas, 1.0))]):
        batched = tiny_llama(tokens, padding_side="right")
    with hs.steer(tiny_llama, hyper.vector(STEER[0], BASE[0])):
        alone = tiny_llama(tiny_llama.to_tokens(BASE[0]))
    assert torch.allclose(batched[0, : alone.shape[1]], alone[0], atol=1e-5)


# ----------------------------------------------------------------------------- command line
def test_train_hypersteer_command_on_a_tiny_model(tmp_path, capsys):
    from hooksteer.cli import main

    records = tmp_path / "train.jsonl"
    records.write_text("\n".join(json.dumps(e.to_dict()) for e in examples(9)))
    run = tmp_path / "run.json"
    run.write_text(json.dumps({"model": "tiny:llama", "loss": "ce", "variant": "cross_attention", "n_blocks": 1,
                               "batch_size": 4, "max_steps": 3, "save_every": 2, "eval_fraction": 0.34}))
    out = tmp_path / "out"
    assert main(["train-hypersteer", str(run), "--examples", str(records), "--out", str(out), "--no-progress"]) == 0
    settings = json.loads((out / "train_config.json").read_text())
    assert settings["n_train"] == 6 and settings["n_eval"] == 3 and settings["layer"] == 2
    model = hs.testing.tiny_model("llama")
    assert HyperSteer.load(out, model).vector(STEER[0], BASE[0]).d_model == 32
    assert json.loads((out / "history.json").read_text())["steps"] == 3
    assert main(["train-hypersteer", str(run), "--examples", str(records), "--out", str(out), "--no-progress",
                 "--resume", "latest"]) == 0
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model": "tiny:llama", "loss": "ce", "n_blocks": 9, "examples": str(records)}))
    capsys.readouterr()
    assert main(["train-hypersteer", str(bad), "--out", str(tmp_path / "bad")]) == 2
    assert "hooksteer train-hypersteer: error: n_blocks=9 exceeds" in capsys.readouterr().err


# ----------------------------------------------------------------------------- real model (slow)
@pytest.mark.slow
@pytest.mark.real_model
def test_real_model_fast_path_matches_steered_forward_and_training_lowers_loss():
    model = hs.load_model(progress=False)
    data = [SteeringExample("volcano", "Mention volcanoes in every answer.", base,
                            "Like a volcano, it was explosive and full of lava.") for base in BASE]
    hyper = HyperSteer(model, HyperSteerConfig(loss="ce", n_blocks=2, head_init_std=0.05, lr=1e-3, batch_size=3,
                                               max_steps=4, eval_every=4))
    assert hyper.layer == 20
    batch, resid = batch_and_resid(hyper, data)
    with torch.no_grad():
        delta = delta_for(hyper, batch, resid)
        fast, n_fast = steered_loss_above_site(model, resid, hyper.layer, delta, batch, "ce")
        full, n_full = target_loss(steered_logits_full(model, batch.tokens, hyper.layer, delta), batch)
    assert n_fast == n_full and torch.allclose(fast, full, rtol=1e-4)
    result = HyperSteerTrainer(hyper, data, data, progress=False).train()
    assert result.eval_loss[-1]["eval_loss"] < result.eval_loss[0]["eval_loss"]


def test_context_of_the_wrong_width_is_rejected(tiny_llama):
    hyper = HyperSteer(tiny_llama, loss="ce", n_blocks=1)
    ids = torch.ones(1, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="d_model=32"):
        hyper(ids, torch.tensor([3]), torch.randn(1, 4, 48), torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="needs the base prompt"):
        hyper(ids, torch.tensor([3]))


def test_mean_pairwise_cosine_and_its_errors():
    from hooksteer.hypersteer.diagnostics import mean_pairwise_cosine

    assert mean_pairwise_cosine(torch.eye(3)) == pytest.approx(0.0)
    assert mean_pairwise_cosine(torch.tensor([[1.0, 0.0], [2.0, 0.0], [-3.0, 0.0]])) == pytest.approx(-1 / 3)
    with pytest.raises(ValueError, match="at least two"):
        mean_pairwise_cosine(torch.ones(1, 4))
    with pytest.raises(ValueError, match="all zeros"):
        mean_pairwise_cosine(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))


class _FixedHyper:
    """Stand-in for a HyperSteer whose vector is a chosen function of (steering prompt, base prompt)."""

    def __init__(self, table, needs_base_prompt):
        self.table, self.needs_base_prompt = table, needs_base_prompt
        self.config = HyperSteerConfig(variant="cross_attention" if needs_base_prompt else "no_context")

    def vectors(self, steering, base=None):
        steering = [steering] if isinstance(steering, str) else steering
        return torch.stack([self.table(s, b) for s, b in zip(steering, base or [None] * len(steering), strict=True)])


def test_vector_separation_measures_concept_and_prompt_dependence():
    from hooksteer.hypersteer.diagnostics import vector_separation

    axes = {"cats": torch.tensor([1.0, 0.0, 0.0]), "rome": torch.tensor([0.0, 1.0, 0.0])}
    # vectors depend only on the concept: orthogonal across concepts, identical across prompts
    by_concept = _FixedHyper(lambda s, b: axes[s], needs_base_prompt=True)
    report = vector_separation(by_concept, ["cats", "rome"], ["hi", "plan a trip"])
    assert report["between_concepts"] == pytest.approx(0.0) and report["within_concept"] == pytest.approx(1.0)
    assert report["separation"] == pytest.approx(1.0)
    # vectors ignore the concept (the collapse a small training run shows)
    collapsed = _FixedHyper(lambda s, b: axes["cats"] + (0.0 if b == "hi" else 1.0) * axes["rome"], needs_base_prompt=True)
    report = vector_separation(collapsed, ["cats", "rome"], ["hi", "plan a trip"])
    assert report["between_concepts"] == pytest.approx(1.0)
    assert report["within_concept"] == pytest.approx(2 ** -0.5) and report["separation"] < 0
    # no-context H: one prompt is enough, within_concept undefined
    report = vector_separation(_FixedHyper(lambda s, b: axes[s], needs_base_prompt=False), ["cats", "rome"], ["hi", "x"])
    assert report["within_concept"] is None and report["n_prompts"] == 1 and report["separation"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="two steering prompts"):
        vector_separation(by_concept, ["cats"], ["hi"])


def test_vector_separation_on_a_real_tiny_hypersteer(tiny_llama):
    from hooksteer.hypersteer.diagnostics import vector_separation

    torch.manual_seed(0)
    hyper = HyperSteer(tiny_llama, HyperSteerConfig(loss="ce", variant="cross_attention", n_blocks=1, head_init_std=0.02))
    report = vector_separation(hyper, ["Write about cats.", "Write about Rome."], ["Hi!", "Plan a trip.", "Why?"])
    assert report["n_prompts"] == 3 and report["n_concepts"] == 2
    assert -1.0 <= report["between_concepts"] < 1.0 - 1e-4, "different steering prompts give different vectors"
    assert -1.0 <= report["within_concept"] < 1.0 - 1e-4, "cross-attention H reads the base prompt"


def test_vector_agreement_compares_two_hypernetworks_pair_by_pair():
    from hooksteer.hypersteer.diagnostics import vector_agreement

    axes = {"cats": torch.tensor([1.0, 0.0]), "rome": torch.tensor([0.0, 1.0])}
    same = _FixedHyper(lambda s, b: axes[s], needs_base_prompt=True)
    swapped = _FixedHyper(lambda s, b: axes["rome" if s == "cats" else "cats"], needs_base_prompt=True)
    flipped_on_one_prompt = _FixedHyper(lambda s, b: axes[s] * (-1.0 if b == "x" else 1.0), needs_base_prompt=True)
    assert vector_agreement(same, same, ["cats", "rome"], ["hi", "x"]) == pytest.approx(1.0)
    assert vector_agreement(same, swapped, ["cats", "rome"], ["hi", "x"]) == pytest.approx(0.0)
    assert vector_agreement(same, flipped_on_one_prompt, ["cats", "rome"], ["hi", "x"]) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="at least one"):
        vector_agreement(same, same, [], ["hi"])
