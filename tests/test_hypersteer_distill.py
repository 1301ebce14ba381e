"""HyperSteer with the distillation objective: zero loss at the teacher, gradients into H only, the oracle and floor
bounds, centring, pooling on the steering prompt's content, collapse diagnostics, format migration."""

from __future__ import annotations

import json

import pytest
import torch

import hooksteer as hs
from hooksteer.data.schema import BasePrompt, Concept, SteeringExample
from hooksteer.distill import (
    DistillConfig,
    DistillRecord,
    build_distill_teacher,
    student_prompt,
    topk_teacher,
)
from hooksteer.hypersteer import HyperSteer, HyperSteerConfig, HyperSteerTrainer
from hooksteer.hypersteer.bounds import ConceptVectors
from hooksteer.hypersteer.data import collate, encode_examples
from hooksteer.hypersteer.diagnostics import shared_fraction, vector_separation
from hooksteer.hypersteer.trainer import mean_loss

torch.set_num_threads(1)

BASE = ["Tell me about your day.", "What is the capital of France?", "Write a poem.", "Plan a trip."]
STEER = ["Write about rivers. Every sentence must be about rivers.",
         "Write about castles. Every sentence must be about castles.",
         "Write about music. Every sentence must be about music."]


def records_from_vectors(model, vectors: dict[str, torch.Tensor], layer: int | list[int], k: int = 512,
                         n_tokens: int = 4) -> list[DistillRecord]:
    """Teacher = the model steered by a known vector per steering prompt (so a free vector can match it exactly);
    with a list of layers each prompt's tensor holds one vector per layer, steered together."""
    layers = [layer] if isinstance(layer, int) else list(layer)
    out = []
    for steering, per_site in vectors.items():
        rows = per_site.reshape(len(layers), -1)
        steered = hs.SteeringSet(hs.SteeringVector(f"blocks.{site}.hook_resid_post", row)
                                 for site, row in zip(layers, rows, strict=True))
        for i, base in enumerate(BASE):
            prompt = model.to_tokens(student_prompt(model, base))[0]
            response = torch.tensor([(7 * i + j * 13 + len(steering)) % 200 + 5 for j in range(n_tokens)])
            tokens = torch.cat([prompt, response])[None]
            with torch.no_grad(), hs.steer(model, steered):
                logits = model(tokens)[0, len(prompt) - 1 : len(prompt) - 1 + n_tokens]
            ids, logprobs = topk_teacher(logits, k)
            out.append(DistillRecord(steering[:12], steering, base, f"p{i}", "", response, False, ids.to(torch.int32),
                                     logprobs))
    return out


def test_distillation_loss_is_zero_when_the_student_equals_the_teacher(tiny_llama):
    records = records_from_vectors(tiny_llama, {STEER[0]: torch.zeros(32)}, layer=2, k=64)
    no_steering = ConceptVectors.floor(tiny_llama, HyperSteerConfig(layer=2))
    assert mean_loss(no_steering, records) < 1e-5
    vector = torch.randn(32, generator=torch.Generator().manual_seed(0)) * 3
    steered = records_from_vectors(tiny_llama, {STEER[0]: vector}, layer=2, k=64)
    assert mean_loss(no_steering, steered) > 1e-3
    exact = ConceptVectors.oracle(tiny_llama, [STEER[0]], HyperSteerConfig(layer=2))
    with torch.no_grad():
        exact.table[0] = vector
    assert mean_loss(exact, steered) < 1e-5


def test_distillation_gradient_reaches_h_only(tiny_llama):
    vector = torch.randn(32, generator=torch.Generator().manual_seed(1)) * 3
    records = records_from_vectors(tiny_llama, {STEER[0]: vector, STEER[1]: -vector}, layer=2, k=32)
    hyper = HyperSteer(tiny_llama, variant="cross_attention", n_blocks=1, head_init_std=0.1)
    trainer = HyperSteerTrainer(hyper, records, progress=False)
    batch = collate(trainer.train_data[:4], pad_id=0)
    loss_sum, n = trainer.batch_loss(batch, trainer.train_cache)
    (loss_sum / n).backward()
    assert all(p.grad is None for p in tiny_llama.parameters())
    grads = {name: p.grad for name, p in hyper.named_parameters() if p.requires_grad}
    assert grads["head.weight"] is not None and grads["head.weight"].abs().sum() > 0
    assert grads["blocks.0.cross.W_Q.weight"].abs().sum() > 0


