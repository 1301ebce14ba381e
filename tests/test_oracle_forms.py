"""The steering-form ceiling benchmark (``benchmarks/oracle_forms.py``): flags, and the pipeline end to end on a tiny
model."""

from __future__ import annotations

import json

import pytest
import torch
from benchmark_scripts import load_benchmark, record_evaluated_methods


def _bench():
    return load_benchmark("oracle_forms")


def test_form_specs_parse_or_name_the_problem():
    bench = _bench()
    assert bench.parse_form("10:prompt") == bench.Form(10, "prompt")
    assert bench.Form(10, "prompt").name == "oracle-L10-prompt"
    fixed = bench.parse_form("20:all:n0.3:shift")
    assert fixed == bench.Form(20, "all", 0.3, "teacher_shift") and fixed.name == "oracle-L20-all-n0.3-shift"
    assert bench.parse_form("20:prompt:shift").name == "oracle-L20-prompt-shift"
    assert bench.parse_form("20:all:lr0.5:n0.2") == bench.Form(20, "all", 0.2, "uniform", 0.5)
    assert bench.parse_form("20:all:lr0.5:n0.2").name == "oracle-L20-all-n0.2-lr0.5"
    for bad in ("10", "x:all", "10:generated", "10:all:more", "10:all:n0", "10:all:n-1", "10:all:nx",
                "10:all:shift:shift", "10:all:n0.3:n0.2", "10:all:lr", "10:all:lr0", "10:all:lr1:lr2",
                "5-3:all", "5-5:all", "3+3:all", "4+2:all", "1-:all", "+2:all", "1,2:all", "10:all:gate:sgate",
                "10:all:gates", "10:all:again:onpolicy", "10:all:round2"):
        with pytest.raises(ValueError, match="LAYERS:POSITIONS"):
            bench.parse_form(bad)


def test_multi_layer_forms_parse_and_name_their_sites():
    bench = _bench()
    span = bench.parse_form("10-12:all:shift")
    assert span.layer == 10 and span.sites == [10, 11, 12] and span.layers == (10, 11, 12)
    assert span.name == "oracle-L10-12-all-shift"
    listed = bench.parse_form("0+10+20:prompt")
    assert listed.sites == [0, 10, 20] and listed.name == "oracle-L0+10+20-prompt"
    assert bench.parse_form("20:all").sites == [20] and bench.parse_form("20:all").layers is None
    with pytest.raises(ValueError, match="needs a single layer"):
        bench.parse_form("10-12:all:n0.3")
    settings = bench.OracleFormsSettings(forms=["20:all", "10-29:all"], resid_forms=["10-29:all"])
    assert any("single-layer" in problem for problem in bench.validate(settings))


def test_gated_forms_parse_train_their_gates_and_are_refused_at_residual_norms(tmp_path):
    from hooksteer.hypersteer.bounds import ConceptVectors
    from hooksteer.testing import tiny_model

    bench = _bench()
    assert bench.parse_form("10-29:all:gate").gate == "concept" and bench.parse_form("20:all:sgate").gate == "shared"
    settings = bench.OracleFormsSettings(forms=["20:all:gate"], resid_forms=["20:all:gate"])
    assert any("ungated" in problem for problem in bench.validate(settings))
    out = tmp_path / "gates"
    report = bench.main(["--tiny", "--out", str(out), "--forms", "1-2:all:gate", "2:all:sgate", "2:all",
                         "--compare-to", "oracle-L2-all"])
    assert {"oracle-L1-2-all-gate", "oracle-L2-all-sgate", "oracle-L2-all"} <= set(report["scores"]["held_out"])
    gated = ConceptVectors.load(out / "oracle-L1-2-all-gate", tiny_model("llama", seed=0))
    assert gated.config.gate == "concept" and gated.gate_table.shape == (len(gated.keys), 2, 33)
    assert not torch.allclose(gated.gate_table[..., -1], torch.ones(()))  # the gates trained
    shared = ConceptVectors.load(out / "oracle-L2-all-sgate", tiny_model("llama", seed=0))
    assert shared.gate_table.shape == (1, 1, 33)


