"""The PSR teacher signal: how a steering instruction changes each response token's activations.

For a response ``y'`` written with the steering instruction in context (a teacher target), the model
reads it twice: after the prompt **with** the instruction (``x'y'``) and after the plain prompt
(``xy'``). On the response tokens, aligned by their position *inside the response* (token ``k`` of
``y'`` sits at absolute position ``len(x') + k`` in one sequence and ``len(x) + k`` in the other):

    Δ_{l,t} = A_l(x'y')_t − A_l(xy')_t          (A_l = ``blocks.{l}.hook_resid_post``)

Both prompts are chat-formatted exactly as the prompting baseline formats them: ``x'`` with
:func:`hooksteer.data.teacher.steered_chat_prompt` (default style ``"split"``), ``x`` with
:func:`hooksteer.models.format_chat`. An **empty** steering prompt means ``x' = x`` (no instruction),
so Δ is exactly zero.

**The span.** Besides the response tokens, ``compute_teacher(..., prefix_tokens=k)`` also keeps the last
``k`` prompt tokens: the chat-template tokens that open the assistant turn (``<|im_end|>\n<|im_start|>
assistant\n`` for SmolLM2, :func:`template_suffix_length`). They are the same tokens in ``x`` and ``x'``
(aligned from the end of the prompt), so Δ is defined there too, and the last of them is where the first
answer token is predicted: a PSR that steers them can change the first answer token.

**Distillation pairs.** :func:`pairs_from_distill` turns :class:`hooksteer.distill.DistillRecord` s into
pairs that carry the teacher's top-k log-probs (``TeacherPair.teacher_ids`` / ``teacher_logprobs``), so the
same pairs give Δ (for the initialisation and the fidelity plots) and the KL target of ``loss="distill"``.

Example:
    >>> rec = encode_pair(model, "Write about cats. Every sentence must be about cats.",  # doctest: +SKIP
    ...                   "Tell me about your day.", "Cats sleep a lot.")
    >>> teacher = compute_teacher(model, [rec], layers=[20])                               # doctest: +SKIP
    >>> teacher[0].delta[20].shape                                    # (response tokens, d_model)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from hooksteer.activations import model_device, pad_token_id, right_pad
from hooksteer.data.schema import SteeringExample
from hooksteer.data.teacher import DEFAULT_STYLE, steered_chat_prompt
from hooksteer.vectors import check_finite

__all__ = ["TeacherPair", "TeacherRecord", "block_indices", "encode_pair", "encode_examples", "compute_teacher", "hook_name",
           "steered_prompt_text",
           "plain_chat_prompt", "pairs_from_distill", "template_suffix_length"]


def hook_name(layer: int) -> str:
    """The residual site PSR reads and steers: ``blocks.{layer}.hook_resid_post``."""
    return f"blocks.{int(layer)}.hook_resid_post"


def plain_chat_prompt(model: Any, base_prompt: str) -> str:
    """``x``: the base prompt in the chat template (or raw text for a model without one)."""
    from hooksteer.models import format_chat

    if getattr(getattr(model, "tokenizer", None), "chat_template", None):
        return format_chat(model, base_prompt)
    return base_prompt


def steered_prompt_text(model: Any, steering_prompt: str, base_prompt: str, style: str = DEFAULT_STYLE, *,
                        background: str = "", background_chars: int = 600) -> str:
    """``x'``: the steering prompt placed with the base prompt (``style``) in the chat template (raw text for a model
    without one); the plain chat prompt when the steering prompt is empty. A ``background`` text (e.g. the concept's
    reference text, cut to ``background_chars``) precedes the user message as the ``reference_text`` distillation
    teacher reads it (:func:`hooksteer.data.phrasing.with_background`)."""
    if not steering_prompt.strip():
        return plain_chat_prompt(model, base_prompt)
    from hooksteer.data.teacher import steered_user_message

    has_template = bool(getattr(getattr(model, "tokenizer", None), "chat_template", None))
    if not background.strip():
        if has_template:
            return steered_chat_prompt(model, steering_prompt, base_prompt, style)
        return steered_user_message(steering_prompt, base_prompt, style)
    from hooksteer.data.phrasing import with_background
    from hooksteer.models import format_chat

    user = with_background(background, steered_user_message(steering_prompt, base_prompt, style), background_chars)
    return format_chat(model, user) if has_template else user


@dataclass
class TeacherPair:
    """Token ids of one teacher example: plain prompt ``x``, steered prompt ``x'`` and response ``y'``."""

    plain_prompt: Int[Tensor, " p"]
    steered_prompt: Int[Tensor, " q"]
    response: Int[Tensor, " n"]
    concept_id: str = ""
    #: base prompt text (held-out splits are made by base prompt, so held-out responses answer unseen prompts)
    base_prompt: str = ""
    #: distillation target (``loss="distill"``): the teacher's top-k ids / log-probs for each response token
    teacher_ids: Int[Tensor, "n k"] | None = None
    teacher_logprobs: Float[Tensor, "n k"] | None = None

    def __post_init__(self) -> None:
        for name in ("plain_prompt", "steered_prompt", "response"):
            value = getattr(self, name)
            if not isinstance(value, Tensor) or value.ndim != 1 or value.dtype != torch.long:
                raise TypeError(f"{name} must be a 1-D LongTensor of token ids")
        if self.response.numel() == 0:
            raise ValueError("the response is empty: the teacher signal lives on response tokens")
        if self.plain_prompt.numel() == 0 or self.steered_prompt.numel() == 0:
            raise ValueError("prompts must have at least one token")
        if (self.teacher_ids is None) != (self.teacher_logprobs is None):
            raise ValueError("give both teacher_ids and teacher_logprobs, or neither")
        if self.teacher_ids is not None:
            n = self.response.numel()
            if self.teacher_ids.shape != self.teacher_logprobs.shape or self.teacher_ids.shape[:1] != (n,):
                raise ValueError(f"teacher top-k must have shape ({n}, k) for {n} response tokens, got "
                                 f"{tuple(self.teacher_ids.shape)} and {tuple(self.teacher_logprobs.shape)}")

    @property
    def has_distill_target(self) -> bool:
        return self.teacher_ids is not None

    @property
    def plain(self) -> Int[Tensor, " seq"]:
        """``xy'``."""
        return torch.cat([self.plain_prompt, self.response])

    @property
    def steered(self) -> Int[Tensor, " seq"]:
        """``x'y'``."""
        return torch.cat([self.steered_prompt, self.response])


