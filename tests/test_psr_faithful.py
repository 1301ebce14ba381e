"""PSR as the paper does it (tiny models): the training path equals the inference hooks, per-row α in a
left-padded batch, the layer-by-layer initialisation, template-token steering, the distillation loss and the
coherence-target strength search."""

from __future__ import annotations

import pytest
import torch

from hooksteer.activations import pad_token_id
from hooksteer.data.schema import BasePrompt, Concept, SteeringExample
from hooksteer.psr import PSR, PSRConfig, compute_teacher, encode_examples, train_psr
from hooksteer.psr.model import steer_mask
from hooksteer.psr.teacher import TeacherPair, pairs_from_distill, plain_chat_prompt, template_suffix_length
from hooksteer.psr.trainer import batch_loss, make_batch, steered_pass

torch.set_num_threads(1)  # tiny models: a second thread only adds contention on a shared CPU

STEER = "Write about rivers. Every sentence must be about rivers."


def _examples(n: int = 6) -> list[SteeringExample]:
    return [SteeringExample("river", STEER, f"Tell me something about day {i}.",
                            f"The river flows past castle {i} while the music plays by the water.")
            for i in range(n)]


def _records(model, layers, n: int = 6, steering: str = STEER):
    examples = [SteeringExample(e.concept_id, steering, e.base_prompt, e.target) for e in _examples(n)]
    return compute_teacher(model, encode_examples(model, examples), layers, prefix_tokens=template_suffix_length(model))


def _random_psr(layers, d=32, seed=0, **kwargs) -> PSR:
    torch.manual_seed(seed)
    psr = PSR(PSRConfig(layers=layers, d_model=d, variant="adaptive" if len(layers) > 1 else "single", **kwargs))
    for layer in layers:
        psr.set_layer(layer, weight=torch.randn(d) * 0.3, bias=0.5, z=torch.randn(d) * 0.5)
    return psr


def _capture_hooks(model, store):
    def make(layer):
        def hook(activation, hook=None):
            store.setdefault(layer, []).append(activation.detach().clone())
        return hook
    return [(f"blocks.{layer}.hook_resid_post", make(layer)) for layer in range(model.cfg.n_layers)]


# ============================================================================ positions
def test_template_suffix_length_counts_the_assistant_opening(tiny_llama):
    k = template_suffix_length(tiny_llama)
    tokens = tiny_llama.to_tokens(plain_chat_prompt(tiny_llama, "hello there?"))[0]
    suffix = tiny_llama.tokenizer.decode(tokens[-k:].tolist())
    assert k >= 2 and "assistant" in suffix and "hello" not in suffix


def test_steer_mask_modes():
    absolute = torch.tensor([[-1, -1, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5]])
    lengths = torch.tensor([3, 4])
    assert steer_mask("generated", absolute, lengths).int().tolist() == [[0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 1, 1]]
    assert steer_mask("response", absolute, lengths, template_tokens=2).int().tolist() == [
        [0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 1]]
    assert steer_mask("after_sink", absolute, None, sink_tokens=2).int().tolist() == [
        [0, 0, 0, 0, 1, 1], [0, 0, 1, 1, 1, 1]]
    assert steer_mask("all", absolute, None).int().tolist()[0] == [0, 0, 1, 1, 1, 1]


def test_response_mode_steers_the_first_answer_token(tiny_llama):
    """'generated' cannot change the first answer token's prediction (made at the last prompt token);
    'response' (template tokens + generated) does."""
    prompt = tiny_llama.to_tokens(plain_chat_prompt(tiny_llama, "Tell me about rivers."))
    k = template_suffix_length(tiny_llama)
    plain = tiny_llama(prompt)[0, -1]
    for positions, changes in (("generated", False), ("response", True)):
        psr = _random_psr([0, 1, 2], positions=positions, template_tokens=k)
        with psr.steer(tiny_llama, 3.0):
            steered = tiny_llama(prompt)[0, -1]
        assert (not torch.allclose(steered, plain, atol=1e-4)) is changes


