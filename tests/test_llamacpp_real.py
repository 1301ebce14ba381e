"""Exported control vectors in real llama.cpp (llama-cpp-python 0.3.36) on the embedded SmolLM2 GGUF.

Opt-in: ``make test-llamacpp`` builds llama-cpp-python once into the venv and runs these. Skipped when
``llama_cpp`` is not importable; never part of the default run (marked ``slow``).
llama.cpp runs the Q4_1 weights, hooksteer the dequantised float32 copy, so the tests compare the
*shift* in next-token log-probs that steering causes, not raw logits.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.llamacpp, pytest.mark.real_model]
llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed (make test-llamacpp builds it)")

import hooksteer as hs  # noqa: E402
from hooksteer.data.contrast import contrast_texts  # noqa: E402
from hooksteer.llamacpp import LlamaCppModel, directions, export_gguf, load_gguf, read_with_ggml  # noqa: E402
from hooksteer.llamacpp_agreement import shift_agreement  # noqa: E402

LAYER = 10
PROMPTS = ("Tell me about your day.", "Write two sentences about the weather today.",
           "What do you think of your neighbours?", "Describe your favourite food.")


@pytest.fixture(scope="module")
def model():
    try:
        return hs.load_model()
    except hs.models.ModelNotInstalledError as error:  # pragma: no cover
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def llm():
    from hooksteer.models import find_default_gguf

    with LlamaCppModel(find_default_gguf(), n_ctx=256, n_threads=2) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def love(model):
    positive, negative = contrast_texts("love_hate")
    return hs.methods.diffmean(model, positive, negative, f"blocks.{LAYER}.hook_resid_post", aggregation="mean")


@pytest.fixture(scope="module")
def prompts(model):
    return [model.to_tokens(hs.format_chat(model, p), prepend_bos=False)[0].tolist() for p in PROMPTS]


def test_llama_cpp_parses_the_exported_file_bit_exactly(tmp_path, love, llm):
    path = export_gguf(love * 4.0, tmp_path / "love.gguf")
    arch, parsed = read_with_ggml(path)
    assert arch == "controlvector" and sorted(parsed) == [LAYER]
    np.testing.assert_array_equal(parsed[LAYER], (love * 4.0).vector.numpy())
    assert llm.n_layers == 30 and llm.n_embd == love.d_model


def test_log_prob_shifts_agree_with_hooksteer(tmp_path, model, llm, love, prompts):
    report = shift_agreement(model, llm, export_gguf(love * 4.0, tmp_path / "cv.gguf", model=model), love * 4.0,
                             prompts, top_k=20)
    assert report["mean_correlation"] >= 0.9 and report["min_correlation"] >= 0.8, report
    assert report["unsteered_top1_agreement"] == 1.0


def test_strong_vector_gives_the_same_top1(tmp_path, model, llm, love, prompts):
    strong = love * 8.0
    report = shift_agreement(model, llm, export_gguf(strong, tmp_path / "cv.gguf", model=model), strong, prompts)
    assert report["top1_changed_by_steering"] > 0, "the vector is too weak to test top-1 agreement"
    assert report["top1_agreement"] == 1.0, report["prompts"]
    assert report["mean_correlation"] >= 0.9


def test_mapping_is_exact_not_one_layer_off(tmp_path, model, llm, love, prompts):
    steering = love * 8.0
    path = export_gguf(steering, tmp_path / "cv.gguf", model=model)
    right = shift_agreement(model, llm, path, steering, prompts)
    for shift in (-1, 1):
        wrong = shift_agreement(model, llm, path, steering, prompts, shift=shift, base=right["base"])
        assert wrong["mean_correlation"] < right["mean_correlation"] - 0.02, (shift, wrong["mean_correlation"])


def test_two_layers_and_resid_pre_agree(tmp_path, model, llm, prompts):
    positive, negative = contrast_texts("love_hate")
    early = hs.methods.diffmean(model, positive, negative, "blocks.5.hook_resid_post", aggregation="mean")
    pre = hs.methods.diffmean(model, positive, negative, f"blocks.{LAYER + 1}.hook_resid_pre", aggregation="mean")
    steering = hs.SteeringSet([early * 3.0, pre * 3.0])
    assert sorted(directions(steering)) == [5, LAYER]
    path = export_gguf(steering, tmp_path / "two.gguf", model=model)
    assert [v.hook_name for v in load_gguf(path, model=model)] == ["blocks.5.hook_resid_post",
                                                                 f"blocks.{LAYER}.hook_resid_post"]
    report = shift_agreement(model, llm, path, steering, prompts)
    assert report["mean_correlation"] >= 0.9, report


def test_clearing_the_control_vector_restores_llama_cpp(tmp_path, llm, love, prompts):
    plain = llm.next_token_logits(prompts[0])
    llm.set_control_vector([export_gguf(love * 8.0, tmp_path / "cv.gguf")])
    steered = llm.next_token_logits(prompts[0])
    llm.set_control_vector(None)
    assert not np.allclose(plain, steered, atol=1e-2)
    np.testing.assert_allclose(llm.next_token_logits(prompts[0]), plain, rtol=0, atol=1e-5)


def test_a_shorter_control_vector_replaces_a_deeper_one(tmp_path, model, llm, love, prompts):
    """llama_set_adapter_cvec keeps layers past the buffer's end; LlamaCppModel pads so none go stale."""
    deep = hs.SteeringVector("blocks.20.hook_resid_post", love.vector) * 8.0
    shallow = love * 8.0
    llm.set_control_vector(None)
    llm.set_control_vector([export_gguf(shallow, tmp_path / "shallow.gguf")])
    fresh = llm.next_token_logits(prompts[0])
    llm.set_control_vector([export_gguf(deep, tmp_path / "deep.gguf")])
    llm.set_control_vector([tmp_path / "shallow.gguf"])
    after_deep = llm.next_token_logits(prompts[0])
    llm.set_control_vector(None)
    np.testing.assert_allclose(after_deep, fresh, rtol=0, atol=1e-5)


def test_llama_cpp_rejects_what_load_gguf_rejects(tmp_path):
    """The same bad files fail in llama.cpp's own reader (ggml) and in hooksteer's."""
    import gguf
    import torch

    from hooksteer.llamacpp import ControlVectorFileError

    good = export_gguf(hs.SteeringVector("blocks.2.hook_resid_post", torch.ones(8)), tmp_path / "g.gguf")
    (tmp_path / "cut.gguf").write_bytes(good.read_bytes()[:100])
    writer = gguf.GGUFWriter(tmp_path / "zero.gguf", "controlvector")
    writer.add_tensor("direction.0", np.ones(8, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    for name in ("cut.gguf", "zero.gguf"):
        for reader in (read_with_ggml, load_gguf):
            with pytest.raises(ControlVectorFileError):
                reader(tmp_path / name)
    assert sorted(read_with_ggml(good)[1]) == [2]