def test_tiny_fixed_length_and_weighted_forms_train_as_named(tmp_path):
    from hooksteer.hypersteer.bounds import ConceptVectors
    from hooksteer.testing import tiny_model

    bench = _bench()
    out = tmp_path / "forms"
    report = bench.main(["--tiny", "--out", str(out), "--forms", "2:all:n0.5:shift", "2:all:lr0.2",
                         "--compare-to", "oracle-L2-all-lr0.2"])
    pairs = {(c["a"], c["b"]) for c in report["comparisons"]}
    assert ("oracle-L2-all-n0.5-shift", "oracle-L2-all-lr0.2") in pairs
    assert ("oracle-L2-all-lr0.2", "oracle-L2-all-lr0.2") not in pairs
    norm = report["resid_norms"]["2"]
    assert norm > 0 and set(report["scores"]["held_out"]) == {"prompt", "none", "oracle-L2-all-n0.5-shift",
                                                              "oracle-L2-all-lr0.2"}
    saved = ConceptVectors.load(out / "oracle-L2-all-n0.5-shift", tiny_model("llama", seed=0))
    assert saved.config.token_weights == "teacher_shift"
    assert saved.config.delta_norm == pytest.approx(0.5 * norm)
    lengths = saved.vectors(saved.keys).norm(dim=-1)
    assert lengths.sub(0.5 * norm).abs().max() < 1e-3
    assert report["diagnostics"]["oracle-L2-all-n0.5-shift"]["mean_norm"] == pytest.approx(0.5 * norm, rel=1e-4)
    free = ConceptVectors.load(out / "oracle-L2-all-lr0.2", tiny_model("llama", seed=0))
    assert free.config.delta_norm is None and free.config.token_weights == "uniform" and free.config.lr == 0.2
    assert saved.config.lr == 0.05  # --bound-lr


@pytest.mark.parametrize(("flags", "message"), [
    (["--forms", "2:sideways"], "LAYERS:POSITIONS"),
    (["--forms", "2:all", "2:all"], "each form once"),
    (["--trained-factors", "0"], "--trained-factors"),
    (["--held-out", "1"], "--held-out"),
    (["--resid-forms", "5:all"], "--resid-forms must be among --forms"),
    (["--compare-to", "oracle-L7-all"], "--compare-to names methods this run does not evaluate"),
    (["--oracle-prompts", "1"], "--oracle-prompts must be >= --train-prompts"),
    (["--apsr", "5-3"], "--apsr must be LAYERS[:localN][:stepsN]"),
    (["--apsr", "0-2", "0-2"], "--apsr must be LAYERS[:localN][:stepsN]"),
    (["--apsr", "0-2:steps"], "--apsr must be LAYERS[:localN][:stepsN]"),
    (["--apsr", "0-2:steps1:steps2"], "--apsr must be LAYERS[:localN][:stepsN]"),
    (["--apsr", "0-2:gate"], "--apsr must be LAYERS[:localN][:stepsN]"),
    (["--apsr", "0-2:reference_text:reference_text"], "--apsr must be LAYERS[:localN][:stepsN][:TEACHER]"),
    (["--apsr", "0-2:steering_prompt"], "names the run's own --teacher-context (steering_prompt)"),
    (["--compare-to", "prompt-background"], "--compare-to names methods this run does not evaluate"),
    (["--apsr", "0-1", "--apsr-train-from", "2"], "--apsr-train-from"),
    (["--apsr", "0-2", "--apsr-factors", "0"], "--apsr-factors"),
    (["--compare-to", "apsr-L0-2"], "--compare-to names methods this run does not evaluate"),
    (["--apsr-position-variants", "after_sink"], "--apsr-position-variants needs --apsr"),
    (["--apsr-bounds"], "--apsr-bounds needs --apsr"),
    (["--forms"], "--forms must name each form once (none only with --apsr)"),
    (["--apsr", "0-2", "--compare-to", "apsr-L0-2-floor"], "--compare-to names methods this run does not evaluate"),
    (["--select-prompts", "2"], "--select-prompts needs --apsr"),
    (["--apsr", "0-2", "--select-prompts", "3"], "between 2 and the 2 train prompts"),
    (["--apsr", "0-2", "--select-prompts", "2", "--select-methods", "apsr-L0-2-floor"], "--select-methods"),
    (["--apsr", "0-2", "--select-methods", "apsr-L0-2"], "--select-methods needs --select-prompts"),
    (["--prefix-positions", "response", "response"], "--prefix-positions must name each mode once"),
    (["--prefix-positions", "prompt"], "invalid choice"),
    (["--apsr", "0-2", "--apsr-position-variants", "sideways"], "--apsr-position-variants must name each of"),
    (["--apsr", "0-2", "--apsr-position-variants", "generated+"], "--apsr-position-variants must name each of"),
    (["--apsr", "0-2", "--apsr-position-variants", "generated+4:2"], "generated+K:M (0 <= K < M)"),
    (["--apsr", "0-2", "--apsr-position-variants", "after_sink", "after_sink"], "at most once"),
    (["--prefix-factors", "0"], "--prefix-factors must be positive"),
    (["--prefix-factors", "1", "1"], "--prefix-factors must not repeat"),
    (["--prefix-pooled"], "--prefix-pooled needs --prefix-positions"),
    (["--apsr", "0-2", "--prefix-combine", "apsr-L0-2"], "--prefix-combine needs --prefix-positions"),
    (["--apsr", "0-2", "--prefix-positions", "response", "--prefix-combine", "apsr-L0-9"], "--prefix-combine needs"),
    (["--prefix-combine-factor", "0"], "--prefix-combine-factor must be a positive number"),
    (["--prompt-styles", "prefix", "prefix"], "--prompt-styles must name each placement once"),
    (["--prompt-styles", "system"], "invalid choice"),
    (["--compare-to", "prefix-response"], "--compare-to names methods this run does not evaluate"),
])
def test_bad_flags_stop_before_anything_is_written(tmp_path, capsys, flags, message):
    bench = _bench()
    with pytest.raises(SystemExit) as stop:
        bench.main(["--tiny", "--out", str(tmp_path / "out"), *flags])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_prefix_steering_needs_the_embedded_bridge_and_names_its_modes(tmp_path):
    from hooksteer.prefix_attention import POSITIONS

    bench = _bench()
    assert bench.PREFIX_POSITIONS == POSITIONS  # kept as a literal so --help imports no hooksteer module
    with pytest.raises(SystemExit, match="needs the embedded model's TransformerBridge"):
        bench.main(["--tiny", "--out", str(tmp_path / "out"), "--prefix-positions", "response"])
    assert not (tmp_path / "out").exists()
    settings = bench.OracleFormsSettings(prefix_positions=["response", "after_start"],
                                         compare_to=["prefix-after-start"])
    assert bench.prefix_names(settings) == ["prefix-response", "prefix-after-start"]
    pooled = bench.OracleFormsSettings(prefix_positions=["response"], prefix_pooled=True)
    assert bench.prefix_names(pooled) == ["prefix-response", "prefix-response-pooled"]
    assert bench.validate(settings) == []
    combined = bench.OracleFormsSettings(apsr=["0-2"], prefix_positions=["after_start"], prefix_combine=["apsr-L0-2"],
                                         compare_to=["apsr-L0-2+prefix-after-start"])
    assert bench.combined_names(combined) == ["apsr-L0-2+prefix-after-start"] and bench.validate(combined) == []
    # the names validate() derives without importing hooksteer are the ones the built methods carry
    from hooksteer.evaluate.methods import PrefixSteering, WithPrefix

    both = bench.OracleFormsSettings(prefix_positions=["response", "after_start"], prefix_pooled=True)
    assert [PrefixSteering(positions=p, pooled=q).name for q in (False, True) for p in both.prefix_positions] == (
        bench.prefix_names(both))

    class Inner:
        name, uses_factors = "apsr-L0-2", True

        def prepare(self, *args):
            return None

        def config(self):
            return {}

    assert [WithPrefix(Inner(), positions=p).name for p in combined.prefix_positions] == bench.combined_names(combined)
    styled = bench.OracleFormsSettings(prompt_styles=["prefix"], compare_to=["prompt-prefix"])
    assert bench.prompt_style_names(styled) == ["prompt-prefix"] and bench.validate(styled) == []
    assert "unknown mode" in " ".join(bench.validate(bench.OracleFormsSettings(prefix_positions=["prompt"])))