def test_delayed_mode_writes_the_first_tokens_unsteered_then_steers(tiny_bridge):
    """``"generated+K"``: the answer's first K+1 tokens are the unsteered ones (in a left-padded batch too, on the
    bridge's fast path), later tokens change; ``"generated+0"`` is ``"generated"``."""
    from hooksteer.generation import generate_tokens

    d_model = tiny_bridge.cfg.d_model
    g = torch.Generator().manual_seed(3)
    psr = PSR(PSRConfig(layers=[0, 1], d_model=d_model, variant="adaptive", positions="generated"))
    for layer in (0, 1):
        psr.set_layer(layer, weight=torch.zeros(d_model), bias=1.0, z=torch.randn(d_model, generator=g) * 30)
    texts = [plain_chat_prompt(tiny_bridge, t) for t in ("Hi.", "Tell me a long story about the river castle.")]
    plain = generate_tokens(tiny_bridge, texts, max_new_tokens=8, stop_at_eos=False)
    runs = {}
    for mode in ("generated", "generated+0", "generated+3"):
        with psr.steer(tiny_bridge, 1.0, positions=mode):
            runs[mode] = generate_tokens(tiny_bridge, texts, max_new_tokens=8, stop_at_eos=False)
    for row in range(2):
        assert runs["generated+0"][row].tolist() == runs["generated"][row].tolist()
        assert runs["generated+3"][row][:4].tolist() == plain[row][:4].tolist()
        assert runs["generated+3"][row].tolist() != plain[row].tolist()
        assert runs["generated"][row][:2].tolist() != plain[row][:2].tolist()


def test_window_mode_steers_only_its_slice_of_the_generated_positions(tiny_bridge):
    """``"generated+K:M"`` steers generated positions K+1 … M only: the answer's first M+1 tokens are those of
    ``"generated+K"``, and every forward pass of the cached generation adds at exactly M − K positions per row."""
    from hooksteer.generation import generate_tokens

    d_model = tiny_bridge.cfg.d_model
    g = torch.Generator().manual_seed(3)
    psr = PSR(PSRConfig(layers=[0], d_model=d_model, variant="adaptive", positions="generated"))
    psr.set_layer(0, weight=torch.zeros(d_model), bias=1.0, z=torch.randn(d_model, generator=g) * 30)
    texts = [plain_chat_prompt(tiny_bridge, t) for t in ("Hi.", "Tell me a long story about the river castle.")]
    runs, steered = {}, {}
    for mode in ("generated+3", "generated+3:5"):
        with psr.steer(tiny_bridge, 1.0, positions=mode, record=True) as hooks:
            runs[mode] = generate_tokens(tiny_bridge, texts, max_new_tokens=10, stop_at_eos=False)
            steered[mode] = hooks[0][1].stats()["tokens"].tolist()
    assert steered == {"generated+3": [6.0, 6.0], "generated+3:5": [2.0, 2.0]}  # 9 answer tokens fed back, 3 skipped
    for row in range(2):
        assert runs["generated+3:5"][row][:6].tolist() == runs["generated+3"][row][:6].tolist()


def test_unknown_modes_are_refused_when_the_hooks_are_made(tiny_llama):
    from hooksteer.psr.evaluation import PSRMethod

    psr = _random_psr([0, 1])
    for mode in ("generated+", "generated+-1", "later", "generated+2:"):
        with pytest.raises(ValueError, match="generated\\+K"), psr.steer(tiny_llama, 1.0, positions=mode):
            pass
    for mode in ("generated+4:4", "generated+4:2"):
        with pytest.raises(ValueError, match="needs M > K"), psr.steer(tiny_llama, 1.0, positions=mode):
            pass
    with pytest.raises(ValueError, match="generated\\+K"):
        PSRMethod(data=None, psr_config=psr.config, positions="later")


