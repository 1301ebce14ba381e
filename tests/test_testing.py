"""Tests for hooksteer.testing (tiny offline models/tokenizer) and the hooksteer pytest plugin."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from hooksteer import testing as ht

# The fixtures normally come from the ``pytest11`` entry point. When hooksteer is not installed
# (plain checkout) or plugin autoloading is disabled, load the plugin module explicitly - but never
# twice, which pluggy would reject.
pytest_plugins = ["pytester"]
if "hooksteer.pytest_plugin" not in sys.modules:
    pytest_plugins.append("hooksteer.pytest_plugin")

KINDS = ("llama", "gpt2")
TESTING_PY = Path(ht.__file__)


def _entry_point_autoloads() -> bool:
    if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
        return False
    eps = importlib.metadata.entry_points(group="pytest11")
    return any(ep.name == "hooksteer" and ep.value == "hooksteer.pytest_plugin" for ep in eps)


def _greedy(model, prompt: str, n: int, **kwargs) -> torch.Tensor:
    return model.generate(
        prompt,
        max_new_tokens=n,
        do_sample=False,
        stop_at_eos=False,
        verbose=False,
        return_type="tokens",
        **kwargs,
    )


# --------------------------------------------------------------------------------------------------
# tokenizer
# --------------------------------------------------------------------------------------------------


def test_tokenizer_basics():
    tok = ht.tiny_tokenizer()
    assert isinstance(tok, PreTrainedTokenizerFast)
    assert 300 <= len(tok) <= 512
    specials = (tok.pad_token, tok.bos_token, tok.eos_token, tok.unk_token)
    assert specials == ("<|pad|>", "<|bos|>", "<|endoftext|>", "<|unk|>")
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [4, 5]
    assert len({tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id}) == 4
    # Llama-like: the tokenizer itself prepends BOS.
    assert tok("hello")["input_ids"][0] == tok.bos_token_id
    assert tok("hello", add_special_tokens=False)["input_ids"][0] != tok.bos_token_id
    # Trained merges: common words are single tokens.
    assert len(tok.encode(" the", add_special_tokens=False)) == 1


@pytest.mark.parametrize(
    "text",
    [
        "I love sunny days, and I hate rainy weather.",
        "The capital of France is Paris.",
        "Zyxqvw flibbertigibbet quasquicentennial!!",  # unseen words
        "naïve café, Größe, 日本語, emoji 😀🚀 and tabs\tand\nnewlines",  # unseen characters
        "  leading and trailing spaces  ",
        "",
    ],
)
def test_tokenizer_round_trips_arbitrary_text(text):
    tok = ht.tiny_tokenizer()
    ids = tok(text)["input_ids"]
    assert tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == text
    for word in text.split():
        assert word in tok.decode(ids)


def test_tokenizer_is_deterministic_and_cached():
    a, b = ht.tiny_tokenizer(), ht.tiny_tokenizer()
    assert a.get_vocab() == b.get_vocab()
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    # Calls return independent copies: mutating one does not affect later calls.
    assert a is not b
    a.padding_side = "left"
    assert ht.tiny_tokenizer().padding_side == "right"
    start = time.perf_counter()
    for _ in range(10):
        ht.tiny_tokenizer()
    assert (time.perf_counter() - start) / 10 < 0.05


def test_tokenizer_vocab_identical_in_a_fresh_process():
    # Load testing.py standalone (no package import, no transformers: only `tokenizers` is needed to
    # train) in a new interpreter - fresh hash seeds - and compare the vocab and merges.
    code = (
        "import importlib.util, json\n"
        f"spec = importlib.util.spec_from_file_location('tiny_testing', {str(TESTING_PY)!r})\n"
        "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
        "print(json.dumps(json.loads(mod._train_backend_tokenizer().to_str())['model']))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    model = json.loads(out.stdout.strip().splitlines()[-1])
    assert model == json.loads(ht.tiny_tokenizer().backend_tokenizer.to_str())["model"]
    assert model["vocab"] == ht.tiny_tokenizer().get_vocab()


def test_tokenizer_saved_to_directory_and_reloads(tmp_path):
    target = tmp_path / "tok"
    tok = ht.tiny_tokenizer(target)
    files = {p.name for p in target.iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json"} <= files
    assert Path(tok.name_or_path).resolve() == target.resolve()
    reloaded = AutoTokenizer.from_pretrained(target)
    assert reloaded.get_vocab() == tok.get_vocab() == ht.tiny_tokenizer().get_vocab()
    text = "Hello there, general Kenobi."
    assert reloaded(text)["input_ids"] == tok(text)["input_ids"]
    assert reloaded.chat_template == ht.CHAT_TEMPLATE
    # str paths work too, and are cached per directory.
    assert ht.tiny_tokenizer(str(target)).get_vocab() == tok.get_vocab()


def test_chat_template_is_chatml():
    tok = ht.tiny_tokenizer()
    messages = [
        {"role": "system", "content": "Be nice."},
        {"role": "user", "content": "Hi there!"},
        {"role": "assistant", "content": "Hello."},
    ]
    text = tok.apply_chat_template(messages, tokenize=False)
    assert text == (
        "<|im_start|>system\nBe nice.<|im_end|>\n"
        "<|im_start|>user\nHi there!<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n"
    )
    prompt = tok.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")
    ids = tok.encode(prompt, add_special_tokens=False)
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 3  # special tokens stay atomic
    assert ids.count(tok.convert_tokens_to_ids("<|im_end|>")) == 2
    assert tok.decode(ids) == prompt


# --------------------------------------------------------------------------------------------------
# configs
# --------------------------------------------------------------------------------------------------


def test_llama_config():
    cfg = ht.tiny_llama_config()
    assert cfg.n_key_value_heads is not None and cfg.n_key_value_heads < cfg.n_heads
    assert (cfg.n_heads, cfg.n_key_value_heads, cfg.d_model, cfg.d_head, cfg.d_mlp) == (4, 2, 32, 8, 64)
    assert (cfg.n_layers, cfg.n_ctx) == (3, 128)
    assert cfg.positional_embedding_type == "rotary" and cfg.rotary_dim == cfg.d_head
    assert cfg.normalization_type == "RMS" and cfg.final_rms
    assert cfg.gated_mlp and cfg.act_fn == "silu"
    assert cfg.default_prepend_bos is False
    assert cfg.d_vocab == cfg.d_vocab_out == len(ht.tiny_tokenizer())
    assert cfg.device == "cpu" and cfg.dtype == torch.float32 and cfg.seed == 0
    assert ht.tiny_llama_config(n_layers=1, d_mlp=16).n_layers == 1


def test_gpt2_config():
    cfg = ht.tiny_gpt2_config()
    assert cfg.normalization_type == "LN" and cfg.positional_embedding_type == "standard"
    assert not cfg.gated_mlp and cfg.act_fn.startswith("gelu")
    dims = (cfg.n_heads, cfg.d_model, cfg.d_head, cfg.d_mlp, cfg.n_layers, cfg.n_ctx)
    assert dims == (4, 32, 8, 128, 3, 128)
    assert cfg.n_key_value_heads is None
    assert cfg.d_vocab == len(ht.tiny_tokenizer())
    assert ht.tiny_gpt2_config(d_mlp=64).d_mlp == 64


# --------------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_build_is_fast(kind):
    ht.tiny_model(kind)  # warm-up: first call pays for imports
    start = time.perf_counter()
    model = ht.tiny_model(kind)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"building tiny {kind} took {elapsed:.3f}s"
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    assert model.cfg.device == "cpu"
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.parameters())


@pytest.mark.parametrize("kind", KINDS)
def test_seed_reproducibility(kind):
    a = ht.tiny_model(kind, seed=0).state_dict()
    b = ht.tiny_model(kind, seed=0).state_dict()
    c = ht.tiny_model(kind, seed=1).state_dict()
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["embed.W_E"], c["embed.W_E"])
    assert not torch.equal(a["unembed.W_U"], c["unembed.W_U"])


@pytest.mark.parametrize("kind", KINDS)
def test_init_is_non_trivial(kind):
    model = ht.tiny_model(kind)
    w_e = model.embed.W_E
    assert w_e.std() > 0.05 and w_e.abs().max() < 5
    assert model.blocks[0].attn.W_Q.std() > 0.05
    assert torch.isfinite(model.unembed.W_U).all()
    logits = model("The capital of France is")
    assert torch.isfinite(logits).all()
    assert logits[0, -1].std() > 0.1  # not a flat distribution
    assert not torch.allclose(logits[0, 0], logits[0, -1])  # depends on the input


def test_building_does_not_touch_global_rng():
    torch.manual_seed(1234)
    expected = torch.rand(4)
    torch.manual_seed(1234)
    ht.tiny_model("llama", seed=7)
    ht.tiny_gpt2_config(seed=99)
    assert torch.equal(torch.rand(4), expected)


def test_no_deprecation_warning_from_factory():
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        ht.tiny_model("gpt2")


def test_unknown_kind():
    with pytest.raises(ValueError, match=r"llama.*gpt2"):
        ht.tiny_model("mistral")  # type: ignore[arg-type]


def test_config_overrides():
    model = ht.tiny_model("llama", n_layers=2, d_mlp=16)
    assert len(model.blocks) == 2 and model.cfg.d_mlp == 16
    assert model.cfg.seed == 0
    assert ht.tiny_model("gpt2", seed=5).cfg.seed == 5


def test_llama_model_uses_grouped_query_attention_and_rotary():
    model = ht.tiny_model("llama")
    sd = model.state_dict()
    assert sd["blocks.0.attn._W_K"].shape == (2, 32, 8)  # n_key_value_heads, d_model, d_head
    assert model.blocks[0].attn.W_K.shape == (4, 32, 8)  # expanded to n_heads
    assert "blocks.0.mlp.W_gate" in sd
    assert not hasattr(model, "pos_embed")
    assert "blocks.0.attn.hook_rot_q" in model.hook_dict


def test_gpt2_model_structure():
    model = ht.tiny_model("gpt2")
    sd = model.state_dict()
    assert sd["pos_embed.W_pos"].shape == (128, 32)
    assert "blocks.0.mlp.W_gate" not in sd and "blocks.0.ln1.b" in sd


@pytest.mark.parametrize("kind", KINDS)
def test_hook_points(kind):
    model = ht.tiny_model(kind)
    for layer in range(3):
        for name in ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "attn.hook_z", "mlp.hook_post"):
            assert f"blocks.{layer}.{name}" in model.hook_dict
    assert "hook_embed" in model.hook_dict and "ln_final.hook_normalized" in model.hook_dict
    _, cache = model.run_with_cache("I love dogs", names_filter=lambda n: n.endswith("resid_post"))
    n_tokens = model.to_tokens("I love dogs").shape[1]
    assert cache["blocks.2.hook_resid_post"].shape == (1, n_tokens, 32)


def test_prepend_bos_behaviour():
    llama, gpt2 = ht.tiny_model("llama"), ht.tiny_model("gpt2")
    bos = llama.tokenizer.bos_token_id
    text = "I love dogs"
    lt, gt = llama.to_tokens(text), gpt2.to_tokens(text)
    assert lt[0, 0] != bos  # llama: default_prepend_bos=False (tokenizer's BOS is stripped)
    assert gt[0, 0] == bos and (gt[0, 1:] == lt[0]).all()  # gpt2: default_prepend_bos=True
    assert llama.to_tokens(text, prepend_bos=True)[0, 0] == bos
    assert (gpt2.to_tokens(text, prepend_bos=False) == lt).all()
    assert llama.to_string(lt[0]) == text
    assert gpt2.to_string(gt[0]) == "<|bos|>" + text
    assert llama.to_str_tokens(text)[:2] == ["I", " love"]


@pytest.mark.parametrize("kind", KINDS)
def test_models_have_private_tokenizers(kind):
    a, b = ht.tiny_model(kind), ht.tiny_model(kind)
    assert a.tokenizer is not b.tokenizer
    a.tokenizer.padding_side = "left"
    assert b.tokenizer.padding_side == "right"


@pytest.mark.parametrize("use_past_kv_cache", [True, False], ids=["kv_cache", "no_cache"])
@pytest.mark.parametrize("kind", KINDS)
def test_generate_string(kind, use_past_kv_cache):
    model = ht.tiny_model(kind)
    torch.manual_seed(0)
    out = model.generate("some text", max_new_tokens=5, use_past_kv_cache=use_past_kv_cache, verbose=False)
    assert isinstance(out, str) and out.startswith("some text")
    tokens = model.generate(
        "some text",
        max_new_tokens=5,
        use_past_kv_cache=use_past_kv_cache,
        stop_at_eos=False,
        verbose=False,
        return_type="tokens",
    )
    assert tokens.shape == (1, model.to_tokens("some text").shape[1] + 5)


@pytest.mark.parametrize("kind", KINDS)
def test_greedy_generation_cached_equals_uncached(kind):
    model = ht.tiny_model(kind)
    for prompt in ["some text", "The capital of France is"]:
        cached = _greedy(model, prompt, 12, use_past_kv_cache=True)
        uncached = _greedy(model, prompt, 12, use_past_kv_cache=False)
        assert torch.equal(cached, uncached)
        assert cached.shape[1] == model.to_tokens(prompt).shape[1] + 12
    # Greedy generation is reproducible across identically seeded models.
    assert torch.equal(_greedy(ht.tiny_model(kind), "some text", 8), _greedy(model, "some text", 8))


@pytest.mark.parametrize("kind", KINDS)
def test_batched_generation(kind):
    model = ht.tiny_model(kind)
    out = model.generate(
        ["I love", "The capital of France is"],
        max_new_tokens=4,
        do_sample=False,
        stop_at_eos=False,
        verbose=False,
    )
    assert isinstance(out, list) and len(out) == 2
    assert out[0].startswith("I love") and out[1].startswith("The capital of France is")


# --------------------------------------------------------------------------------------------------
# pytest plugin
# --------------------------------------------------------------------------------------------------


def test_fixture_tiny_tokenizer(tiny_tokenizer):
    assert isinstance(tiny_tokenizer, PreTrainedTokenizerFast)
    assert tiny_tokenizer.get_vocab() == ht.tiny_tokenizer().get_vocab()


def test_fixture_tiny_llama(tiny_llama):
    assert tiny_llama.cfg.positional_embedding_type == "rotary"
    assert tiny_llama.cfg.n_key_value_heads == 2
    assert not tiny_llama.training
    assert all(not hp.fwd_hooks for hp in tiny_llama.hook_dict.values())


def test_fixture_tiny_gpt2(tiny_gpt2):
    assert tiny_gpt2.cfg.normalization_type == "LN"
    assert tiny_gpt2.cfg.positional_embedding_type == "standard"


def test_fixture_tiny_model_is_parametrized(tiny_model, request):
    kind = request.node.callspec.id
    assert kind in KINDS
    expected = "rotary" if kind == "llama" else "standard"
    assert tiny_model.cfg.positional_embedding_type == expected
    assert tiny_model.to_tokens("hello").shape[0] == 1


def test_fixture_tiny_model_factory(tiny_model_factory):
    model = tiny_model_factory("gpt2", seed=3, n_layers=1)
    assert len(model.blocks) == 1 and model.cfg.seed == 3


def test_fixtures_are_fresh_per_test(tiny_llama, tiny_gpt2):
    assert tiny_llama is not tiny_gpt2
    assert tiny_llama.tokenizer is not tiny_gpt2.tokenizer


def test_entry_point_registered():
    try:
        dist = importlib.metadata.distribution("hooksteer")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("hooksteer is not installed (run `pip install -e .`); entry point cannot be checked")
    eps = [ep for ep in dist.entry_points if ep.group == "pytest11"]
    assert [(ep.name, ep.value) for ep in eps] == [("hooksteer", "hooksteer.pytest_plugin")]
    assert eps[0].load() is sys.modules["hooksteer.pytest_plugin"]


USER_TEST_FILE = """
import torch