@pytest.mark.parametrize("flags", [["--forms", "9:all"], ["--apsr", "0-9"]])
def test_a_layer_past_the_model_is_refused_before_writing(tmp_path, flags):
    bench = _bench()
    with pytest.raises(SystemExit, match="outside the model's"):
        bench.main(["--tiny", "--out", str(tmp_path / "out"), *flags])
    assert not (tmp_path / "out").exists()


def test_tiny_pipeline_scores_every_form_and_resumes(tmp_path, monkeypatch):
    bench = _bench()
    out = tmp_path / "forms"
    report = bench.main(["--tiny", "--out", str(out), "--diffmean-layers", "1"])
    saved = json.loads((out / "results.json").read_text())
    held_out = saved["scores"]["held_out"]
    assert {"prompt", "none", "diffmean-L1", "oracle-L2-all", "oracle-L1-prompt"} == set(held_out)
    assert {c["b"] for c in saved["comparisons"]} == {"prompt", "0.9×prompt"}
    assert set(saved["eval_kl"]) == {"none", "oracle-L2-all", "oracle-L1-prompt"}
    assert saved["diagnostics"]["oracle-L1-prompt"]["between_concepts"] < 1.0
    configs = {m["name"]: m for m in json.loads((out / "evaluation" / "results.json").read_text())["config"]["methods"]}
    assert configs["oracle-L1-prompt"]["positions"] == "prompt" and configs["oracle-L2-all"]["positions"] == "all"
    assert (out / "oracle-L1-prompt" / "model.safetensors").is_file()
    # a rerun reloads the trained oracles instead of retraining them, and evaluates only what it adds
    evaluated = record_evaluated_methods(monkeypatch)
    again = bench.main(["--tiny", "--out", str(out), "--diffmean-layers", "1", "--resid-forms", "1:prompt",
                        "--prompt-styles", "prefix"])
    assert all("reused_from" in info for info in again["training"].values())
    assert set(evaluated) == {"oracle-L1-prompt@resid", "prompt-prefix"}
    added = ("oracle-L1-prompt@resid", "prompt-prefix")
    assert {k: v for k, v in again["scores"]["held_out"].items() if k not in added} == report["scores"]["held_out"]
    assert {(c["a"], c["b"]) for c in again["comparisons"] if c["a"] == "prompt-prefix"} == {
        ("prompt-prefix", "prompt"), ("prompt-prefix", "0.9×prompt")}
    resid = [m for m in json.loads((out / "evaluation" / "results.json").read_text())["config"]["methods"]
             if m["name"] == "oracle-L1-prompt@resid"]
    assert resid and resid[0]["magnitude"] == "resid_norm" and resid[0]["positions"] == "prompt"
    styled = [m for m in json.loads((out / "evaluation" / "results.json").read_text())["config"]["methods"]
              if m["name"] == "prompt-prefix"]
    assert styled and styled[0]["style"] == "prefix"
    assert "ceiling of each steering form" in (out / "results.md").read_text()