def test_oracle_learns_distinct_vectors_for_two_concepts_with_different_teachers(tiny_llama):
    g = torch.Generator().manual_seed(3)
    truth = {STEER[0]: torch.randn(32, generator=g) * 3, STEER[1]: torch.randn(32, generator=g) * 3}
    records = records_from_vectors(tiny_llama, truth, layer=2)
    config = HyperSteerConfig(layer=2, lr=0.1, batch_size=4, max_steps=150, eval_every=0, log_every=50)
    oracle = ConceptVectors.oracle(tiny_llama, list(truth), config)
    before = mean_loss(oracle, records)
    HyperSteerTrainer(oracle, records, progress=False).train()
    assert mean_loss(oracle, records) < 0.1 * before
    learned = oracle.vectors(list(truth))
    cos = torch.nn.functional.cosine_similarity
    assert float(cos(learned[0], learned[1], dim=0)) < 0.5
    for row, vector in enumerate(truth.values()):
        assert float(cos(learned[row], vector, dim=0)) > 0.8
    # the floor, one vector for both, cannot fit two opposite-ish teachers as well
    floor = ConceptVectors.floor(tiny_llama, config)
    HyperSteerTrainer(floor, records, progress=False).train()
    assert mean_loss(floor, records) > 2 * mean_loss(oracle, records)
    with pytest.raises(KeyError, match="no free vector"):
        oracle.vectors("an unknown steering prompt")
    assert torch.equal(floor.vectors("anything"), floor.vectors(STEER[2]))


def test_bounds_save_and_load(tiny_llama, tmp_path):
    oracle = ConceptVectors(tiny_llama, STEER, HyperSteerConfig(layer=1), init_std=1.0)
    oracle.save(tmp_path / "o")
    again = ConceptVectors.load(tmp_path / "o", tiny_llama)
    assert again.keys == STEER and torch.equal(again.table, oracle.table) and again.hook_name == "blocks.1.hook_resid_post"
    vector = again.vector(STEER[1])
    assert vector.method == "hypersteer-oracle" and torch.equal(vector.vector, oracle.table[1].detach())


def test_centred_head_keeps_a_running_mean_that_is_saved(tiny_llama, tmp_path):
    records = records_from_vectors(tiny_llama, {s: torch.randn(32) for s in STEER}, layer=2, k=16)
    hyper = HyperSteer(tiny_llama, variant="no_context", n_blocks=1, max_steps=3, batch_size=4, eval_every=0)
    assert hyper.config.center and float(hyper.center_mean.abs().sum()) == 0
    HyperSteerTrainer(hyper, records, progress=False).train()
    assert int(hyper.center_batches) == 3 and float(hyper.center_mean.abs().sum()) > 0
    hyper.save(tmp_path / "h")
    again = HyperSteer.load(tmp_path / "h", tiny_llama)
    assert torch.equal(again.center_mean, hyper.center_mean)
    torch.testing.assert_close(again.vectors(STEER), hyper.vectors(STEER))
    # Δ = b + W(x − μ): for an input equal to μ the vector is exactly the shared bias
    features = hyper.center_mean[None]
    torch.testing.assert_close(hyper.head(features - hyper.center_mean), hyper.head.bias[None])


def test_format_version_1_hypernetworks_still_load_as_they_were(tiny_llama, tmp_path):
    old = HyperSteer(tiny_llama, variant="in_context", n_blocks=1, center=False, pooling="last",
                     h_layout="steering_first", loss="ce", head_init_std=0.3)
    old.save(tmp_path / "v1")
    meta = json.loads((tmp_path / "v1" / "config.json").read_text())
    meta["format_version"] = "1"
    for key in ("center", "center_momentum", "h_layout", "loss"):
        meta["config"].pop(key)
    meta["config"].pop("pooling")
    (tmp_path / "v1" / "config.json").write_text(json.dumps(meta))
    loaded = HyperSteer.load(tmp_path / "v1", tiny_llama)
    assert (loaded.config.center, loaded.config.h_layout, loaded.config.pooling) == (False, "steering_first", "last")
    torch.testing.assert_close(loaded.vectors(STEER[0], BASE[0]), old.vectors(STEER[0], BASE[0]))