# ============================================================================ training path == inference path
def test_trained_apsr_activations_match_inference_hooks(tiny_llama):
    """The activations the training code computes (steered pass) equal those under the inference hooks on the
    same teacher-forced input: the prompt in one KV-cached pass, then the response one token at a time."""
    records = _records(tiny_llama, [0, 1, 2], n=4)
    config = PSRConfig(layers=[0, 1, 2], d_model=32, variant="adaptive", loss="likelihood", steps=4, lr=0.05,
                       batch_size=2, local_steps=10)
    psr, _ = train_psr(tiny_llama, records, config, progress=False, diagnose=False)
    assert config.template_tokens == records[0].n_prefix > 0
    trained = steered_pass(tiny_llama, psr, records, capture=True)
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    for row, record in enumerate(records):
        tokens = record.pair.plain[None]
        p = record.pair.plain_prompt.numel()
        store: dict[int, list[torch.Tensor]] = {}
        cache = TransformerLensKeyValueCache.init_cache(tiny_llama.cfg, tiny_llama.cfg.device, 1)
        with torch.no_grad(), psr.steer(tiny_llama, 1.0):
            with tiny_llama.hooks(fwd_hooks=_capture_hooks(tiny_llama, store)):
                tiny_llama(tokens[:, :p], past_kv_cache=cache)
                for t in range(p, tokens.shape[1]):
                    tiny_llama(tokens[:, t : t + 1], past_kv_cache=cache)
        start, end = record.span_start, record.span_start + record.n_span
        for layer in (0, 1, 2):
            inference = torch.cat(store[layer], dim=1)[0, start:end]
            training = trained.activations[layer][row, start:end]
            assert (inference - training).abs().max() < 1e-4
            # and the PSR really steers there (not a trivially zero PSR)
            assert (training - record.plain[layer]).abs().max() > 1e-3


def test_end_to_end_loss_equals_inference_scoring(tiny_llama):
    records = _records(tiny_llama, [0, 1, 2], n=3)
    psr = _random_psr([0, 1, 2], template_tokens=records[0].n_prefix)
    batch = make_batch(records, pad_token_id(tiny_llama))
    with torch.no_grad():
        _, parts = batch_loss(tiny_llama, psr, batch, loss="likelihood", layers=[1, 2])
    nll, count = 0.0, 0
    for record in records:
        p, n = record.pair.plain_prompt.numel(), record.n_tokens
        with torch.no_grad(), psr.steer(tiny_llama, 1.0, positions=list(range(record.span_start, p + n))):
            logits = tiny_llama(record.pair.plain[None])
        nll += float(torch.nn.functional.cross_entropy(logits[0, p - 1 : p + n - 1], record.pair.response,
                                                       reduction="sum"))
        count += n
    assert parts["likelihood"] == pytest.approx(nll / count, rel=1e-4)


# ============================================================================ batches
@pytest.mark.parametrize("positions", ["response", "generated"])
def test_left_padded_batch_with_alpha_per_row_matches_rows_alone(tiny_llama, positions):
    from hooksteer.generation import generate_tokens

    psr = _random_psr([0, 1, 2], positions=positions, template_tokens=template_suffix_length(tiny_llama))
    texts = [plain_chat_prompt(tiny_llama, t) for t in ("Hi.", "Tell me a long story about the river castle.",
                                                        "What is music?")]
    alphas = torch.tensor([0.5, 3.0, 0.0])
    with psr.steer(tiny_llama, alphas, record=True) as hooks:
        together = generate_tokens(tiny_llama, texts, max_new_tokens=6, stop_at_eos=False)
        sums = hooks[-1][1].stats()
    for row, text in enumerate(texts):
        with psr.steer(tiny_llama, float(alphas[row]), record=True) as hooks:
            alone = generate_tokens(tiny_llama, [text], max_new_tokens=6, stop_at_eos=False)[0]
            single = hooks[-1][1].stats()
        assert together[row].tolist() == alone.tolist()
        assert float(sums["tokens"][row]) == float(single["tokens"][0])
        assert float(sums["added"][row]) == pytest.approx(float(single["added"][0]), rel=1e-3, abs=1e-5)
    assert float(sums["added"][2]) == 0.0  # α = 0 adds nothing