def test_oracle_prompts_add_unused_training_prompts_and_keep_the_eval_prompts(tmp_path):
    bench = _bench()
    base = bench.main(["--tiny", "--out", str(tmp_path / "base"), "--forms", "2:all"])
    more = bench.main(["--tiny", "--out", str(tmp_path / "more"), "--forms", "2:all", "--oracle-prompts", "4"])
    assert more["data"]["eval_prompts"] == base["data"]["eval_prompts"]
    assert more["data"]["train_prompts"][:2] == base["data"]["train_prompts"]
    assert len(set(more["data"]["train_prompts"])) == 4
    assert not set(more["data"]["train_prompts"]) & set(more["data"]["eval_prompts"])
    assert more["data"]["n_oracle_pairs"] == 3 * 4 and base["data"]["n_oracle_pairs"] == 3 * 2
    with pytest.raises(SystemExit, match="more base prompts asked for"):
        bench.main(["--tiny", "--out", str(tmp_path / "many"), "--oracle-prompts", "100000"])


def test_second_rounds_start_from_their_first_round_and_on_policy_adds_own_answers(tmp_path):
    bench = _bench()
    settings = bench.OracleFormsSettings(forms=["2:all:onpolicy"])
    assert any("first-round form" in problem for problem in bench.validate(settings))
    report = bench.main(["--tiny", "--out", str(tmp_path / "rounds"), "--forms", "1-2:all:onpolicy", "1-2:all",
                         "1-2:all:again", "--compare-to", "oracle-L1-2-all-again"])
    training = report["training"]
    first = training["oracle-L1-2-all"]["n_train_examples"]
    assert training["oracle-L1-2-all-again"]["n_train_examples"] == first
    assert training["oracle-L1-2-all-onpolicy"]["n_train_examples"] == 2 * first  # prompted + own answers
    assert training["oracle-L1-2-all-onpolicy"]["on_policy"]["n_pairs"] == first
    assert training["oracle-L1-2-all-onpolicy"]["steps"] == training["oracle-L1-2-all"]["steps"]
    assert {"oracle-L1-2-all-onpolicy", "oracle-L1-2-all-again"} <= set(report["scores"]["held_out"])