@dataclass
class TeacherRecord:
    """Teacher activations of one example on its span (the last ``n_prefix`` prompt tokens + the response), per layer.

    ``plain[l]`` = A_l(xy') and ``delta[l]`` = A_l(x'y') − A_l(xy') on the ``n_prefix + n`` span tokens
    (``n_prefix = 0``: response tokens only). ``nll_plain`` / ``nll_prompted``: per-token −log p of the response
    after ``x`` and after ``x'`` (when computed with ``nll=True``).
    """

    pair: TeacherPair
    plain: dict[int, Float[Tensor, "s d_model"]] = field(default_factory=dict)
    delta: dict[int, Float[Tensor, "s d_model"]] = field(default_factory=dict)
    n_prefix: int = 0
    nll_plain: Float[Tensor, " n"] | None = None
    nll_prompted: Float[Tensor, " n"] | None = None

    @property
    def n_tokens(self) -> int:
        """Response tokens."""
        return int(self.pair.response.numel())

    @property
    def n_span(self) -> int:
        """Span tokens (template prefix + response)."""
        return self.n_prefix + self.n_tokens

    @property
    def span_start(self) -> int:
        """Absolute position of the first span token in ``xy'``."""
        return int(self.pair.plain_prompt.numel()) - self.n_prefix

    def delta_norms(self, layer: int) -> Float[Tensor, " n"]:
        """‖Δ_t‖ at ``layer`` for every *response* token."""
        return self.delta[layer][self.n_prefix :].norm(dim=-1)


def template_suffix_length(model: Any) -> int:
    """Number of chat-template tokens after the user message (those that open the assistant turn), e.g. 6
    for SmolLM2 (``<|im_end|> \\n <|im_start|> ass istant \\n``); 0 for a model without a chat template.

    Measured as the common token suffix of two formatted requests whose last characters differ.
    """
    if not getattr(getattr(model, "tokenizer", None), "chat_template", None):
        return 0
    a = model.to_tokens(plain_chat_prompt(model, "alpha?"))[0].tolist()
    b = model.to_tokens(plain_chat_prompt(model, "omega!"))[0].tolist()
    k = 0
    while k < min(len(a), len(b)) and a[-1 - k] == b[-1 - k]:
        k += 1
    return k