def test_left_padded_forward_with_alpha_per_row_matches_rows_alone(tiny_llama):
    from hooksteer.activations import left_pad

    psr = _random_psr([0, 1, 2], template_tokens=template_suffix_length(tiny_llama))
    prompts = [tiny_llama.to_tokens(plain_chat_prompt(tiny_llama, t))[0] for t in ("Hi.", "Tell me about the castle.")]
    tokens, mask = left_pad(prompts, pad_token_id(tiny_llama))
    alphas = torch.tensor([2.0, 0.7])
    with torch.no_grad(), psr.steer(tiny_llama, alphas):
        together = tiny_llama(tokens, attention_mask=mask)
    for row, prompt in enumerate(prompts):
        with torch.no_grad(), psr.steer(tiny_llama, float(alphas[row])):
            alone = tiny_llama(prompt[None])[0]
        real = together[row, mask[row].bool()]
        assert (real - alone).abs().max() < 1e-4


# ============================================================================ initialisation
def test_layerwise_init_reproduces_a_rank1_teacher_exactly(tiny_llama):
    """Toy teacher: the prompted activations are those of the model steered by a planted A-PSR whose gates are
    positive on every span token (so each layer's local change is exactly rank 1 and linear in h). The
    layer-by-layer initialisation from one steered pass must reproduce Δ_l at every layer."""
    k = template_suffix_length(tiny_llama)
    records = _records(tiny_llama, [0, 1, 2], n=8, steering="")  # x' = x: Δ = 0, replaced below
    planted = PSR(PSRConfig(layers=[0, 1, 2], d_model=32, variant="adaptive", template_tokens=k))
    torch.manual_seed(3)
    for layer in (0, 1, 2):
        h = torch.cat([r.plain[layer] for r in records])
        w = torch.randn(32) / (h.norm(dim=-1).mean() * 10)
        planted.set_layer(layer, weight=w, bias=1.0, z=torch.randn(32) * 0.3)
    truth = steered_pass(tiny_llama, planted, records, capture=True)
    for row, record in enumerate(records):
        start, end = record.span_start, record.span_start + record.n_span
        for layer in (0, 1, 2):
            record.delta[layer] = truth.activations[layer][row, start:end] - record.plain[layer]
    gates = [truth.layers[layer]["dead_share_train"] for layer in (0, 1, 2)]
    assert gates == [0.0, 0.0, 0.0]  # the planted gates are alive everywhere: an exactly linear teacher
    config = PSRConfig(layers=[0, 1, 2], d_model=32, variant="adaptive", steps=0, local_steps=0, fit_ridge=1e-9)
    psr, result = train_psr(tiny_llama, records, config, progress=False)
    for layer in (0, 1, 2):
        stats = result.fidelity["layers"][str(layer)]
        assert stats["rel_error_train"] < 1e-3, (layer, stats)
        assert stats["local_r2_train"] > 1 - 1e-5
    # the per-token term λ_t z equals the planted one (the λ/z scale split is free)
    h = torch.cat([r.plain[0] for r in records])
    torch.testing.assert_close(psr.added(0, h[None]), planted.added(0, h[None]), atol=1e-3, rtol=1e-3)


def test_mean_delta_init_matches_the_mean_prompted_activation_at_every_layer(tiny_llama):
    records = _records(tiny_llama, [0, 1, 2])
    config = PSRConfig(layers=[0, 1, 2], d_model=32, variant="adaptive", steps=0, init="mean_delta", local_steps=0)
    psr, _ = train_psr(tiny_llama, records, config, progress=False, diagnose=False)
    run = steered_pass(tiny_llama, psr, records, capture=True)
    for layer in (0, 1, 2):
        assert torch.equal(psr.gate(layer).weight, torch.zeros(32))
        steered = torch.cat([run.activations[layer][i, r.span_start : r.span_start + r.n_span]
                             for i, r in enumerate(records)])
        target = torch.cat([r.plain[layer] + r.delta[layer] for r in records])
        torch.testing.assert_close(steered.mean(0), target.mean(0), atol=1e-4, rtol=1e-4)