def test_read_off_forms_hold_the_activation_differences_and_diffkl_trains_from_them(tmp_path, monkeypatch):
    from hooksteer.hypersteer import ConceptVectors
    from hooksteer.testing import tiny_model

    bench = _bench()
    assert bench.parse_form("0-2:all:diff").name == "oracle-L0-2-all-diff"
    assert bench.parse_form("0-2:answer:diff").positions == "answer"
    for bad in ("2:prompt:diff", "2:all:diff:gate", "2:all:diff:lr0.1", "2:all:diffkl:n0.3", "2:all:diff:again",
                "2:all:diff:diffkl"):
        with pytest.raises(ValueError):
            bench.parse_form(bad)
    out = tmp_path / "diff"
    forms = ["--forms", "2:all", "0-2:all:diff", "0-2:all:diffkl"]
    report = bench.main(["--tiny", "--out", str(out), *forms])
    read_info, trained_info = (report["training"][f"oracle-L0-2-all-{kind}"] for kind in ("diff", "diffkl"))
    assert read_info["steps"] == 0 and trained_info["steps"] > 0
    assert read_info["read_off_seconds_per_concept"] > 0 and trained_info["read_off_seconds"] > 0
    model = tiny_model("llama", seed=0)
    read, trained = (ConceptVectors.load(out / f"oracle-L0-2-all-{kind}", model) for kind in ("diff", "diffkl"))
    assert read.keys == trained.keys and read.table.shape == (3, 3, 32)
    assert float(read.table.detach().norm()) > 0 and not torch.allclose(read.table[0], read.table[1])  # one per concept
    assert not torch.allclose(read.table, trained.table)  # diffkl trained on from the read-off start
    assert report["diagnostics"]["oracle-L0-2-all-diff"]["between_concepts"] < 1.0
    lengths = report["read_off_kl"]["oracle-L0-2-all-diff"]  # eval KL at other lengths, table left as it was
    assert set(report["read_off_kl"]) == {"oracle-L0-2-all-diff"} and list(lengths["scaled"]) == ["1", "2", "3", "5"]
    assert lengths["scaled"]["1"] == pytest.approx(report["eval_kl"]["oracle-L0-2-all-diff"]["held_out"], rel=1e-4)
    assert lengths["scaled"]["1"] != lengths["scaled"]["5"] and 0 < lengths["shared_share"] < 1
    assert "eval KL at other lengths" in (out / "results.md").read_text()
    assert {"oracle-L0-2-all-diff", "oracle-L0-2-all-diffkl"} <= set(report["scores"]["held_out"])
    evaluated = record_evaluated_methods(monkeypatch)  # a rerun reloads both, reads nothing off, evaluates nothing
    again = bench.main(["--tiny", "--out", str(out), *forms])
    assert all("reused_from" in info for info in again["training"].values()) and set(evaluated) == set()
    assert again["scores"]["held_out"] == report["scores"]["held_out"]


def test_apsr_rows_train_per_concept_score_at_their_own_alphas_and_reload(tmp_path, monkeypatch):
    """``--apsr``: one A-PSR per concept distilled on the oracles' pairs, saved per concept, swept at
    ``--apsr-factors`` (α), its eval KL the distillation KL of the reloaded PSR on the eval pairs; a rerun reloads
    every PSR and evaluates nothing again."""
    from hooksteer.psr import PSR, distill_kl
    from hooksteer.psr.evaluation import PSRTeacherData

    bench = _bench()
    out = tmp_path / "apsr"
    flags = ["--tiny", "--out", str(out), "--forms", "2:all", "--apsr", "0-2", "0-2:local0:steps0", "--apsr-factors",
             "0.5", "3", "--apsr-position-variants", "after_sink"]
    report = bench.main(flags)
    assert {"prompt", "none", "oracle-L2-all", "apsr-L0-2", "apsr-L0-2@after_sink", "apsr-L0-2-local0-steps0",
            "apsr-L0-2-local0-steps0@after_sink"} == set(report["scores"]["held_out"])
    generations = json.loads((out / "evaluation" / "generations.json").read_text())
    assert {g["factor"] for g in generations if g["method"] == "apsr-L0-2"} == {0.5, 3.0}
    configs = {m["name"]: m for m in json.loads((out / "evaluation" / "results.json").read_text())["config"]["methods"]}
    assert configs["apsr-L0-2"]["positions"] == "response" and configs["apsr-L0-2"]["positions_at_inference"] is None
    assert configs["apsr-L0-2@after_sink"]["positions_at_inference"] == "after_sink"
    assert report["training"]["apsr-L0-2@after_sink"]["same_psrs_as"] == "apsr-L0-2"
    assert not (out / "apsr-L0-2@after_sink").exists()  # the variant steers with the same saved PSRs
    fit_only = report["training"]["apsr-L0-2-local0-steps0"]
    assert fit_only["steps"] == 0 and fit_only["local_steps"] == 0
    saved = PSR.load(out / "apsr-L0-2-local0-steps0" / report["data"]["held_out"][0], bench.common.load_model(True, 0))
    assert saved.config.steps == 0 and saved.config.local_steps == 0 and saved.config.init == "fit"
    assert {c["a"] for c in report["comparisons"]} >= {"apsr-L0-2"}
    held_out = report["data"]["held_out"]
    model = bench.common.load_model(True, 0)
    for concept_id in held_out:
        psr = PSR.load(out / "apsr-L0-2" / concept_id, model)
        assert psr.layers == [0, 1, 2] and psr.config.loss == "distill" and psr.config.variant == "adaptive"
    # the reported eval KL is the reloaded PSR's distillation KL on that concept's never-trained eval pairs
    settings, _ = bench.parse_settings(flags)
    concepts, prompts, split = bench.common.load_split(settings, True, out, "oracle_forms")
    eval_data = bench.hypersteer_eval.teacher_data(settings, model, model, split.select(concepts, held_out),
                                                   split.select(prompts, split.eval_prompts), out / "teacher", True)
    evals = PSRTeacherData.from_distill(model, eval_data, [0, 1, 2], prefix_tokens="auto")
    per_concept = report["eval_kl"]["apsr-L0-2"]["per_concept"]
    for concept_id in held_out:
        psr = PSR.load(out / "apsr-L0-2" / concept_id, model)
        assert per_concept[concept_id] == pytest.approx(distill_kl(model, psr, evals.records(concept_id)), rel=1e-4)
    # a rerun reloads every PSR (training would fail) and evaluates nothing again
    evaluated = record_evaluated_methods(monkeypatch)
    monkeypatch.setattr("hooksteer.psr.evaluation.train_psr", lambda *a, **k: pytest.fail("retrained a saved PSR"))
    again = bench.main(flags)
    assert again["training"]["apsr-L0-2"]["reused"] and not evaluated
    assert again["scores"]["held_out"] == report["scores"]["held_out"]



