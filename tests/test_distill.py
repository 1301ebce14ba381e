"""Distilling prompt steering: the top-k KL, teacher records (finished flags, alignment) and their on-disk cache."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from hooksteer.data.schema import BasePrompt, Concept, SteeringExample
from hooksteer.distill import (
    DistillCache,
    DistillConfig,
    DistillConfigError,
    DistillRecord,
    build_distill_teacher,
    student_prompt,
    teacher_prompt,
    topk_kl,
    topk_teacher,
)
from hooksteer.distill.teacher import _cut_at_eos
from hooksteer.hypersteer import HyperSteerConfig
from hooksteer.hypersteer.data import target_ids

torch.set_num_threads(1)

CONCEPTS = [Concept(id=f"c{i}", title=w, steering_prompts=[f"Write about {w}. Every sentence must be about {w}."],
                    text=f"The {w} is a thing people talk about.") for i, w in enumerate(("river", "castle"))]
PROMPTS = [BasePrompt(id="p0", text="Tell me about your day."), BasePrompt(id="p1", text="Write a poem.")]
PAIRS = [(c, p) for c in CONCEPTS for p in PROMPTS]


# ----------------------------------------------------------------------------- the loss
def test_topk_kl_is_zero_for_the_teacher_itself_and_positive_otherwise():
    torch.manual_seed(0)
    teacher_logits = torch.randn(5, 40)
    ids, logprobs = topk_teacher(teacher_logits, k=6)
    assert torch.allclose(topk_kl(teacher_logits, ids, logprobs), torch.zeros(5), atol=1e-5)
    assert bool((topk_kl(torch.randn(5, 40), ids, logprobs) > 1e-3).all())


def test_topk_kl_with_the_whole_vocabulary_is_the_exact_kl():
    torch.manual_seed(1)
    teacher_logits, student_logits = torch.randn(4, 30), torch.randn(4, 30)
    ids, logprobs = topk_teacher(teacher_logits, k=30)
    p, log_q = torch.softmax(teacher_logits, -1), torch.log_softmax(student_logits, -1)
    exact = (p * (torch.log_softmax(teacher_logits, -1) - log_q)).sum(-1)
    torch.testing.assert_close(topk_kl(student_logits, ids, logprobs), exact, atol=1e-5, rtol=1e-5)


def test_topk_kl_gradient_moves_the_student_towards_the_teacher():
    torch.manual_seed(2)
    ids, logprobs = topk_teacher(torch.randn(3, 20) * 3, k=4)
    student = torch.zeros(3, 20, requires_grad=True)
    before = topk_kl(student, ids, logprobs).sum()
    before.backward()
    with torch.no_grad():
        after = topk_kl(student - 0.5 * student.grad, ids, logprobs).sum()
    assert after < before


def test_topk_kl_rejects_misaligned_inputs():
    ids, logprobs = topk_teacher(torch.randn(3, 20), k=4)
    with pytest.raises(ValueError, match="student positions"):
        topk_kl(torch.randn(2, 20), ids, logprobs)


# ----------------------------------------------------------------------------- teacher records
def test_cut_at_eos_keeps_the_eos_only_when_the_answer_ended():
    ids, finished = _cut_at_eos(torch.tensor([5, 6, 2, 2, 2]), eos=2, limit=5)
    assert ids.tolist() == [5, 6, 2] and finished
    ids, finished = _cut_at_eos(torch.tensor([5, 6, 7]), eos=2, limit=3)
    assert ids.tolist() == [5, 6, 7] and not finished


def test_cross_entropy_targets_end_with_eos_only_when_the_teacher_finished(tiny_llama):
    config = HyperSteerConfig(loss="ce")
    eos = tiny_llama.tokenizer.eos_token_id
    assert target_ids(tiny_llama, "the cat sat", config, finished=True)[-1] == eos
    assert target_ids(tiny_llama, "the cat sat", config, finished=False)[-1] != eos
    assert target_ids(tiny_llama, "the cat sat", config, finished=None)[-1] != eos  # unknown: no fake ending
    example = SteeringExample("c", "s", "b", "t", finished=True)
    assert SteeringExample.from_dict(example.to_dict()) == example


def test_teacher_records_align_with_the_prompted_model(tiny_llama):
    config = DistillConfig(max_new_tokens=5, top_k=7)
    data = build_distill_teacher(tiny_llama, PAIRS, config, progress=False)
    assert len(data) == 4 and data.stats["n_new"] == 4 and data.stats["tokens_per_second"] > 0
    eos = tiny_llama.tokenizer.eos_token_id
    for (concept, prompt), record in zip(PAIRS, data, strict=True):
        assert 1 <= record.n_tokens <= 5 and record.top_k == 7
        assert record.finished == (int(record.response_ids[-1]) == eos)
        # recompute the teacher independently: prompted text ⊕ response, logits at the response positions
        context = tiny_llama.to_tokens(teacher_prompt(tiny_llama, concept, prompt, config))[0]
        tokens = torch.cat([context, record.response_ids])[None]
        with torch.no_grad():
            logits = tiny_llama(tokens)[0, len(context) - 1 : len(context) - 1 + record.n_tokens]
        ids, logprobs = topk_teacher(logits, 7)
        assert torch.equal(record.teacher_ids.long(), ids)
        torch.testing.assert_close(record.teacher_logprobs, logprobs, atol=1e-4, rtol=1e-4)
        # the response is the prompted model's greedy answer: each token is the teacher's top-1
        assert torch.equal(record.response_ids, ids[:, 0])
    assert "river" in teacher_prompt(tiny_llama, CONCEPTS[0], PROMPTS[0], config)
    assert "river" not in student_prompt(tiny_llama, PROMPTS[0].text)


def test_unsteered_responses_are_the_plain_models_greedy_answers(tiny_llama):
    config = DistillConfig(max_new_tokens=4, top_k=3, response="unsteered")
    record = build_distill_teacher(tiny_llama, PAIRS[:1], config, progress=False)[0]
    plain = tiny_llama.to_tokens(student_prompt(tiny_llama, PROMPTS[0].text))
    with torch.no_grad():
        greedy = tiny_llama.generate(plain, max_new_tokens=4, do_sample=False, verbose=False)[0, plain.shape[1]:]
    assert record.response_ids.tolist() == greedy[: record.n_tokens].tolist()


def test_reference_text_context_puts_the_concept_text_before_the_request(tiny_llama):
    config = DistillConfig(teacher_context="reference_text", max_reference_chars=12)
    text = teacher_prompt(tiny_llama, CONCEPTS[0], PROMPTS[0], config)
    assert "Background: The river is" in text and "people talk" not in text


def test_bad_settings_and_records_are_refused():
    with pytest.raises(DistillConfigError, match="response must be one of"):
        DistillConfig(response="sampled")
    with pytest.raises(DistillConfigError, match="top_k must be an integer"):
        DistillConfig(top_k=0)
    with pytest.raises(DistillConfigError, match="unknown DistillConfig field"):
        DistillConfig.from_dict({"topk": 3})
    with pytest.raises(ValueError, match="teacher distributions for 2 positions"):
        DistillRecord("c", "s", "b", "p", "r", torch.tensor([1, 2, 3]), False, torch.zeros(2, 4, dtype=torch.int32),
                      torch.zeros(2, 4))
    with pytest.raises(ValueError, match="NaN"):
        DistillRecord("c", "s", "b", "p", "r", torch.tensor([1]), False, torch.zeros(1, 1, dtype=torch.int32),
                      torch.tensor([[float("nan")]]))


# ----------------------------------------------------------------------------- the cache
def test_cache_is_reused_resumed_and_keyed_by_settings(tiny_llama, tmp_path):
    config = DistillConfig(max_new_tokens=4, top_k=5, batch_size=2)
    first = build_distill_teacher(tiny_llama, PAIRS[:2], config, cache_dir=tmp_path, progress=False)
    assert first.stats["n_new"] == 2
    # a later, larger request makes only the missing pairs (resume)
    more = build_distill_teacher(tiny_llama, PAIRS, config, cache_dir=tmp_path, progress=False)
    assert more.stats["n_reused_from_cache"] == 2 and more.stats["n_new"] == 2
    assert torch.equal(more[0].teacher_logprobs, first[0].teacher_logprobs)
    again = build_distill_teacher(tiny_llama, PAIRS, config, cache_dir=tmp_path, progress=False)
    assert again.stats["n_new"] == 0
    for a, b in zip(again, more, strict=True):
        assert torch.equal(a.response_ids, b.response_ids) and a.finished == b.finished and a.response == b.response
    # batching does not change a record; other settings do
    assert build_distill_teacher(tiny_llama, PAIRS, DistillConfig(max_new_tokens=4, top_k=5, batch_size=3),
                                 cache_dir=tmp_path, progress=False).stats["n_new"] == 0
    assert build_distill_teacher(tiny_llama, PAIRS, DistillConfig(max_new_tokens=4, top_k=6),
                                 cache_dir=tmp_path, progress=False).stats["n_new"] == 4


def test_cache_survives_a_cut_off_index_line_and_a_corrupt_shard(tiny_llama, tmp_path):
    config = DistillConfig(max_new_tokens=3, top_k=4, batch_size=2)
    build_distill_teacher(tiny_llama, PAIRS[:2], config, cache_dir=tmp_path, progress=False)
    index = tmp_path / "index.jsonl"
    with index.open("a") as handle:  # an interrupted run: half a line, no newline
        handle.write('{"key": "abc", "concept_id": ')
    data = build_distill_teacher(tiny_llama, PAIRS, config, cache_dir=tmp_path, progress=False)
    assert data.stats["n_new"] == 2
    lines = index.read_text().splitlines()
    assert sum(1 for line in lines if line.startswith("{") and line.endswith("}")) == 4
    # corrupt one shard: its pairs are made again, with a warning, and nothing else is lost
    shard = json.loads(lines[0])["shard"]
    (tmp_path / shard).write_bytes(b"not a safetensors file")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        healed = build_distill_teacher(tiny_llama, PAIRS, config, cache_dir=tmp_path, progress=False)
    assert any("unreadable" in str(w.message) for w in caught)
    assert healed.stats["n_new"] == 2 and healed.stats["n_reused_from_cache"] == 2
    assert not list(tmp_path.glob("*.tmp"))


def test_cache_folder_must_be_a_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(NotADirectoryError):
        DistillCache(blocker)