def test_fit_init_beats_constant_and_local_steps_help_held_out(tiny_llama):
    records = _records(tiny_llama, [0, 1, 2], n=8)
    base = {"layers": [0, 1, 2], "d_model": 32, "variant": "adaptive", "steps": 0, "held_out_fraction": 0.25}
    _, constant = train_psr(tiny_llama, records, PSRConfig(**base, init="mean_delta"), progress=False)
    _, fitted = train_psr(tiny_llama, records, PSRConfig(**base, local_steps=50, lr=0.05), progress=False)
    top = lambda r: r.fidelity["layers"]["2"]["rel_error_train"]  # noqa: E731
    assert top(fitted) < top(constant)
    assert fitted.n_held_out > 0 and "rel_error_held_out" in fitted.fidelity["layers"]["2"]
    assert all("local_rel_mse_fit" in v for v in fitted.layers.values())


def test_dead_gates_switch_the_regulariser_on(tiny_llama):
    records = _records(tiny_llama, [1])
    config = PSRConfig(layers=[1], d_model=32, loss="likelihood", steps=3, lr=1e-6, batch_size=3,
                       init="random", local_steps=0)
    psr, _ = train_psr(tiny_llama, records, config, progress=False, diagnose=False)
    psr.set_layer(1, bias=-100.0)  # every gate dead
    psr.requires_grad_(True)
    total, parts = batch_loss(tiny_llama, psr, make_batch(records, 0), regulariser=1.0)
    assert parts["dead_gate_penalty"] == pytest.approx(1.0)
    total.backward()
    assert float(psr.gate(1).bias.grad) < 0  # the straight-through gradient pushes the bias up


# ============================================================================ distillation
def _distill_pairs(model, steer_vector=None, layer=1, k=8):
    """Pairs whose teacher top-k is the model's own distribution on xy' (optionally with a planted vector)."""
    import hooksteer as hs
    from hooksteer.distill import topk_teacher

    pairs = encode_examples(model, _examples(4))
    out = []
    for pair in pairs:
        p, n = pair.plain_prompt.numel(), pair.response.numel()
        with torch.no_grad():
            if steer_vector is None:
                logits = model(pair.plain[None])
            else:
                with hs.steer(model, hs.SteeringVector(f"blocks.{layer}.hook_resid_post", steer_vector)):
                    logits = model(pair.plain[None])
        ids, logprobs = topk_teacher(logits[0, p - 1 : p + n - 1], k)
        out.append(TeacherPair(pair.plain_prompt, pair.plain_prompt, pair.response, "river", pair.base_prompt,
                               ids, logprobs))
    return out


def test_distill_loss_is_zero_when_the_psr_adds_nothing(tiny_llama):
    records = compute_teacher(tiny_llama, _distill_pairs(tiny_llama), [1])
    psr = PSR(PSRConfig(layers=[1], d_model=32, loss="distill", template_tokens=0))
    psr.set_layer(1, weight=torch.zeros(32), bias=1.0, z=torch.zeros(32))
    with torch.no_grad():
        _, parts = batch_loss(tiny_llama, psr, make_batch(records, 0))
    assert abs(parts["distill"]) < 1e-5


def test_distill_training_moves_the_student_to_the_teacher(tiny_llama):
    torch.manual_seed(0)
    vector = torch.randn(32) * 3
    records = compute_teacher(tiny_llama, _distill_pairs(tiny_llama, vector), [1])
    config = PSRConfig(layers=[1], d_model=32, loss="distill", steps=40, lr=0.1, batch_size=4, positions="all",
                       init="mean_delta", local_steps=0)
    psr, result = train_psr(tiny_llama, records, config, progress=False)
    assert result.final["distill"] < 0.5 * result.initial["distill"]
    assert result.fidelity["nll"]["kl_train"] == pytest.approx(result.final["distill"], rel=1e-3)


def test_distill_needs_teacher_targets(tiny_llama):
    records = _records(tiny_llama, [1], n=2)
    with pytest.raises(ValueError, match="teacher top-k"):
        train_psr(tiny_llama, records, PSRConfig(layers=[1], d_model=32, loss="distill", steps=1), progress=False)