def encode_pair(model: Any, steering_prompt: str, base_prompt: str, response: str, *,
                style: str = DEFAULT_STYLE, max_response_tokens: int | None = None,
                concept_id: str = "", background: str = "", background_chars: int = 600) -> TeacherPair:
    """Tokenize ``x``, ``x'`` and ``y'`` (response without BOS, optionally truncated); ``background`` as in
    :func:`steered_prompt_text`.

    Raises:
        ValueError: empty base prompt or empty response.
    """
    if not isinstance(base_prompt, str) or not base_prompt.strip():
        raise ValueError("base_prompt must be a non-empty string")
    if not isinstance(response, str) or not response.strip():
        raise ValueError("response is empty: the teacher signal lives on response tokens")
    plain = model.to_tokens(plain_chat_prompt(model, base_prompt))[0].cpu()
    steered = model.to_tokens(steered_prompt_text(model, steering_prompt or "", base_prompt, style,
                                                  background=background, background_chars=background_chars))[0].cpu()
    ids = model.to_tokens(response, prepend_bos=False)[0].cpu()
    if max_response_tokens is not None:
        ids = ids[:max_response_tokens]
    return TeacherPair(plain, steered, ids, concept_id, base_prompt)


def encode_examples(model: Any, examples: Sequence[SteeringExample], *, style: str = DEFAULT_STYLE,
                    max_response_tokens: int | None = None) -> list[TeacherPair]:
    """:func:`encode_pair` for every teacher example (``target`` is the response ``y'``)."""
    if not examples:
        raise ValueError("no teacher examples given")
    return [encode_pair(model, e.steering_prompt, e.base_prompt, e.target, style=style,
                        max_response_tokens=max_response_tokens, concept_id=e.concept_id) for e in examples]


@torch.no_grad()
def _resid(model: Any, tokens: Int[Tensor, "batch pos"], layers: Sequence[int], *, final: bool = False
           ) -> tuple[dict[int, Tensor], Tensor | None]:
    """resid_post of ``layers`` (CPU, float) and, with ``final``, the residual after the last block."""
    names = {hook_name(layer) for layer in layers}
    stop = int(model.cfg.n_layers) if final else max(layers) + 1
    out, cache = model.run_with_cache(tokens.to(model_device(model)), names_filter=lambda n: n in names,
                                      stop_at_layer=stop, padding_side="right")
    return {layer: cache[hook_name(layer)].float().cpu() for layer in layers}, (out if final else None)


def response_nll_from_final(model: Any, final: Float[Tensor, "pos d_model"], prompt_length: int,
                            response: Int[Tensor, " n"]) -> Float[Tensor, " n"]:
    """Per-token −log p(response) from the residual after the last block of one sequence (final norm and
    unembedding applied only at the positions that predict the response)."""
    from transformer_lens.utilities.activation_functions import apply_softcap

    n = int(response.numel())
    picked = final[prompt_length - 1 : prompt_length - 1 + n][None]
    if model.cfg.normalization_type is not None:
        picked = model.ln_final(picked)
    logits = apply_softcap(model.unembed(picked), model.cfg.output_logits_soft_cap)[0].float()
    return torch.nn.functional.cross_entropy(logits, response.to(logits.device), reduction="none").cpu()


def block_indices(model: Any, layers: Sequence[int]) -> list[int]:
    """``layers`` sorted and deduplicated, checked to be block indices of ``model``.

    Raises:
        ValueError: no layers, or one outside ``0..n_layers - 1``.
    """
    sites = sorted({int(layer) for layer in layers})
    n_layers = int(model.cfg.n_layers)
    if not sites or sites[0] < 0 or sites[-1] >= n_layers:
        raise ValueError(f"layers must be non-empty block indices in 0..{n_layers - 1}, got {sites}")
    return sites