def test_a_delayed_position_variant_steers_after_the_answers_first_tokens(tmp_path):
    """``--apsr-position-variants generated+K``: the same PSRs (and, with bounds, the floor), named
    ``<name>@generated+K``; at every factor its
    answers start as the unsteered ones (the first K+1 tokens are written unsteered), unlike the PSR's own."""
    bench = _bench()
    out = tmp_path / "delayed"
    report = bench.main(["--tiny", "--out", str(out), "--forms", "--apsr", "0-2:local0:steps0", "--apsr-factors", "4",
                         "--apsr-position-variants", "generated+2", "--apsr-bounds", "--max-new-tokens", "6"])
    name = "apsr-L0-2-local0-steps0"
    assert {name, f"{name}@generated+2", f"{name}-floor", f"{name}-floor@generated+2"} <= set(
        report["scores"]["held_out"])
    assert f"{name}-centred@generated+2" not in report["scores"]["held_out"]  # the floor is the bound at the variant
    assert report["training"][f"{name}-floor@generated+2"]["same_psrs_as"] == f"{name}-floor"
    configs = {m["name"]: m for m in json.loads((out / "evaluation" / "results.json").read_text())["config"]["methods"]}
    assert configs[f"{name}@generated+2"]["positions_at_inference"] == "generated+2"
    tokenizer = bench.common.load_model(True, 0).tokenizer
    answers = {(g["method"], g["concept_id"], g["prompt_id"]): g["output"]
               for g in json.loads((out / "evaluation" / "generations.json").read_text())}
    start = lambda text: tokenizer(text, add_special_tokens=False).input_ids[:2]  # noqa: E731
    keys = [(c, p) for m, c, p in answers if m == "none"]
    assert all(start(answers[f"{name}@generated+2", c, p]) == start(answers["none", c, p]) for c, p in keys)
    assert any(answers[name, c, p] != answers["none", c, p] for c, p in keys)


def test_apsr_bounds_score_one_shared_fit_and_the_centred_fits_and_reload(tmp_path, monkeypatch):
    """``--apsr-bounds`` (FitSteer's bounds): ``<name>-floor`` steers every concept with one PSR fitted to all their
    pairs (saved once), ``<name>-centred`` each concept with its own directions minus the other concepts' mean; their
    eval KLs are those of exactly these PSRs, the directions' separation is reported, and a rerun refits nothing."""
    from hooksteer.hypersteer.fit_steer import direction_separation, directions, leave_one_out_centred
    from hooksteer.psr import PSR, distill_kl
    from hooksteer.psr.evaluation import PSRTeacherData

    bench = _bench()
    out = tmp_path / "bounds"
    name = "apsr-L0-2-local0-steps0"
    flags = ["--tiny", "--out", str(out), "--forms", "--apsr", "0-2:local0:steps0", "--apsr-bounds",
             "--apsr-factors", "1", "--compare-to", f"{name}-floor"]
    report = bench.main(flags)
    assert {"prompt", "none", name, f"{name}-floor", f"{name}-centred"} == set(report["scores"]["held_out"])
    assert {(c["a"], c["b"]) for c in report["comparisons"]} >= {(name, f"{name}-floor")}
    held_out = report["data"]["held_out"]
    model = bench.common.load_model(True, 0)
    own = {c: PSR.load(out / name / c, model) for c in held_out}
    floor = PSR.load(out / f"{name}-floor", model)
    assert report["training"][f"{name}-floor"]["shared_by"] == len(held_out)
    assert not any(torch.equal(directions(floor), directions(p)) for p in own.values())
    settings, _ = bench.parse_settings(flags)
    concepts, prompts, split = bench.common.load_split(settings, True, out, "oracle_forms")
    eval_data = bench.hypersteer_eval.teacher_data(settings, model, model, split.select(concepts, held_out),
                                                   split.select(prompts, split.eval_prompts), out / "teacher", True)
    evals = PSRTeacherData.from_distill(model, eval_data, [0, 1, 2], prefix_tokens="auto")
    by_hand = {"-floor": dict.fromkeys(held_out, floor), "-centred": leave_one_out_centred(own)}
    for suffix, psrs in by_hand.items():
        per_concept = report["eval_kl"][name + suffix]["per_concept"]
        for concept_id in held_out:
            expected = distill_kl(model, psrs[concept_id], evals.records(concept_id))
            assert per_concept[concept_id] == pytest.approx(expected, rel=1e-4)
    for concept_id in held_out:  # the unsteered reference: the same KL with nothing added
        unsteered = distill_kl(model, own[concept_id], evals.records(concept_id), alpha=0.0)
        assert report["eval_kl"]["none"]["per_concept"][concept_id] == pytest.approx(unsteered, rel=1e-4)
    assert report["diagnostics"][name]["between_concepts"] == pytest.approx(
        direction_separation(own)["between_concepts"], abs=1e-5)
    # a rerun reloads the floor and every PSR (fitting would fail) and evaluates nothing again
    evaluated = record_evaluated_methods(monkeypatch)
    for target in ("hooksteer.psr.evaluation.train_psr", "hooksteer.hypersteer.fit_steer.train_psr"):
        monkeypatch.setattr(target, lambda *a, **k: pytest.fail("refitted a saved PSR"))
    again = bench.main(flags)
    assert not evaluated and again["scores"]["held_out"] == report["scores"]["held_out"]