def test_pairs_from_distill_align_the_teacher_with_the_prompted_sequence(tiny_llama, tmp_path):
    from hooksteer.distill import DistillConfig, build_distill_teacher

    concept = Concept(id="river", title="River", steering_prompts=[STEER], text="The river is long.")
    prompts = [BasePrompt(id=str(i), text=f"Question number {i}?") for i in range(2)]
    data = build_distill_teacher(tiny_llama, [(concept, b) for b in prompts],
                                 DistillConfig(max_new_tokens=5, top_k=6), cache_dir=tmp_path / "c", progress=False)
    pairs = pairs_from_distill(tiny_llama, data, concepts={"river": concept})
    for pair, record in zip(pairs, data, strict=True):
        q, n = pair.steered_prompt.numel(), pair.response.numel()
        with torch.no_grad():
            logprobs = torch.log_softmax(tiny_llama(pair.steered[None])[0, q - 1 : q + n - 1], dim=-1)
        torch.testing.assert_close(logprobs.gather(-1, record.teacher_ids.long()), record.teacher_logprobs,
                                   atol=1e-4, rtol=1e-4)
        assert pair.base_prompt == record.base_prompt and pair.has_distill_target
    k = template_suffix_length(tiny_llama)
    records = compute_teacher(tiny_llama, pairs, [0, 1, 2], prefix_tokens=k, nll=True)
    assert records[0].n_prefix == k and records[0].nll_prompted is not None
    # the greedy prompted answer is more likely after x' than after x
    assert float(torch.cat([r.nll_prompted for r in records]).mean()) < float(
        torch.cat([r.nll_plain for r in records]).mean())
    config = PSRConfig(layers=[0, 1, 2], d_model=32, variant="adaptive", loss="distill", steps=2, batch_size=2,
                       train_from_layer=1, local_steps=5)
    psr, result = train_psr(tiny_llama, records, config, progress=False)
    assert config.trained_layers == [1, 2] and "kl_train" in result.fidelity["nll"]


# ============================================================================ strength search
class _Steerer:
    """Outputs name their α; the fake judge's fluency falls with α, its concept rating rises."""

    def __init__(self):
        self.calls = []

    def generate(self, prompts, factors, settings, seed):
        self.calls.append((len(prompts), list(factors)))
        return [[f"a={float(f)!r} p={p}" for p in prompts] for f in factors]


class _Method:
    name, uses_factors = "fake", True

    def __init__(self):
        self.steerer = _Steerer()

    def prepare(self, model, concept, others):
        return self.steerer

    def config(self):
        return {"name": self.name}


class _Judge:
    name = "fake"

    def rate(self, concept, instruction, outputs):
        from hooksteer.evaluate.base import JudgeScores

        alphas = [float(o.split()[0][2:]) for o in outputs]
        return [JudgeScores(concept=min(2.0, a), instruction=1.0, fluency=max(0.0, 2.0 - a / 2)) for a in alphas]


def test_alpha_search_raises_alpha_until_the_coherence_target(tiny_llama):
    from hooksteer.evaluate.methods import GenerationSettings
    from hooksteer.evaluate.protocol import evaluate, split_prompts
    from hooksteer.psr.search import AlphaSearch, CachedJudge

    judge = CachedJudge(_Judge())
    prompts = [BasePrompt(id=str(i), text=f"Question {i}?") for i in range(4)]
    method = _Method()
    search = AlphaSearch(method, judge, prompts, grid=[0.5, 1.0, 2.0, 4.0], settings=GenerationSettings(8),
                         seed=3, target=1.5, refine=2)
    concept = Concept(id="river", title="River", steering_prompts=[STEER])
    result = evaluate(tiny_llama, [search], [concept], prompts, judge=judge, factors=[1.0], seed=3, progress=False)
    info = result.concepts[0].info
    # fluency 2 − α/2 >= 1.5  ⇔  α <= 1: the grid brackets α* in [1, 2]; bisection tries √2 and then √√2·1
    assert info["alpha"] == info["alpha_coherence"] == 1.0
    tested = [row[0] for row in info["search_tested"]]
    assert tested == pytest.approx([0.5, 1.0, 2 ** 0.5 ** 2, 2 ** 0.5, 2.0, 4.0])
    assert info["alpha_best_score"] == pytest.approx(2 ** 0.5)  # harmonic mean peaks past the target here
    selection, report = split_prompts(prompts, 3, "river")
    assert method.steerer.calls[0] == (len(selection), [0.5, 1.0, 2.0, 4.0])  # the grid on the selection half only
    assert result.concepts[0].report["fluency"] == pytest.approx(1.5)
    assert {g.output.split()[0] for g in result.generations} == {"a=1.0"}