def test_in_context_reads_the_steering_prompt_last_and_pools_on_it(tiny_llama):
    config = HyperSteerConfig(variant="in_context", loss="ce")
    example = SteeringExample("c", STEER[0], BASE[0], "the river flows")
    encoded = encode_examples(tiny_llama, [example], hs.hypersteer.HyperSteer(tiny_llama, config).config)[0]
    steering = tiny_llama.to_tokens(STEER[0])[0]
    assert torch.equal(encoded.h_ids[-len(steering):], steering)
    start, end = encoded.pool
    assert end == len(encoded.h_ids) and start == len(encoded.h_ids) - len(steering) + 1


def test_mean_pooling_makes_concepts_differ_where_the_last_token_cannot(tiny_llama):
    """The steering prompts share their last tokens; an untrained H with last-token pooling after 0 blocks sees
    the same token for every concept, mean pooling over the content does not."""
    last = HyperSteer(tiny_llama, variant="no_context", n_blocks=0, pooling="last", center=False, head_init_std=0.5)
    mean = HyperSteer(tiny_llama, variant="no_context", n_blocks=0, pooling="mean", center=False, head_init_std=0.5)
    assert vector_separation(last, STEER, BASE[:1])["collapsed"]
    assert not vector_separation(mean, STEER, BASE[:1])["collapsed"]


def test_a_collapsed_hypernetwork_is_flagged(tiny_llama):
    hyper = HyperSteer(tiny_llama, variant="cross_attention", n_blocks=1, head_init_std=0.3)
    report = vector_separation(hyper, STEER, BASE)
    assert not report["collapsed"] and report["shared_fraction"] < 0.999
    with torch.no_grad():
        hyper.head.weight.zero_()
        hyper.head.bias.fill_(0.7)
    report = vector_separation(hyper, STEER, BASE)
    assert report["collapsed"] and report["between_concepts"] == pytest.approx(1.0)
    assert report["shared_fraction"] == pytest.approx(1.0)
    assert shared_fraction(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])) == 0.0


def test_distillation_needs_distillation_records(tiny_llama):
    hyper = HyperSteer(tiny_llama, n_blocks=1)
    with pytest.raises(TypeError, match="loss='distill' needs DistillRecords"):
        HyperSteerTrainer(hyper, [SteeringExample("c", STEER[0], BASE[0], "text")], progress=False)


def test_hypersteer_learns_two_concepts_from_distillation_on_a_tiny_model(tiny_llama):
    concepts = [Concept(id=w, title=w, steering_prompts=[s]) for w, s in zip(("rivers", "castles"), STEER, strict=False)]
    prompts = [BasePrompt(id=f"p{i}", text=t) for i, t in enumerate(BASE)]
    data = build_distill_teacher(tiny_llama, [(c, p) for c in concepts for p in prompts],
                                 DistillConfig(max_new_tokens=4, top_k=16), progress=False)
    hyper = HyperSteer(tiny_llama, variant="no_context", n_blocks=1, lr=3e-3, batch_size=4, max_steps=40,
                       eval_every=0)
    before = mean_loss(hyper, data.records)
    HyperSteerTrainer(hyper, data.records, progress=False).train()
    assert mean_loss(hyper, data.records) < before


