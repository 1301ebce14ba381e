"""Methods that install no hook: prompt steering (the instruction in the user message) and no steering.

:class:`PromptSteering` rewrites the user message with the concept's steering prompt (factor ignored);
:class:`NoSteering` generates plainly, the reference.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from hooksteer.data.schema import Concept
from hooksteer.evaluate.methods.common import Factor, GenerationSettings, _generate_plain

MessageBuilder = Callable[[str, str], str]


def default_message_builder() -> MessageBuilder:
    """``hooksteer.data.phrasing.steered_user_message`` if the data module has it, else a simple template."""
    try:
        from hooksteer.data.phrasing import steered_user_message
    except ImportError:
        return simple_steered_message
    return steered_user_message


def simple_steered_message(steering_prompt: str, base_prompt: str) -> str:
    """Fallback prompt steering: the steering instruction, then the base prompt.

    Example:
        >>> simple_steered_message("Mention cats.", "Describe your day.")
        'Mention cats.\\n\\nDescribe your day.'
    """
    return f"{steering_prompt}\n\n{base_prompt}"


#: Placements of the steering prompt inside the user turn (``"system"`` moves it out of the user turn).
USER_TURN_STYLES: tuple[str, ...] = ("split", "prefix", "suffix")


def styled_message_builder(style: str) -> MessageBuilder:
    """``steered_user_message`` with a fixed placement of the steering prompt.

    Example:
        >>> styled_message_builder("prefix")("Mention cats.", "Hi!")
        'Mention cats.\\n\\nHi!'
    """
    from hooksteer.data.phrasing import steered_user_message

    def build(steering_prompt: str, base_prompt: str) -> str:
        return steered_user_message(steering_prompt, base_prompt, style)

    build.__name__ = f"steered_user_message_{style}"
    return build


class PromptSteerer:
    """Generates with the steering instruction written into the user message (after ``background``, when given);
    installs no hook."""

    def __init__(self, model: nn.Module, steering_prompt: str, builder: MessageBuilder, *, background: str = "",
                 background_chars: int = 600) -> None:
        self.model, self.steering_prompt, self.builder = model, steering_prompt, builder
        self.background, self.background_chars = background, background_chars
        self.info = {"steering_prompt": steering_prompt, **({"background": True} if background.strip() else {})}

    def messages(self, prompts: Sequence[str]) -> list[str]:
        from hooksteer.data.phrasing import with_background

        return [with_background(self.background, self.builder(self.steering_prompt, prompt), self.background_chars)
                for prompt in prompts]

    def generate(self, prompts: Sequence[str], factors: Sequence[Factor], settings: GenerationSettings,
                 seed: int) -> list[list[str]]:
        outputs = _generate_plain(self.model, self.messages(prompts), settings, seed)
        return [list(outputs) for _ in factors]


@dataclass
class PromptSteering:
    """Prompt baseline: the concept's steering prompt is added to the user message (no vector, no factor).

    Args:
        message_builder: ``(steering_prompt, base_prompt) -> user message``; default
            :func:`default_message_builder` (the data module's ``steered_user_message``).
        prompt_index: which of the concept's steering-prompt phrasings to use.
        background_chars: ``None`` (default): the steering prompt alone. A number: the concept's reference text, cut
            to that many characters, precedes the message (``"Background: …"``, exactly what the ``reference_text``
            distillation teacher reads; :func:`hooksteer.data.phrasing.with_background`).
        style: ``None`` (default): the message builder's placement. ``"split"``, ``"prefix"`` or ``"suffix"``:
            :func:`hooksteer.data.phrasing.steered_user_message` with that placement (no ``message_builder`` then).

    Example:
        >>> PromptSteering(background_chars=600, name="prompt+background").config()["background_chars"]
        600
    """

    message_builder: MessageBuilder | None = field(default=None, repr=False)
    prompt_index: int = 0
    name: str = "prompt"
    background_chars: int | None = None
    style: str | None = None
    uses_factors: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if self.style is not None:
            if self.style not in USER_TURN_STYLES:
                raise ValueError(f"style must be None or one of {list(USER_TURN_STYLES)}, got {self.style!r}")
            if self.message_builder is not None:
                raise ValueError("give a style or a message_builder, not both")
        chars = self.background_chars
        if chars is not None and (isinstance(chars, bool) or not isinstance(chars, int) or chars < 1):
            raise ValueError(f"background_chars must be None or a positive integer, got {chars!r}")

    def builder(self) -> MessageBuilder:
        """What writes the user message: the ``style``'s placement, the ``message_builder`` or the default."""
        if self.style is not None:
            return styled_message_builder(self.style)
        return self.message_builder or default_message_builder()

    def prepare(self, model: nn.Module, concept: Concept, others: Sequence[Concept]) -> PromptSteerer:
        if not concept.steering_prompts:
            raise ValueError(f"concept {concept.id!r} has no steering prompts for prompt steering")
        builder = self.builder()
        if self.background_chars is None:
            return PromptSteerer(model, concept.steering_prompts[self.prompt_index], builder)
        if not concept.text.strip():
            raise ValueError(f"concept {concept.id!r} has no reference text for prompt steering with background")
        return PromptSteerer(model, concept.steering_prompts[self.prompt_index], builder, background=concept.text,
                             background_chars=self.background_chars)

    def config(self) -> dict[str, Any]:
        builder = self.builder()
        return {"name": self.name, "class": type(self).__name__, "prompt_index": self.prompt_index,
                "message_builder": f"{builder.__module__}.{getattr(builder, '__name__', type(builder).__name__)}",
                **({} if self.style is None else {"style": self.style}),
                **({} if self.background_chars is None else {"background_chars": self.background_chars})}


class PlainSteerer:
    """Unsteered generation."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.info = model, {}

    def generate(self, prompts: Sequence[str], factors: Sequence[Factor], settings: GenerationSettings,
                 seed: int) -> list[list[str]]:
        outputs = _generate_plain(self.model, prompts, settings, seed)
        return [list(outputs) for _ in factors]


@dataclass
class NoSteering:
    """Reference: the unsteered model (its concept score shows how often the concept appears anyway)."""

    name: str = "none"
    uses_factors: bool = field(default=False, init=False)

    def prepare(self, model: nn.Module, concept: Concept, others: Sequence[Concept]) -> PlainSteerer:
        return PlainSteerer(model)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "class": type(self).__name__}