def test_alpha_search_when_every_strength_misses_the_target(tiny_llama):
    from hooksteer.evaluate.methods import GenerationSettings
    from hooksteer.psr.search import AlphaSearch, coherence_choice

    prompts = [BasePrompt(id=str(i), text=f"Question {i}?") for i in range(2)]
    search = AlphaSearch(_Method(), _Judge(), prompts, grid=[8.0, 16.0], settings=GenerationSettings(8), refine=1)
    steerer = search.prepare(tiny_llama, Concept(id="c", title="c"), [])
    assert steerer.alpha == 4.0  # bisected below the smallest grid value, still short of the target: smallest tried
    assert steerer.info["search_all_below_target"] is True
    assert coherence_choice({1.0: {"fluency": 2.0}, 2.0: {"fluency": 1.9}}, 1.5) == (2.0, None)


def test_joint_search_gives_the_separate_searches_results(tiny_llama):
    """Searching several methods in shared batches (per-row PSR gates and vectors) gives the same strengths,
    outputs and added norms as searching each alone."""
    from hooksteer.evaluate.methods import DiffMeanMethod, GenerationSettings
    from hooksteer.evaluate.protocol import evaluate
    from hooksteer.psr.evaluation import PSRMethod, PSRTeacherData
    from hooksteer.psr.joint import JointSearch
    from hooksteer.psr.search import AlphaSearch, CachedJudge

    class Judge:
        name = "bigrams"

        def rate(self, concept, instruction, outputs):
            from hooksteer.evaluate.base import JudgeScores
            from hooksteer.evaluate.judges import distinct_bigram_ratio

            return [JudgeScores(concept=1.0 + ("river" in o), instruction=1.0,
                                fluency=2.0 * distinct_bigram_ratio(o)) for o in outputs]

    concepts = [Concept(id="river", title="river", steering_prompts=[STEER], text="The river is old. A river flows."),
                Concept(id="castle", title="castle", steering_prompts=["Write about castles."],
                        text="The castle is old. A castle has walls.")]
    examples = {"river": _examples(4), "castle": [SteeringExample("castle", "Write about castles.", e.base_prompt,
                                                                  e.target.replace("river", "castle"))
                                                  for e in _examples(4)]}
    data = PSRTeacherData(tiny_llama, examples, [0, 1, 2], prefix_tokens="auto")
    prompts = [BasePrompt(id=str(i), text=f"Question number {i}?") for i in range(4)]
    settings = GenerationSettings(max_new_tokens=4, batch_size=7)
    results = {}
    for joint in (None, JointSearch(settings, seed=1)):
        judge = CachedJudge(Judge())
        psr_a = PSRMethod(data, PSRConfig(layers=[0, 1, 2], d_model=32, variant="adaptive", steps=0, local_steps=0),
                          diagnose=False)
        psr_s = PSRMethod(data, PSRConfig(layers=[2], d_model=32, steps=0, local_steps=0), positions="after_sink",
                          diagnose=False)
        common = {"judge": judge, "prompts": prompts, "settings": settings, "seed": 1, "target": 1.9, "refine": 1,
                  "joint": joint}
        methods = [AlphaSearch(psr_a, grid=[0.5, 4.0, 32.0], **common),
                   AlphaSearch(psr_s, grid=[1.0, 8.0], **common),
                   AlphaSearch(DiffMeanMethod(layer=1), grid=[0.2, 2.0], **common)]
        result = evaluate(tiny_llama, methods, concepts, prompts, judge=judge, factors=[1.0], seed=1,
                          max_new_tokens=4, batch_size=7, progress=False)
        results[joint is None] = result
    alone, joint_result = results[True], results[False]
    for a, b in zip(alone.concepts, joint_result.concepts, strict=True):
        assert sum(a.info["search_tested"], []) == pytest.approx(sum(b.info["search_tested"], []))
        assert a.info["alpha"] == b.info["alpha"]
        if a.method != "diffmean":  # alone, a constant vector reports its nominal factor; joint batches measure it
            assert a.info["added_rel_coherence"] == pytest.approx(b.info["added_rel_coherence"], rel=1e-3)
    assert [g.output for g in alone.generations] == [g.output for g in joint_result.generations]