def test_generate(tiny_llama):
    out = tiny_llama.generate("some text", max_new_tokens=5, stop_at_eos=False, verbose=False)
    assert out.startswith("some text")

def test_a_leaves_a_permanent_hook(tiny_llama):
    tiny_llama.add_hook("blocks.0.hook_resid_post", lambda act, hook: act * 0, is_permanent=True)
    tiny_llama.cfg.n_ctx = 7
    assert any(hp.fwd_hooks for hp in tiny_llama.hook_dict.values())

def test_b_sees_a_clean_model(tiny_llama):
    assert not any(hp.fwd_hooks for hp in tiny_llama.hook_dict.values())
    assert tiny_llama.cfg.n_ctx == 128

def test_tokenizer(tiny_tokenizer):
    assert tiny_tokenizer.decode(tiny_tokenizer("hello")["input_ids"], skip_special_tokens=True) == "hello"

def test_both_kinds(tiny_model):
    assert tiny_model(tiny_model.to_tokens("hi")).shape[-1] == tiny_model.cfg.d_vocab
"""


def test_plugin_in_a_user_test_suite(pytester):
    pytester.makepyfile(test_user=USER_TEST_FILE)
    autoload = _entry_point_autoloads()
    if autoload:
        # Prove the fixtures come from the entry point, not from anything passed on the command line.
        pytester.makeconftest(
            "def pytest_configure(config):\n    assert config.pluginmanager.hasplugin('hooksteer')\n"
        )
    args = [] if autoload else ["-p", "hooksteer.pytest_plugin"]
    result = pytester.runpytest(*args, "-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=6)
