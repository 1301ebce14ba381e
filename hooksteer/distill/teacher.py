"""Distillation targets from prompt steering: one greedy answer and one teacher forward pass per pair.

For each (concept, base prompt) pair:

1. **response** y: the greedy answer of the prompt-steered model (``DistillConfig.response="prompted"``,
   default) or of the unsteered model (``"unsteered"``), at most ``max_new_tokens`` tokens. ``finished``
   records whether it ended with the model's own end-of-text token;
2. **teacher**: one forward pass of the model on *steering prompt ⊕ base prompt ⊕ y* (teacher forcing);
   the top-k log-probabilities at every response position are kept.

The student (a steering vector, HyperSteer, a PSR) then reads the *unsteered* base prompt ⊕ y and is
trained to minimise KL(teacher ‖ student) at those positions (:func:`hooksteer.distill.loss.topk_kl`).
No sampling, no judge: thousands of concepts fit on a CPU. Records are cached on disk
(:class:`~hooksteer.distill.cache.DistillCache`), so an interrupted run resumes where it stopped.

Example:
    >>> from hooksteer.distill import DistillConfig, build_distill_teacher      # doctest: +SKIP
    >>> data = build_distill_teacher(model, [(concept, prompt)], DistillConfig(top_k=32),   # doctest: +SKIP
    ...                              cache_dir="runs/distill-cache")
    >>> data.stats["tokens_per_second"], data[0].response                        # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from typing import Any

import torch

from hooksteer.activations import model_device, pad_token_id, right_pad, tokenize
from hooksteer.data.schema import BasePrompt, Concept
from hooksteer.distill.cache import DistillCache, PairKey
from hooksteer.distill.config import DistillConfig
from hooksteer.distill.loss import topk_teacher
from hooksteer.distill.records import DistillData, DistillRecord

__all__ = ["build_distill_teacher", "model_signature", "records_from_answers", "teacher_prompt", "student_prompt",
           "steering_prompt_of"]


def model_signature(model: Any) -> dict[str, Any]:
    """What identifies the teacher model in the cache key: name, sizes and a fingerprint of its embeddings."""
    cfg = model.cfg
    weights = model.embed.W_E if hasattr(model, "embed") and hasattr(model.embed, "W_E") else None
    if weights is None and hasattr(model, "original_model"):
        weights = model.original_model.get_input_embeddings().weight
    fingerprint = ""
    if weights is not None:
        sample = weights.detach()[:4, :16].float().cpu().numpy().round(4).tobytes()
        fingerprint = hashlib.sha1(sample).hexdigest()[:12]
    return {"model_name": str(getattr(cfg, "model_name", "")), "d_model": int(cfg.d_model),
            "n_layers": int(cfg.n_layers), "d_vocab": int(cfg.d_vocab), "embedding": fingerprint}


def steering_prompt_of(concept: Concept, config: DistillConfig) -> str:
    """The steering prompt the teacher reads for ``concept`` (``config.phrasing``), and the records' key."""
    if not -len(concept.steering_prompts) <= config.phrasing < len(concept.steering_prompts):
        raise ValueError(f"concept {concept.id!r} has {len(concept.steering_prompts)} steering prompts; "
                         f"phrasing={config.phrasing} is out of range")
    return concept.steering_prompts[config.phrasing]


def teacher_prompt(model: Any, concept: Concept, base: BasePrompt, config: DistillConfig) -> str:
    """The chat text the teacher reads: the prompt-steered request (with the concept's reference text
    first when ``teacher_context="reference_text"``)."""
    from hooksteer.data.phrasing import with_background
    from hooksteer.data.teacher import steered_chat_prompt, steered_user_message
    from hooksteer.models import format_chat

    steering = steering_prompt_of(concept, config)
    if config.teacher_context == "reference_text" and concept.text.strip():
        user = with_background(concept.text, steered_user_message(steering, base.text, config.style),
                               config.max_reference_chars)
        return format_chat(model, user)
    return steered_chat_prompt(model, steering, base.text, config.style)


def student_prompt(model: Any, base_prompt: str) -> str:
    """The chat text the student reads: the plain, unsteered request."""
    from hooksteer.models import format_chat

    return format_chat(model, base_prompt)