def test_an_apsr_entry_with_its_own_teacher_fits_that_teachers_records_beside_the_runs(tmp_path, monkeypatch):
    """``--apsr LAYERS:...:reference_text`` in a ``steering_prompt`` run: that entry (and its bounds) is fitted to the
    reference-text teacher's records and its eval KL measured on that teacher's eval pairs, while the plain entry keeps
    the run's teacher — both in one evaluation, paired; ``--prompt-background`` scores the reference teacher's own
    context as prompt steering; a rerun refits and evaluates nothing."""
    from hooksteer.distill import TEACHER_CONTEXTS
    from hooksteer.hypersteer.fit_steer import FitSteer, directions
    from hooksteer.psr import PSR, distill_kl
    from hooksteer.psr.evaluation import PSRTeacherData

    bench = _bench()
    assert bench.APSR_TEACHERS == TEACHER_CONTEXTS  # kept as a literal so --help imports no hooksteer module
    out = tmp_path / "teachers"
    plain, ref = "apsr-L0-2-local0-steps0", "apsr-L0-2-local0-steps0-reference_text"
    flags = ["--tiny", "--out", str(out), "--forms", "--apsr", "0-2:local0:steps0", "0-2:local0:steps0:reference_text",
             "--apsr-bounds", "--apsr-factors", "1", "--prompt-background", "--compare-to", plain, "prompt-background"]
    report = bench.main(flags)
    assert {"prompt", "prompt-background", "none", plain, ref, f"{plain}-floor", f"{ref}-floor", f"{plain}-centred",
            f"{ref}-centred"} == set(report["scores"]["held_out"])
    assert report["training"][plain]["teacher_context"] == "steering_prompt"
    assert report["training"][ref]["teacher_context"] == "reference_text"
    assert {(c["a"], c["b"]) for c in report["comparisons"]} >= {(ref, plain), (ref, "prompt-background")}
    held_out = report["data"]["held_out"]
    model = bench.common.load_model(True, 0)
    settings, _ = bench.parse_settings(flags)
    concepts, prompts, split = bench.common.load_split(settings, True, out, "oracle_forms")
    chosen = split.select(concepts, held_out)
    by_id = {c.id: c for c in chosen}
    reference = bench.replace(settings, teacher_context="reference_text")
    parts = {name: [PSRTeacherData.from_distill(model, bench.hypersteer_eval.teacher_data(
                        s, model, model, chosen, split.select(prompts, ids), out / "teacher", True),
                        [0, 1, 2], concepts=by_id, prefix_tokens="auto")
                    for ids in (split.train_prompts, split.eval_prompts)]
             for name, s in ((plain, settings), (ref, reference))}
    for concept_id in held_out:
        for name, (train, evals) in parts.items():
            saved = PSR.load(out / name / concept_id, model)
            refit = FitSteer(model, config=saved.config).write(train.records(concept_id))
            assert torch.allclose(directions(refit), directions(saved), atol=1e-5)  # fitted to this teacher's pairs
            assert report["eval_kl"][name]["per_concept"][concept_id] == pytest.approx(
                distill_kl(model, saved, evals.records(concept_id)), rel=1e-4)
        own = [PSR.load(out / name / concept_id, model) for name in (plain, ref)]
        assert not torch.allclose(directions(own[0]), directions(own[1]))  # two teachers, two fits
    # prompt-background reads exactly what the reference-text teacher reads
    from hooksteer.distill import DistillConfig
    from hooksteer.distill.teacher import teacher_prompt
    from hooksteer.evaluate.methods import PromptSteering
    from hooksteer.models import format_chat

    base = split.select(prompts, split.eval_prompts)[0]
    steerer = PromptSteering(name="prompt-background", background_chars=40).prepare(model, chosen[0], chosen[1:])
    config = DistillConfig(teacher_context="reference_text", max_reference_chars=40)
    assert format_chat(model, steerer.messages([base.text])[0]) == teacher_prompt(model, chosen[0], base, config)
    assert "Background: " in steerer.messages([base.text])[0]
    # a rerun reloads every PSR and floor (fitting would fail) and evaluates nothing again
    evaluated = record_evaluated_methods(monkeypatch)
    for target in ("hooksteer.psr.evaluation.train_psr", "hooksteer.hypersteer.fit_steer.train_psr"):
        monkeypatch.setattr(target, lambda *a, **k: pytest.fail("refitted a saved PSR"))
    again = bench.main(flags)
    assert not evaluated and again["scores"]["held_out"] == report["scores"]["held_out"]


