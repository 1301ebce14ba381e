"""PSR (prompt steering replacement) on tiny models: teacher Δ, gates, hooks in cached generation,
training, save/load, analysis helpers, evaluation adapter and CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import hooksteer as hs
from analysis.token_effects import concentration, heatmap_html, heatmap_png, pearson, projections, spearman
from hooksteer.data.schema import Concept, SteeringExample
from hooksteer.psr import (
    PSR,
    PSRConfig,
    PSRFileError,
    compute_teacher,
    encode_examples,
    encode_pair,
    train_psr,
)
from hooksteer.psr.loss import activation_mse, dead_gate_penalty, response_nll
from hooksteer.psr.trainer import batch_loss, fit_metrics, make_batch

torch.set_num_threads(1)  # tiny models: a second thread only adds contention on a shared CPU

STEER = "Write about rivers. Every sentence must be about rivers."


def _examples(n: int = 6, concept: str = "river") -> list[SteeringExample]:
    return [SteeringExample(concept, STEER, f"Tell me something about day {i}.",
                            f"The river flows past castle {i} while the music plays by the water.")
            for i in range(n)]


def _records(model, layers, n: int = 6, steering: str = STEER):
    examples = [SteeringExample(e.concept_id, steering, e.base_prompt, e.target) for e in _examples(n)]
    return compute_teacher(model, encode_examples(model, examples), layers)


# ============================================================================ teacher
def test_teacher_delta_is_exactly_zero_without_instruction(tiny_model):
    records = _records(tiny_model, [0, 1, 2], n=3, steering="")
    for record in records:
        assert record.pair.plain_prompt.tolist() == record.pair.steered_prompt.tolist()
        for layer in (0, 1, 2):
            assert torch.equal(record.delta[layer], torch.zeros_like(record.delta[layer]))


def test_teacher_delta_aligns_by_response_position(tiny_llama):
    record = _records(tiny_llama, [1], n=1)[0]
    pair = record.pair
    assert pair.steered_prompt.numel() > pair.plain_prompt.numel()  # the instruction adds tokens
    _, plain = tiny_llama.run_with_cache(pair.plain[None])
    _, steered = tiny_llama.run_with_cache(pair.steered[None])
    p, q, n = pair.plain_prompt.numel(), pair.steered_prompt.numel(), pair.response.numel()
    expected = steered["blocks.1.hook_resid_post"][0, q : q + n] - plain["blocks.1.hook_resid_post"][0, p : p + n]
    torch.testing.assert_close(record.delta[1], expected, atol=1e-5, rtol=1e-5)
    assert record.delta[1].abs().sum() > 0


def test_teacher_bad_inputs_raise(tiny_llama):
    with pytest.raises(ValueError, match="response is empty"):
        encode_pair(tiny_llama, STEER, "Hi there.", "   ")
    with pytest.raises(ValueError, match="base_prompt"):
        encode_pair(tiny_llama, STEER, "", "Some answer.")
    with pytest.raises(ValueError, match="no teacher pairs"):
        compute_teacher(tiny_llama, [], [1])
    pair = encode_pair(tiny_llama, STEER, "Hi there.", "An answer.")
    with pytest.raises(ValueError, match="layers"):
        compute_teacher(tiny_llama, [pair], [7])
    with pytest.raises(ValueError, match="response is empty"):
        type(pair)(pair.plain_prompt, pair.steered_prompt, torch.zeros(0, dtype=torch.long))


# ============================================================================ model and hooks
def test_gate_is_never_negative():
    torch.manual_seed(0)
    psr = PSR(PSRConfig(layers=[1], d_model=16))
    for bias in (-5.0, 0.0, 3.0):
        psr.set_layer(1, weight=torch.randn(16) * 4, bias=bias, z=torch.randn(16))
        values = psr.gate_values(1, torch.randn(4, 9, 16) * 10)
        assert (values >= 0).all()
    assert (values > 0).any()


def test_gate_values_in_cached_generation_are_non_negative(tiny_llama):
    torch.manual_seed(1)
    psr = PSR(PSRConfig(layers=[1], d_model=32, positions="all"))
    psr.set_layer(1, weight=torch.randn(32), bias=-0.2, z=torch.randn(32))
    seen = []
    with psr.steer(tiny_llama, 1.0) as hooks:
        hook = hooks[0][1]
        original = hook.gate

        def spy(activation):
            values = original(activation)
            seen.append(values.detach())
            return values

        hook.gate = spy
        tiny_llama.generate("the river", max_new_tokens=5, do_sample=False, stop_at_eos=False, verbose=False)
    assert len(seen) == 5 and all((v >= 0).all() for v in seen)


def test_psr_with_zero_weight_equals_constant_steering(tiny_model):
    torch.manual_seed(0)
    z = torch.randn(32)
    psr = PSR(PSRConfig(layers=[1], d_model=32, positions="all"))
    psr.set_layer(1, weight=torch.zeros(32), bias=1.0, z=z)
    tokens = tiny_model.to_tokens("the river runs by the castle")
    with psr.steer(tiny_model, 2.5):
        gated = tiny_model(tokens)
    with hs.steer(tiny_model, hs.SteeringVector("blocks.1.hook_resid_post", z) * 2.5):
        constant = tiny_model(tokens)
    plain = tiny_model(tokens)
    torch.testing.assert_close(gated, constant)
    assert not torch.allclose(gated, plain)


def _manual_cached_logits(model, tokens, prompt_length):
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, 1)
    pieces = [model(tokens[:, :prompt_length], past_kv_cache=cache)]
    for t in range(prompt_length, tokens.shape[1]):
        pieces.append(model(tokens[:, t : t + 1], past_kv_cache=cache))
    return torch.cat(pieces, dim=1)


@pytest.mark.parametrize("positions", ["all", "generated"])
def test_cached_and_uncached_steered_logits_agree(tiny_model, positions):
    torch.manual_seed(2)
    psr = PSR(PSRConfig(layers=[0, 2], d_model=32, variant="adaptive", positions=positions))
    for layer in (0, 2):
        psr.set_layer(layer, weight=torch.randn(32) * 0.5, bias=0.1, z=torch.randn(32))
    prompt = tiny_model.to_tokens("the river runs")
    with psr.steer(tiny_model, 3.0):
        generated = tiny_model.generate(prompt, max_new_tokens=6, do_sample=False, stop_at_eos=False, verbose=False)
    with psr.steer(tiny_model, 3.0):
        uncached = tiny_model.generate(prompt, max_new_tokens=6, do_sample=False, stop_at_eos=False, verbose=False,
                                       use_past_kv_cache=False)
    assert torch.equal(generated, uncached)
    with psr.steer(tiny_model, 3.0):
        cached_logits = _manual_cached_logits(tiny_model, generated, prompt.shape[1])
    # the same steering applied to one full pass, with explicit absolute positions
    steered_positions = "all" if positions == "all" else list(range(prompt.shape[1], generated.shape[1]))
    with psr.steer(tiny_model, 3.0, positions=steered_positions):
        full_logits = tiny_model(generated)
    torch.testing.assert_close(cached_logits, full_logits, atol=1e-4, rtol=1e-4)
    with psr.steer(tiny_model, 0.0):
        unsteered = tiny_model(generated)
    assert not torch.allclose(full_logits, unsteered, atol=1e-3)


def test_generated_tokens_get_lambda_from_their_own_activations(tiny_llama):
    torch.manual_seed(3)
    psr = PSR(PSRConfig(layers=[1], d_model=32))  # positions="generated"
    psr.set_layer(1, weight=torch.randn(32), bias=0.3, z=torch.randn(32))
    prompt = tiny_llama.to_tokens("the castle")
    per_step = []
    with psr.steer(tiny_llama, 2.0) as hooks:
        hook = hooks[0][1]
        original = hook.gate

        def spy(activation):
            values = original(activation)
            per_step.append(values[0, -1].item())
            return values

        hook.gate = spy
        out = tiny_llama.generate(prompt, max_new_tokens=5, do_sample=False, stop_at_eos=False, verbose=False)
    # λ of every generated token (except the last, never fed back) from its own activation in one full
    # pass: the PSR steers layer 1's output, so layer-1 activations themselves are unchanged by it
    n_prompt = prompt.shape[1]
    _, cache = tiny_llama.run_with_cache(out)
    own = psr.gate_values(1, cache["blocks.1.hook_resid_post"])[0]
    fed = per_step[1:]  # step 0 is the prompt pass (its last token is a prompt token)
    torch.testing.assert_close(torch.tensor(fed), own[n_prompt : n_prompt + len(fed)], atol=1e-5, rtol=1e-5)


# ============================================================================ losses and training
def test_losses_check_inputs():
    with pytest.raises(ValueError, match="differ in shape"):
        activation_mse(torch.zeros(1, 3, 2), torch.zeros(1, 4, 2), torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="no response token"):
        activation_mse(torch.zeros(1, 3, 2), torch.zeros(1, 3, 2), torch.zeros(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="do not match"):
        response_nll(torch.zeros(3, 5), torch.zeros(2, dtype=torch.long))
    gates = torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    assert float(dead_gate_penalty(gates, torch.ones(2, 3, dtype=torch.bool))) == pytest.approx(0.5)


def test_training_recovers_a_planted_token_gate(tiny_llama):
    """Toy teacher: Δ_t = ReLU(w*·h_t + b*)·u on the real activations h_t. Constant steering (the mean-Δ
    start) cannot fit it; training must cut the activation-matching loss and find the planted gate."""
    torch.manual_seed(5)
    records = _records(tiny_llama, [1])
    h = torch.cat([r.plain[1] for r in records])
    w_star = torch.randn(32) / h.norm(dim=-1).mean()
    b_star = -float((h @ w_star).median())  # about half the tokens get λ* = 0
    u = torch.randn(32)
    for r in records:
        r.delta[1] = torch.relu(r.plain[1] @ w_star + b_star)[:, None] * u
    config = PSRConfig(layers=[1], d_model=32, loss="mse", steps=150, lr=0.05, batch_size=6, init="mean_delta",
                       local_steps=0)
    psr, result = train_psr(tiny_llama, records, config, progress=False, diagnose=False)
    assert result.final["mse"] < 0.3 * result.initial["mse"]
    lam = psr.gate_values(1, h[None])[0]
    assert pearson(lam, torch.relu(h @ w_star + b_star)) > 0.9


def test_adaptive_training_reduces_activation_matching_loss(tiny_llama):
    records = _records(tiny_llama, [0, 1, 2])
    config = PSRConfig(layers=[0, 1, 2], d_model=32, variant="adaptive", loss="mse", steps=60, lr=0.05,
                       batch_size=6, init="mean_delta", local_steps=0)
    psr, result = train_psr(tiny_llama, records, config, progress=False, diagnose=False)
    assert result.final["mse"] < 0.9 * result.initial["mse"]
    assert result.history and result.history[-1]["step"] == 60
    lam = psr.gate_values(2, torch.cat([r.plain[2] for r in records])[None])
    assert lam.std() > 0  # the trained gate differs between tokens


def test_likelihood_training_reduces_nll_and_matches_inference_hooks(tiny_llama):
    records = _records(tiny_llama, [1])
    config = PSRConfig(layers=[1], d_model=32, loss="likelihood", steps=30, lr=0.05, batch_size=6)
    psr, result = train_psr(tiny_llama, records, config, progress=False)
    assert result.final["likelihood"] < result.initial["likelihood"]
    # the training forward (cached layer-1 residual + blocks above) equals a full pass with the PSR hooks
    record = records[0]
    batch = make_batch([record], 0)
    with torch.no_grad():
        _, parts = batch_loss(tiny_llama, psr, batch)
    p, n = record.pair.plain_prompt.numel(), record.n_tokens
    with torch.no_grad(), psr.steer(tiny_llama, 1.0, positions=list(range(p, p + n))):
        logits = tiny_llama(record.pair.plain[None])
    nll = torch.nn.functional.cross_entropy(logits[0, p - 1 : p + n - 1], record.pair.response)
    assert parts["likelihood"] == pytest.approx(float(nll), rel=1e-4)


def test_regulariser_revives_a_dead_gate(tiny_llama):
    records = _records(tiny_llama, [1])
    config = PSRConfig(layers=[1], d_model=32, steps=0, regulariser=1.0)
    psr, _ = train_psr(tiny_llama, records, config, progress=False)
    psr.set_layer(1, bias=-50.0)  # every λ = 0
    psr.requires_grad_(True)
    batch = make_batch(records, 0)
    total, parts = batch_loss(tiny_llama, psr, batch)
    assert parts["dead_gate_penalty"] == pytest.approx(1.0)
    total.backward()
    assert psr.gate(1).bias.grad is not None and float(psr.gate(1).bias.grad) < 0


def test_fit_metrics_report_constant_baseline(tiny_llama):
    records = _records(tiny_llama, [1])
    config = PSRConfig(layers=[1], d_model=32, steps=0, init="mean_delta")
    psr, _ = train_psr(tiny_llama, records, config, progress=False)
    fit = fit_metrics(psr, records)
    # untrained = constant steering by mean Δ (w=0, b=1): exactly the constant-vector fit
    assert fit["r2"] == pytest.approx(fit["r2_constant"], abs=1e-5)


# ============================================================================ save / load
def test_save_load_roundtrip_and_errors(tiny_llama, tmp_path):
    torch.manual_seed(4)
    psr = PSR(PSRConfig(layers=[0, 2], d_model=32, variant="adaptive", loss="likelihood", concept_id="river"))
    for layer in (0, 2):
        psr.set_layer(layer, weight=torch.randn(32), bias=0.5, z=torch.randn(32))
    psr.save(tmp_path / "psr")
    again = PSR.load(tmp_path / "psr", tiny_llama)
    assert again.config.to_dict() == psr.config.to_dict()
    for a, b in zip(psr.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(PSRFileError, match="no psr_config.json"):
        PSR.load(tmp_path / "missing")
    (tmp_path / "psr" / "psr.safetensors").write_bytes(b"garbage")
    with pytest.raises(PSRFileError, match="corrupt"):
        PSR.load(tmp_path / "psr")
    wide = PSR(PSRConfig(layers=[1], d_model=64))
    wide.save(tmp_path / "wide")
    with pytest.raises(PSRFileError, match="d_model"):
        PSR.load(tmp_path / "wide", tiny_llama)


def test_config_rejects_bad_settings():
    with pytest.raises(ValueError, match="exactly one layer"):
        PSRConfig(layers=[1, 2], d_model=8)
    with pytest.raises(ValueError, match="variant"):
        PSRConfig(layers=[1], d_model=8, variant="both")
    with pytest.raises(ValueError, match="loss"):
        PSRConfig(layers=[1], d_model=8, loss="kl")
    with pytest.raises(ValueError, match="positions"):
        PSRConfig(layers=[1], d_model=8, positions="prompt")
    with pytest.raises(ValueError, match="init"):
        PSRConfig(layers=[1], d_model=8, init="zeros")
    psr = PSR(PSRConfig(layers=[1], d_model=8))
    with pytest.raises(ValueError, match="shape"):
        psr.set_layer(1, z=torch.zeros(9))
    with pytest.raises(ValueError, match="NaN|inf|finite"):
        psr.set_layer(1, z=torch.full((8,), float("nan")))


# ============================================================================ analysis
def test_concentration_and_correlations():
    uniform = concentration(torch.ones(20))
    assert uniform["top10_share"] == pytest.approx(0.1) and uniform["gini"] == pytest.approx(0.0, abs=1e-9)
    peaked = concentration(torch.tensor([100.0] + [1.0] * 19))
    assert peaked["top10_share"] > 0.8 and peaked["gini"] > 0.7
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert pearson(x, 2 * x + 1) == pytest.approx(1.0)
    assert spearman(x, x**3) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="lengths differ"):
        pearson(x, torch.ones(3))
    with pytest.raises(ValueError, match="NaN"):
        spearman(torch.tensor([1.0, float("nan")]), torch.ones(2))
    with pytest.raises(ValueError, match="non-negative"):
        concentration(torch.tensor([1.0, -1.0]))
    delta = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    assert projections(delta, torch.tensor([2.0, 0.0])).tolist() == [3.0, 0.0]


def test_heatmaps(tmp_path):
    tokens = ["The", "·river", "·flows"]
    path = heatmap_png(tokens, {"‖Δ_t‖": [1.0, 5.0, 2.0], "λ_t": [0.0, 2.0, 1.0]}, tmp_path / "h.png", title="t")
    assert path.is_file() and path.stat().st_size > 1000
    html = heatmap_html(tokens, {"λ_t": [0.0, 2.0, 1.0]}, title="x")
    assert html.count("<span") == 3
    with pytest.raises(ValueError, match="3 tokens"):
        heatmap_png(tokens, {"λ": [1.0, 2.0]}, tmp_path / "bad.png")


def test_heatmap_cells_carry_the_computed_projections():
    import re

    g = torch.Generator().manual_seed(0)
    delta, vector = torch.randn(5, 8, generator=g), torch.randn(8, generator=g)
    expected = projections(delta, hs.SteeringVector("blocks.0.hook_resid_post", vector))
    torch.testing.assert_close(expected, delta @ (vector / vector.norm()))
    html = heatmap_html([f"t{i}" for i in range(5)], {"Δ·v": expected})
    shown = [float(x) for x in re.findall(r"title='([^']+)'", html)]
    assert shown == pytest.approx(expected.tolist(), rel=1e-3, abs=1e-4)


# ============================================================================ evaluation adapter and CLI
def test_psr_method_in_evaluate(tiny_llama, tmp_path):
    from hooksteer.evaluate.base import JudgeScores
    from hooksteer.evaluate.methods import DiffMeanMethod, PromptSteering, SteeringMethod
    from hooksteer.evaluate.protocol import evaluate
    from hooksteer.psr.evaluation import PSRMethod, PSRTeacherData

    class Judge:
        name = "keyword"

        def rate(self, concept, instruction, outputs):
            return [JudgeScores(concept=2.0 if "river" in o else 0.5, instruction=1.0, fluency=1.0) for o in outputs]

    concepts = [Concept(id=w, title=w, steering_prompts=[f"Write about {w}. Every sentence must be about {w}."],
                        text=f"The {w} is old. Every {w} has a story.") for w in ("river", "castle")]
    examples = {c.id: [SteeringExample(c.id, c.steering_prompts[0], f"Tell me about day {i}.",
                                       f"The {c.id} is near the town and the {c.id} is big.") for i in range(3)]
                for c in concepts}
    data = PSRTeacherData(tiny_llama, examples, layers=[0, 1, 2])
    methods = [PSRMethod(data, PSRConfig(layers=[2], d_model=32, steps=5), save_dir=tmp_path / "s"),
               PSRMethod(data, PSRConfig(layers=[0, 1, 2], d_model=32, variant="adaptive", loss="likelihood",
                                         steps=3)),
               PromptSteering(), DiffMeanMethod(layer=2)]
    assert all(isinstance(m, SteeringMethod) for m in methods)
    from hooksteer.data.schema import BasePrompt

    prompts = [BasePrompt(id=str(i), text=f"Question number {i}?") for i in range(4)]
    result = evaluate(tiny_llama, methods, concepts, prompts, judge=Judge(), factors=[0.5, 1.0],
                      max_new_tokens=3, progress=False)
    assert set(result.methods) == {"s-psr-mse", "a-psr-likelihood", "prompt", "diffmean"}
    psr_rows = [c for c in result.concepts if c.method == "s-psr-mse"]
    assert all(c.info["natural_factor"] > 0 and c.info["n_teacher_examples"] == 3 for c in psr_rows)
    assert (tmp_path / "s" / "river" / "psr.safetensors").is_file()
    assert {"rel_error_top_train", "dead_share_mean_train", "nll_psr_train"} <= set(psr_rows[0].info)
    # a second run loads the saved PSRs instead of training
    again = PSRMethod(data, PSRConfig(layers=[2], d_model=32, steps=5), save_dir=tmp_path / "s")
    steerer = again.prepare(tiny_llama, concepts[0], concepts[1:])
    assert steerer.info["loaded_from"].endswith("river")
    # ... but never a PSR trained with other settings: that would silently evaluate the wrong PSR
    other = PSRMethod(data, PSRConfig(layers=[2], d_model=32, steps=7), save_dir=tmp_path / "s")
    with pytest.raises(ValueError, match=r"other settings \(steps: 5 != 7\)"):
        other.prepare(tiny_llama, concepts[0], concepts[1:])
    with pytest.raises(ValueError, match="no teacher examples"):
        methods[0].prepare(tiny_llama, Concept(id="other", title="other"), [])


def test_cli_train_psr(tmp_path, capsys):
    import argparse

    from hooksteer.psr import cli

    examples = tmp_path / "ex.jsonl"
    examples.write_text("\n".join(json.dumps(e.to_dict()) for e in _examples(4)))
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["train-psr", "--examples", str(examples), "--model", "tiny:llama", "--steps", "3",
                              "--variant", "adaptive", "--layers", "0-2", "--out", str(tmp_path / "out"),
                              "--no-progress"])
    assert args.func(args) == 0
    out = Path(tmp_path / "out")
    assert {"psr_config.json", "psr.safetensors", "history.json", "fit.json", "config.json"} <= {
        p.name for p in out.iterdir()}
    assert PSR.load(out).layers == [0, 1, 2]
    assert "a-psr-mse" in capsys.readouterr().out


def test_response_gates_match_unsteered_gates_for_s_psr(tiny_llama):
    from hooksteer.psr.trainer import response_gates

    records = _records(tiny_llama, [1], n=2)
    torch.manual_seed(6)
    psr = PSR(PSRConfig(layers=[1], d_model=32))
    psr.set_layer(1, weight=torch.randn(32), bias=0.2, z=torch.randn(32))
    via_hooks = response_gates(tiny_llama, psr, records[0], alpha=2.0)[1]
    direct = psr.gate_values(1, records[0].plain[1][None])[0]
    torch.testing.assert_close(via_hooks, direct, atol=1e-5, rtol=1e-5)
    assert fit_metrics(psr, records, model=tiny_llama)["lambda_delta_pearson"] == pytest.approx(
        fit_metrics(psr, records)["lambda_delta_pearson"], abs=1e-4)


def _psr_eval():
    from benchmark_scripts import load_benchmark

    return load_benchmark("psr_eval")


def test_psr_eval_command_line_parses_to_the_same_settings_as_before():
    module = _psr_eval()
    settings, args = module.parse_settings(
        "--threads 1 --concepts 24 --train-prompts 6 --teacher-candidates 3 --distill-prompts 10 --local-steps 30 "
        "--steps 8 --eval-every 4 --eval-prompts 6 --out runs/psr_eval20".split())
    assert settings == module.PSREvalSettings(threads=1, concepts=24, train_prompts=6, teacher_candidates=3,
                                              distill_prompts=10, local_steps=30, steps=8, eval_every=4,
                                              eval_prompts=6, out="runs/psr_eval20")
    assert (settings.eval_concepts, settings.psr_grid, settings.position_variants, settings.joint,
            settings.apsr_layers, settings.lr) == (20, [0.5, 1.0, 2.0, 4.0], ["after_sink"], True, None, 0.02)
    assert not args.tiny and not args.estimate_only and args.rerender is None
    settings, _ = module.parse_settings(["--position-variants", "--no-joint", "--apsr-layers", "0-29"])
    assert settings.position_variants == [] and settings.joint is False and settings.apsr_layers == list(range(30))
    tiny, _ = module.parse_settings(["--tiny", "--steps", "7"])
    assert (tiny.steps, tiny.concepts, tiny.model_class) == (7, 2, "hooked")  # explicit flags win over --tiny
    for bad in (["--eval-prompts", "1"], ["--psr-grid"], ["--positions", "all"], ["--position-variants", "x"]):
        with pytest.raises(SystemExit):
            module.parse_settings(bad)


def test_psr_eval_saves_settings_json_before_loading_the_model(tmp_path, monkeypatch):
    module = _psr_eval()
    flags = ["--tiny", "--steps", "3", "--apsr-layers", "0,1", "--no-joint", "--out", str(tmp_path)]

    def stop(*_args, **_kwargs):
        raise RuntimeError("stopped before loading the model")

    monkeypatch.setattr(module.common, "load_model", stop)
    with pytest.raises(RuntimeError, match="stopped"):
        module.main(flags)
    saved = json.loads((tmp_path / "settings.json").read_text())
    assert saved.pop("class") == "PSREvalSettings"
    assert module.PSREvalSettings(**saved) == module.parse_settings(flags)[0]
    assert not (tmp_path / "settings.json.tmp").exists()


def test_benchmark_tiny_runs_every_method_in_one_evaluation(tmp_path):
    module = _psr_eval()
    report = module.main(["--tiny", "--out", str(tmp_path)])
    assert set(report["scores"]) == {"prompt", "diffmean", "s-psr-mse", "s-psr-likelihood", "s-psr-distill",
                                     "a-psr-mse", "a-psr-likelihood", "a-psr-distill", "constant-floor",
                                     "a-psr-distill@after_sink"}
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["verdict"] == report["verdict"]
    assert json.loads((tmp_path / "settings.json").read_text())["steps"] == saved["config"]["steps"] == 2
    assert 0.0 <= saved["teacher"][report["data"]["concepts"][0]]["top10_share"] <= 1.0
    assert all((tmp_path / f"heatmap_{c}.png").is_file() for c in report["data"]["concepts"])
    assert (tmp_path / "evaluation" / "results.json").is_file() and (tmp_path / "fidelity_per_layer.png").is_file()
    score = saved["scores"]["a-psr-distill"]["score"]
    assert score["low"] <= score["mean"] <= score["high"] and score["n"] == len(report["data"]["concepts"])
    assert {"a", "b", "low", "high", "excludes_zero"} <= set(saved["paired"][0])
    text = (tmp_path / "results.md").read_text()
    assert "PSR fidelity, gate health and generalisation" in text and "Paired differences" in text
    assert saved["scores"]["a-psr-mse"]["alpha_median"] is not None