def _cut_at_eos(row: torch.Tensor, eos: int | None, limit: int) -> tuple[torch.Tensor, bool]:
    ids = row[:limit].cpu().long()
    if eos is not None:
        hits = (ids == eos).nonzero()
        if len(hits):
            return ids[: int(hits[0]) + 1], True
    return ids, False


def _final_hidden_at(model: Any, tokens: torch.Tensor, positions: list[torch.Tensor]) -> list[torch.Tensor]:
    """Final-norm hidden states at the given positions of each row, and the unembedding to apply to them:
    the Hugging Face twin of a ``TransformerBridge`` (fastest), or the HookedTransformer's own blocks."""
    from hooksteer.generation import is_bridge

    if is_bridge(model):
        from hooksteer.fast_generation import hf_twin

        twin = hf_twin(model)
        hidden = twin.model(input_ids=tokens).last_hidden_state
        return [twin.lm_head(hidden[row, pos]) for row, pos in enumerate(positions)]
    from transformer_lens.utilities.activation_functions import apply_softcap

    resid = model(tokens, stop_at_layer=int(model.cfg.n_layers), padding_side="right")
    out = []
    for row, pos in enumerate(positions):
        picked = resid[row, pos][None]
        if model.cfg.normalization_type is not None:
            picked = model.ln_final(picked)
        out.append(apply_softcap(model.unembed(picked), model.cfg.output_logits_soft_cap)[0])
    return out