def compute_teacher(model: Any, pairs: Sequence[TeacherPair], layers: Sequence[int], *,
                    batch_size: int = 8, progress: bool = False, prefix_tokens: int = 0,
                    nll: bool = False) -> list[TeacherRecord]:
    """Run ``xy'`` and ``x'y'`` for every pair and keep A_l(xy') and Δ_l on the span tokens.

    Args:
        model: frozen ``HookedTransformer``.
        pairs: from :func:`encode_pair` / :func:`encode_examples` / :func:`pairs_from_distill`.
        layers: block indices whose ``hook_resid_post`` is read.
        batch_size: sequences per forward pass (right-padded: exact for causal models).
        prefix_tokens: also keep the last ``k`` prompt tokens (the assistant-turn template,
            :func:`template_suffix_length`); they must be the same tokens in ``x`` and ``x'``.
        nll: also store the per-token response NLL after ``x`` and after ``x'`` (runs every block).

    Raises:
        ValueError: no pairs / no layers / a layer outside the model, a prefix that differs between ``x``
            and ``x'``, or non-finite activations.
    """
    from tqdm.auto import tqdm

    if not pairs:
        raise ValueError("no teacher pairs given")
    layers = block_indices(model, layers)
    k = int(prefix_tokens)
    if k < 0:
        raise ValueError(f"prefix_tokens must be >= 0, got {k}")
    for pair in pairs:
        p, q = pair.plain_prompt.numel(), pair.steered_prompt.numel()
        if k and (k >= min(p, q) or not torch.equal(pair.plain_prompt[p - k :], pair.steered_prompt[q - k :])):
            raise ValueError(f"the last {k} prompt tokens differ between x and x' (or a prompt is too short): Δ is "
                             "undefined there; use template_suffix_length(model)")
    pad = pad_token_id(model)
    records: list[TeacherRecord] = []
    for start in tqdm(range(0, len(pairs), batch_size), desc="teacher Δ", disable=not progress):
        chunk = list(pairs[start : start + batch_size])
        plain, plain_final = _resid(model, right_pad([p.plain for p in chunk], pad), layers, final=nll)
        steered, steered_final = _resid(model, right_pad([p.steered for p in chunk], pad), layers, final=nll)
        for row, pair in enumerate(chunk):
            n, p, q = pair.response.numel(), pair.plain_prompt.numel(), pair.steered_prompt.numel()
            record = TeacherRecord(pair, n_prefix=k)
            for layer in layers:
                a_plain = plain[layer][row, p - k : p + n]
                a_steered = steered[layer][row, q - k : q + n]
                check_finite(a_plain, f"activations at layer {layer}")
                check_finite(a_steered, f"prompted activations at layer {layer}")
                record.plain[layer] = a_plain.clone()
                record.delta[layer] = (a_steered - a_plain).clone()
            if nll:
                assert plain_final is not None and steered_final is not None
                record.nll_plain = response_nll_from_final(model, plain_final[row], p, pair.response)
                record.nll_prompted = response_nll_from_final(model, steered_final[row], q, pair.response)
            records.append(record)
    return records


def pairs_from_distill(model: Any, records: Sequence[Any], config: Any = None, *,
                       concepts: Mapping[str, Any] | None = None) -> list[TeacherPair]:
    """:class:`TeacherPair` s (with the teacher's top-k attached) from distillation records.

    ``x`` = :func:`hooksteer.distill.student_prompt`, ``x'`` = :func:`hooksteer.distill.teacher_prompt` (the
    exact text the teacher read), ``y`` = the record's ``response_ids``; tokenised as the distillation
    teacher tokenised them, so ``teacher_ids[t]`` belongs to the prediction of ``y[t]``.

    Args:
        model: the model the records were made with.
        records: :class:`hooksteer.distill.DistillRecord` s (or a :class:`~hooksteer.distill.DistillData`).
        config: the :class:`hooksteer.distill.DistillConfig` used (default: ``records.config`` of a
            ``DistillData``, else the default config).
        concepts: ``{concept_id: Concept}``; needed when the teacher read the concept's reference text.
    """
    import dataclasses

    from hooksteer.activations import tokenize
    from hooksteer.data.schema import BasePrompt, Concept
    from hooksteer.distill import DistillConfig, student_prompt, teacher_prompt

    if config is None:
        stored = dict(getattr(records, "config", {}) or {})
        stored.pop("model", None)
        config = DistillConfig.from_dict(stored) if stored else DistillConfig()
    pairs = []
    for record in records:
        concept = (concepts or {}).get(record.concept_id)
        if concept is None:
            if config.teacher_context != "steering_prompt":
                raise ValueError(f"the teacher read concept {record.concept_id!r}'s reference text: pass concepts=")
            concept = Concept(id=record.concept_id, title=record.concept_id, steering_prompts=[record.steering_prompt])
            used = dataclasses.replace(config, phrasing=0)
        else:
            used = config
        base = BasePrompt(id=record.base_prompt_id or "base", text=record.base_prompt)
        plain = tokenize(model, student_prompt(model, record.base_prompt)).cpu()
        steered = tokenize(model, teacher_prompt(model, concept, base, used)).cpu()
        pairs.append(TeacherPair(plain, steered, record.response_ids.long().cpu(), record.concept_id,
                                 record.base_prompt, record.teacher_ids.cpu(), record.teacher_logprobs.float().cpu()))
    return pairs