def test_train_hypersteer_command_distills_from_the_packaged_concepts(tmp_path):
    from hooksteer.cli import main

    run = tmp_path / "run.json"
    run.write_text(json.dumps({"model": "tiny:llama", "variant": "no_context", "n_blocks": 1, "batch_size": 4,
                               "max_steps": 2, "data": {"train_concepts": 3, "held_out": 2, "train_prompts": 2,
                                                        "eval_prompts": 2, "teacher_tokens": 3, "top_k": 4}}))
    out = tmp_path / "out"
    assert main(["train-hypersteer", str(run), "--out", str(out), "--no-progress"]) == 0
    settings = json.loads((out / "train_config.json").read_text())
    assert settings["n_train"] == 6 and settings["n_eval"] == 4 and settings["loss"] == "distill"
    split = json.loads((out / "split.json").read_text())
    assert len(split["held_out_concepts"]) == 2 and (out / "teacher" / "index.jsonl").is_file()
    assert HyperSteer.load(out, hs.testing.tiny_model("llama")).config.loss == "distill"


@pytest.mark.slow
@pytest.mark.real_model
def test_real_model_short_distillation_gives_distinct_vectors_for_held_out_concepts(tmp_path):
    from hooksteer.hypersteer.dataset import DistillDataSettings, build_distill_dataset

    model = hs.load_model(progress=False)
    data = build_distill_dataset(model, DistillDataSettings(train_concepts=12, held_out=2, train_prompts=2,
                                                            eval_prompts=1, teacher_tokens=16),
                                 cache_dir=tmp_path / "teacher", generator=hs.load_bridge(), progress=False)
    hyper = HyperSteer(model, variant="no_context", n_blocks=12, freeze_blocks=True, lr=1e-3, head_lr=1e-3,
                       batch_size=6, max_steps=16, eval_every=0)
    before = mean_loss(hyper, data.held_out.records)
    HyperSteerTrainer(hyper, data.train.records, progress=False).train()
    vectors = hyper.vectors([c.steering_prompt for c in data.held_out_concepts])
    assert float(torch.nn.functional.cosine_similarity(vectors[0], vectors[1], dim=0)) < 0.9
    assert mean_loss(hyper, data.held_out.records) < before


def test_head_weight_and_shared_bias_have_their_own_learning_rates(tiny_llama):
    from hooksteer.hypersteer.trainer import parameter_groups

    hyper = HyperSteer(tiny_llama, n_blocks=1, lr=1e-4, head_lr=1e-3, head_bias_lr=5e-2)
    groups = {g["name"]: g for g in parameter_groups(hyper)}
    assert groups["head_bias"]["params"] == [hyper.head.bias] and groups["head_bias"]["lr"] == 5e-2
    assert groups["head_weight"]["params"] == [hyper.head.weight] and groups["head_weight"]["lr"] == 1e-3
    assert groups["body"]["lr"] == 1e-4 and len(groups["body"]["params"]) == sum(
        1 for p in hyper.parameters() if p.requires_grad) - 2
    with pytest.raises(hs.hypersteer.HyperSteerConfigError, match="head_bias_lr must be > 0"):
        HyperSteer(tiny_llama, head_bias_lr=0.0)


def test_frozen_blocks_read_the_base_models_own_representation_and_are_not_saved(tiny_llama, tmp_path):
    hyper = HyperSteer(tiny_llama, variant="no_context", n_blocks=2, freeze_blocks=True, center=False,
                       head_init_std=0.1)
    trainable = {name for name, p in hyper.named_parameters() if p.requires_grad}
    assert trainable == {"ln_final.w", "head.weight", "head.bias"}
    # H's pooled features are the base model's layer-1 residual over the steering prompt
    seen = {}
    hyper.ln_final.register_forward_pre_hook(lambda module, args: seen.__setitem__("pooled", args[0].detach()))
    hyper.vectors(STEER[0])
    tokens = tiny_llama.to_tokens(STEER[0])
    _, cache = tiny_llama.run_with_cache(tokens, names_filter="blocks.1.hook_resid_post")
    first = 1 + int(bool(tiny_llama.cfg.default_prepend_bos))
    torch.testing.assert_close(seen["pooled"][0], cache["blocks.1.hook_resid_post"][0, first:].mean(0),
                               atol=1e-5, rtol=1e-5)
    hyper.save(tmp_path / "h")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "h" / "model.safetensors"), framework="pt") as handle:
        assert set(handle.keys()) == trainable
    torch.testing.assert_close(HyperSteer.load(tmp_path / "h", tiny_llama).vectors(STEER), hyper.vectors(STEER))
