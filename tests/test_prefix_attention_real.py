"""Prefix steering on the embedded SmolLM2-135M-Instruct: the answer takes up the steering prompt's concept."""

import pytest

import hooksteer as hs
from hooksteer.generation import generate_texts
from hooksteer.prefix_attention import generate_with_prefix, steering_prompt_prefix

pytestmark = [pytest.mark.slow, pytest.mark.real_model]

PROMPTS = ["Why do leaves change colour in autumn?", "Write a short poem about the sea."]


def test_the_answer_attends_to_the_steering_prompt_and_names_its_concept():
    bridge = hs.load_bridge()
    prefix = steering_prompt_prefix(bridge, "Write about Buddhism. Every sentence must be about Buddhism.")
    plain = generate_texts(bridge, PROMPTS, max_new_tokens=32)
    assert generate_with_prefix(bridge, PROMPTS, prefix, factor=0.0, max_new_tokens=32) == plain
    steered = generate_with_prefix(bridge, PROMPTS, prefix, factor=3.0, max_new_tokens=32)
    assert not any("Buddh" in text for text in plain)
    assert sum("Buddh" in text for text in steered) >= 1