@torch.no_grad()
def _teacher_logprobs(model: Any, prompts: list[torch.Tensor], responses: list[torch.Tensor], k: int
                      ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Top-k teacher log-probs at every response position (right-padded batch: no mask needed; only the
    response positions are unembedded)."""
    sequences = [torch.cat([p, r]) for p, r in zip(prompts, responses, strict=True)]
    device = model_device(model)
    tokens = right_pad(sequences, pad_token_id(model)).to(device)
    positions = [torch.arange(len(p) - 1, len(p) - 1 + len(r), device=device)
                 for p, r in zip(prompts, responses, strict=True)]
    out = []
    for logits in _final_hidden_at(model, tokens, positions):
        ids, values = topk_teacher(logits, k)
        out.append((ids.to(torch.int32).cpu(), values.float().cpu()))
    return out


def _make_batch(model: Any, generator: Any, pairs: Sequence[tuple[Concept, BasePrompt]],
                config: DistillConfig) -> tuple[list[DistillRecord], int]:
    from hooksteer.generation import generate_tokens

    answer_texts = ([teacher_prompt(model, c, b, config) for c, b in pairs] if config.response == "prompted"
                    else [student_prompt(model, b.text) for _, b in pairs])
    rows = generate_tokens(generator, answer_texts, max_new_tokens=config.max_new_tokens, do_sample=False)
    return records_from_answers(model, generator, pairs, rows, config)


def records_from_answers(model: Any, generator: Any, pairs: Sequence[tuple[Concept, BasePrompt]],
                         rows: Sequence[torch.Tensor], config: DistillConfig) -> tuple[list[DistillRecord], int]:
    """Distillation records for given answers: each generated row (cut at the model's end-of-text token and at
    ``config.max_new_tokens``) is scored by the prompted teacher (on ``generator`` when it is the bridge of the same
    weights, the faster path; else on ``model``); returns the records and the tokens processed.

    Example:
        >>> records, _ = records_from_answers(model, model, [(concept, prompt)], [answer_ids], DistillConfig())  # doctest: +SKIP
    """
    from hooksteer.generation import is_bridge

    teacher_texts = [teacher_prompt(model, c, b, config) for c, b in pairs]
    eos = getattr(model.tokenizer, "eos_token_id", None)
    responses, finished = [], []
    for row in rows:
        ids, done = _cut_at_eos(row, eos, config.max_new_tokens)
        if len(ids) == 0:  # cannot happen with max_new_tokens >= 1, but never store an empty answer
            ids, done = torch.tensor([int(eos if eos is not None else 0)]), eos is not None
        responses.append(ids)
        finished.append(done)
    prompts = [tokenize(model, text).cpu() for text in teacher_texts]
    teacher = _teacher_logprobs(generator if is_bridge(generator) else model, prompts, responses, config.top_k)
    records = []
    for (concept, base), ids, done, (top_ids, top_values) in zip(pairs, responses, finished, teacher, strict=True):
        text_ids = ids[:-1] if done else ids
        records.append(DistillRecord(
            concept_id=concept.id, steering_prompt=steering_prompt_of(concept, config), base_prompt=base.text,
            base_prompt_id=base.id, response=model.tokenizer.decode(text_ids.tolist(), skip_special_tokens=True).strip(),
            response_ids=ids, finished=done, teacher_ids=top_ids, teacher_logprobs=top_values))
    processed = sum(len(p) + len(r) for p, r in zip(prompts, responses, strict=True)) + sum(len(r) for r in responses)
    return records, processed


def build_distill_teacher(
    model: Any,
    pairs: Sequence[tuple[Concept, BasePrompt]],
    config: DistillConfig | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    generator: Any = None,
    progress: bool = True,
) -> DistillData:
    """Distillation records for every (concept, base prompt) pair, reusing cached ones (see module docstring).

    Args:
        model: the frozen TransformerLens chat model (``HookedTransformer`` or ``TransformerBridge``) whose
            prompt-steered distribution is distilled.
        pairs: (concept, base prompt) pairs, e.g. train concepts × train prompts of a split.
        config: :class:`DistillConfig` (response, top-k, length, phrasing, ...).
        cache_dir: folder of a :class:`DistillCache` (``None``: nothing is stored).
        generator: the same network as another model object, used for speed (default ``model``): e.g. a
            ``TransformerBridge`` on the same weights, whose Hugging Face twin then writes the greedy
            responses and computes the teacher's log-probs (the cache key still names ``model``).
        progress: show a tqdm bar (with tokens/s).

    Returns:
        :class:`DistillData`, one record per pair in the order given.
    """
    from tqdm.auto import tqdm

    config = config or DistillConfig()
    if not hasattr(model, "tokenizer") or model.tokenizer is None:
        raise ValueError("distillation needs a model with a tokenizer")
    generator = generator if generator is not None else model
    for name, other in (("generator", generator),):
        if int(other.cfg.d_vocab) != int(model.cfg.d_vocab):
            raise ValueError(f"the {name} has a vocabulary of {other.cfg.d_vocab}, the teacher {model.cfg.d_vocab}")
    key = config.key(model_signature(model))
    keyed: list[PairKey] = [(c.id, steering_prompt_of(c, config), b.text) for c, b in pairs]
    cache = DistillCache(cache_dir) if cache_dir is not None else None
    found = cache.load(key, keyed) if cache is not None else {}
    todo = list({pk: pair for pk, pair in zip(keyed, pairs, strict=True) if pk not in found}.items())
    started = time.perf_counter()
    processed = 0
    batches = [todo[i : i + config.batch_size] for i in range(0, len(todo), config.batch_size)]
    bar = tqdm(total=len(todo), desc="distillation teacher", unit="pair", disable=not progress)
    for batch in batches:
        records, tokens = _make_batch(model, generator, [pair for _, pair in batch], config)
        processed += tokens
        if cache is not None:
            cache.append(key, records)
        found.update({pk: record for (pk, _), record in zip(batch, records, strict=True)})
        bar.update(len(batch))
        bar.set_postfix(tok_s=f"{processed / max(time.perf_counter() - started, 1e-9):.0f}")
    bar.close()
    seconds = time.perf_counter() - started
    records = [found[pk] for pk in keyed]
    stats = {
        "n_pairs": len(records), "n_reused_from_cache": len(pairs) - len(todo), "n_new": len(todo),
        "seconds": round(seconds, 2), "tokens_processed": processed,
        "tokens_per_second": processed / seconds if todo and seconds > 0 else None,
        "seconds_per_pair": seconds / len(todo) if todo else None,
        "finished_fraction": sum(r.finished for r in records) / max(len(records), 1),
        "mean_response_tokens": sum(r.n_tokens for r in records) / max(len(records), 1),
        "key": key,
    }
    return DistillData(records, {**config.to_dict(), "model": model_signature(model)}, stats)