def test_select_prompts_choose_each_concepts_alpha_on_the_train_prompts_and_report_the_same_half(tmp_path, monkeypatch):
    """``--select-prompts N``: each A-PSR method's α per concept is the best mean score over N train prompts (a
    second evaluation, saved), and the row ``<name>@selN`` reports the main evaluation's report half at that α."""
    from hooksteer.evaluate.result import load_results

    bench = _bench()
    out = tmp_path / "select"
    name = "apsr-L0-2-local0-steps0"
    flags = ["--tiny", "--out", str(out), "--forms", "--apsr", "0-2:local0:steps0", "--apsr-factors", "1", "4",
             "--select-prompts", "2"]
    report = bench.main(flags)
    assert f"{name}@sel2" in report["scores"]["held_out"]
    assert (f"{name}@sel2", "prompt") in {(c["a"], c["b"]) for c in report["comparisons"]}
    main, chosen = load_results(out / "evaluation"), load_results(out / "evaluation_select")
    assert {c.method for c in chosen.concepts} == {name}
    assert all(len(c.selection_prompt_ids) + len(c.report_prompt_ids) == 2 for c in chosen.concepts)
    rows = {r["concept_id"]: r for r in report["per_concept"] if r["method"] == f"{name}@sel2"}
    for picked in chosen.concepts:
        means = {c.factor: (c.selection["score"] + c.report["score"]) / 2 for c in picked.cells}
        best = min(f for f, v in means.items() if v == max(means.values()))  # ties: the smaller α
        assert rows[picked.concept_id]["chosen_factor"] == best
        saved = next(c for c in main.concepts if c.method == name and c.concept_id == picked.concept_id)
        assert rows[picked.concept_id]["score"] == next(c.report["score"] for c in saved.cells if c.factor == best)
    evaluated = record_evaluated_methods(monkeypatch)
    again = bench.main(flags)  # a rerun reuses both evaluations
    assert not evaluated and again["scores"]["held_out"] == report["scores"]["held_out"]


def test_factors_chosen_elsewhere_weights_each_half_by_its_prompts_and_breaks_ties_low():
    from types import SimpleNamespace as NS

    bench = _bench()

    def cell(factor, selection, report):
        return NS(factor=factor, selection={"score": selection}, report={"score": report, "concept": 1.0})

    picked = NS(method="m", concept_id="c", selection_prompt_ids=["p"], report_prompt_ids=["q", "r", "s"],
                cells=[cell(2.0, 0.5, 0.5), cell(1.0, 0.5, 0.5)])  # a tie: the smaller α
    saved = NS(concepts=[NS(method="m", concept_id="c", cells=[cell(1.0, 0.5, 0.25), cell(2.0, 0.5, 0.75)])])
    rows = bench.factors_chosen_elsewhere(saved, NS(concepts=[picked]), "@sel4", {"c": "held_out"})
    assert rows == [{"method": "m@sel4", "concept_id": "c", "role": "held_out", "chosen_factor": 1.0,
                     "score": 0.25, "concept": 1.0}]
    # per prompt: α 2 → (0.0 + 3 × 0.5) / 4 = 0.375 beats α 1 → (0.9 + 3 × 0.1) / 4 = 0.30 (halves alike: α 1 would win)
    picked.cells = [cell(2.0, 0.0, 0.5), cell(1.0, 0.9, 0.1)]
    assert bench.factors_chosen_elsewhere(saved, NS(concepts=[picked]), "", {})[0]["score"] == 0.75