def test_distill_kl_is_the_unsteered_kl_at_nothing_and_zero_at_the_teacher(tiny_llama):
    """``distill_kl``: the token-weighted KL(teacher ‖ steered model) over the answers, computed here by hand from
    the model's own logits when the PSR adds nothing (z = 0, or α = 0), and 0 when the PSR adds exactly the vector
    that made the teacher."""
    from hooksteer.distill import topk_kl
    from hooksteer.psr import distill_kl

    torch.manual_seed(0)
    vector = torch.randn(32) * 3
    pairs = _distill_pairs(tiny_llama, vector)
    records = compute_teacher(tiny_llama, pairs, [1])
    kls, tokens = [], []
    with torch.no_grad():
        for pair in pairs:
            p, n = pair.plain_prompt.numel(), pair.response.numel()
            logits = tiny_llama(pair.plain[None])[0, p - 1 : p + n - 1]
            kls.append(topk_kl(logits, pair.teacher_ids, pair.teacher_logprobs).sum())
            tokens.append(n)
    by_hand = float(sum(kls) / sum(tokens))
    assert by_hand > 1e-3
    config = PSRConfig(layers=[1], d_model=32, loss="distill", positions="all", template_tokens=0)
    nothing = PSR(config)
    nothing.set_layer(1, weight=torch.zeros(32), bias=1.0, z=torch.zeros(32))
    assert distill_kl(tiny_llama, nothing, records, batch_size=3) == pytest.approx(by_hand, rel=1e-4)
    teacher = PSR(config)
    teacher.set_layer(1, weight=torch.zeros(32), bias=1.0, z=vector)
    assert distill_kl(tiny_llama, teacher, records, alpha=0.0) == pytest.approx(by_hand, rel=1e-4)
    assert distill_kl(tiny_llama, teacher, records) < 1e-5 * max(by_hand, 1.0)
    assert distill_kl(tiny_llama, teacher, records, alpha=0.5) > 1e-4
    with pytest.raises(ValueError, match="teacher top-k"):
        distill_kl(tiny_llama, teacher, _records(tiny_llama, [1], n=2))
    with pytest.raises(ValueError, match="no teacher records"):
        distill_kl(tiny_llama, teacher, [])


def test_psr_method_sweeps_its_own_alphas_and_refuses_bad_ones(tiny_llama):
    from hooksteer.psr.evaluation import PSRMethod, PSRTeacherData

    data = PSRTeacherData(tiny_llama, {}, [1])
    config = PSRConfig(layers=[1], d_model=32, loss="distill")
    method = PSRMethod(data, config, factors=(0.5, 2))
    assert method.factors == [0.5, 2.0] and method.config()["factors"] == [0.5, 2.0]
    assert "factors" not in PSRMethod(data, config).config()  # the evaluation's factors, as before
    for bad, message in (([], "empty"), ([0.0], "must be positive"), ([float("nan")], "must be positive"),
                         ([-1.0], "must be positive"), ([1.0, 1.0], "duplicates")):
        with pytest.raises(ValueError, match=message):
            PSRMethod(data, config, factors=bad)
