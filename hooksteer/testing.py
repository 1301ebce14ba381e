"""Tiny, offline, deterministic models and tokenizers for tests.

Real language models are far too slow (and too big to download) for unit tests. This module builds
*tiny* :class:`~transformer_lens.HookedTransformer` models - 3 layers, ``d_model=32`` - in a few
milliseconds, fully offline, together with a small but real byte-level BPE tokenizer so that the
string APIs (``model.to_tokens("some text")``, ``model.to_string``, ``model.generate("some text")``)
work exactly as they do with a pretrained model.

Nothing here touches the network or the Hugging Face hub: the tokenizer is trained on first use (~10 ms)
on a few paragraphs of English embedded in this module, saved with ``save_pretrained`` to a local
directory and reloaded with ``AutoTokenizer.from_pretrained`` from that directory.

Two model families are provided:

* ``"llama"`` - RMSNorm, rotary positions, gated SiLU MLP, grouped-query attention
  (4 query heads, 2 key/value heads), ``default_prepend_bos=False``.
* ``"gpt2"`` - LayerNorm, learned absolute positions, GELU MLP, ``default_prepend_bos=True``.

Example::

    from hooksteer.testing import tiny_model

    model = tiny_model("llama", seed=0)
    tokens = model.to_tokens("I love sunny days")
    out = model.generate("I love", max_new_tokens=5, do_sample=False, stop_at_eos=False, verbose=False)

The same fixtures are available to any pytest suite through the ``hooksteer`` pytest plugin
(:mod:`hooksteer.pytest_plugin`): ``tiny_tokenizer``, ``tiny_llama``, ``tiny_gpt2`` and the
parametrized ``tiny_model``.

Notes:
    * Building the weights seeds ``torch``/``random``/``numpy`` internally (TransformerLens does so
      for ``cfg.seed``); the factories here save and restore the global RNG state around that, so
      calling them never perturbs the random stream of the calling test.
    * Random weights give arbitrary, often repetitive, generations. The end-of-text token can be
      produced at any step, so pass ``stop_at_eos=False`` when a test needs an exact number of new
      tokens, and ``do_sample=False`` when it needs reproducible tokens. Generated text is decoded
      from arbitrary byte-level tokens and may contain U+FFFD; compare tokens, not strings.
    * Tensors this small gain nothing from intra-op threading, and on a busy machine torch's thread
      pool makes them ~10x slower; ``torch.set_num_threads(1)`` (or ``OMP_NUM_THREADS=1``) in a test
      suite's ``conftest.py`` keeps tiny-model tests fast. This module does not change it for you.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import functools
import os
import random
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # pragma: no cover - imports for type checkers only
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import PreTrainedTokenizerFast

__all__ = [
    "tiny_bridge",
    "BOS_TOKEN",
    "CHAT_TEMPLATE",
    "EOS_TOKEN",
    "IM_END_TOKEN",
    "IM_START_TOKEN",
    "MODEL_KINDS",
    "PAD_TOKEN",
    "TRAINING_TEXT",
    "UNK_TOKEN",
    "tiny_gpt2_config",
    "tiny_llama_config",
    "tiny_model",
    "tiny_tokenizer",
]

#: Model families understood by :func:`tiny_model`.
MODEL_KINDS: tuple[str, ...] = ("llama", "gpt2")

PAD_TOKEN = "<|pad|>"
BOS_TOKEN = "<|bos|>"
EOS_TOKEN = "<|endoftext|>"
UNK_TOKEN = "<|unk|>"
IM_START_TOKEN = "<|im_start|>"
IM_END_TOKEN = "<|im_end|>"
# Order fixes the ids: pad=0, bos=1, eos=2, unk=3, im_start=4, im_end=5.
_SPECIAL_TOKENS: tuple[str, ...] = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN, IM_START_TOKEN, IM_END_TOKEN)

#: Requested vocabulary size (byte alphabet + special tokens + learned merges).
_VOCAB_SIZE = 512

#: Minimal ChatML template: ``<|im_start|>role\ncontent<|im_end|>\n`` per message.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

#: The built-in English text the tiny tokenizer is trained on. Changing it changes the vocabulary.
TRAINING_TEXT = """\
The quick brown fox jumps over the lazy dog. I love sunny days, and I hate cold, rainy weather.
The capital of France is Paris, the capital of Italy is Rome, and the capital of Japan is Tokyo.
My favourite colour is blue. My friend likes green apples, red cherries and yellow bananas.

Once upon a time there was a little girl who lived in a small village near a dark forest. Every
morning she walked to the river with her dog to watch the birds. She was happy, kind and very
curious. One day she found an old wooden box under a tree. "What is inside?" she asked. Her
mother smiled and said that some things are better left closed, but the girl opened it anyway.
Inside there was a map, a golden key and a letter written by her grandfather many years ago.

I think that the weather today is wonderful. You think that the movie was terrible. We believe
that people should be honest, and they believe that good stories make the world a better place.
He said that he loved the book; she said that she hated the ending. It is not good, it is bad.
This is great! That was awful. The food was delicious and the service was excellent, although
the room was a little too noisy. Overall I would give it four stars out of five.

Science tells us that water boils at 100 degrees Celsius and freezes at 0 degrees. The Earth
goes around the Sun once every 365 days, and the Moon goes around the Earth about once a month.
Numbers such as 1, 2, 3, 7, 10, 42, 99, 128 and 2024 appear in text too; so do questions, like
"How are you?" or "Where is the station?", and answers: "I am fine, thank you." Some sentences
use (brackets), [square brackets], dashes - and colons: like this one. Others end with ... dots!

The assistant is helpful, harmless and honest. The user asks a question and the assistant gives
a short, clear and friendly answer. When the user says hello, the assistant says hello back.
User: What is the meaning of life? Assistant: Many people would say that it is love, friendship,
learning and being kind to each other. User: Please write a poem about the sea. Assistant: The
sea is wide, the sea is deep, it sings the sailors all to sleep.

Happy, sad, angry, calm, excited, bored, afraid, brave, polite, rude, positive and negative are
words about feelings. Good morning, good evening and good night are common greetings. In the
kitchen we cook pasta, rice, soup and bread; in the garden we grow flowers, trees and vegetables.
Dogs, cats, horses, cows, sheep, birds and fish are animals. Monday, Tuesday, Wednesday, Thursday,
Friday, Saturday and Sunday are the days of the week. January, March, June, October and December
are months of the year. The train leaves at nine o'clock, so we must hurry to the station.
"""


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _preserved_global_rng() -> Iterator[None]:
    """Save and restore the Python, NumPy and torch (CPU and, if initialised, CUDA) RNG states.

    ``HookedTransformerConfig(seed=...)`` calls ``torch.manual_seed``/``random.seed``/``np.random.seed``
    and ``HookedTransformer.init_weights`` calls ``torch.manual_seed`` again; without this guard,
    building a tiny model would silently reset the random stream of the calling test.
    """
    import numpy as np
    import torch

    py_state = random.getstate()
    np_state = np.random.get_state()
    torch_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


@functools.cache
def _default_tokenizer_dir(pid: int) -> str:
    """A temporary directory private to process ``pid``; removed when that process exits."""
    path = tempfile.mkdtemp(prefix=f"hooksteer-tiny-tokenizer-{pid}-")

    def _cleanup() -> None:
        # Forked children inherit atexit handlers; only the creating process removes the directory.
        if os.getpid() == pid:
            shutil.rmtree(path, ignore_errors=True)

    atexit.register(_cleanup)
    return path


def _train_backend_tokenizer() -> Any:
    """Train the byte-level BPE ``tokenizers.Tokenizer`` on :data:`TRAINING_TEXT` (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    # Byte-level: every byte is in the base alphabet, so any unicode string encodes without <unk>.
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_VOCAB_SIZE,
        min_frequency=2,
        special_tokens=list(_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = [line for line in TRAINING_TEXT.splitlines() if line.strip()]
    backend.train_from_iterator(lines, trainer=trainer)
    return backend


@functools.cache
def _build_tokenizer(directory: str) -> PreTrainedTokenizerFast:
    """Build, save to ``directory`` and reload the tiny tokenizer. Cached per directory."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    hf_tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_train_backend_tokenizer(),
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        extra_special_tokens=[IM_START_TOKEN, IM_END_TOKEN],
        add_bos_token=True,
        padding_side="right",
        clean_up_tokenization_spaces=False,
        chat_template=CHAT_TEMPLATE,
    )
    os.makedirs(directory, exist_ok=True)
    hf_tokenizer.save_pretrained(directory)
    # ``add_bos_token`` lives in the saved post-processor but is not written to tokenizer_config.json;
    # passing it explicitly records it in ``init_kwargs`` so TransformerLens' ``set_tokenizer`` keeps
    # this object instead of re-loading the tokenizer from disk for every model.
    reloaded = AutoTokenizer.from_pretrained(directory, add_bos_token=True)
    if not isinstance(reloaded, PreTrainedTokenizerFast):  # pragma: no cover - defensive
        raise TypeError(f"expected a fast tokenizer after reload, got {type(reloaded).__name__}")
    return reloaded


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


def tiny_tokenizer(directory: str | os.PathLike[str] | None = None) -> PreTrainedTokenizerFast:
    """Return the tiny offline byte-level BPE tokenizer.

    The tokenizer is trained (deterministically, in ~10 ms) on :data:`TRAINING_TEXT`, saved with
    ``save_pretrained`` to ``directory`` and reloaded from there with ``AutoTokenizer.from_pretrained``.
    With ``directory=None`` a temporary directory private to the current process is used (deleted
    at exit). The built tokenizer is cached per directory and process; every call returns an
    independent *copy*, so callers may mutate it (``padding_side``, added tokens, ...) freely.

    Properties:

    * vocabulary of ~500 tokens, identical on every call and in every process;
    * byte-level, so any text (unseen words, accents, emoji) encodes without ``<unk>`` and
      ``decode(encode(text))`` round-trips;
    * special tokens ``<|pad|>`` (id 0), ``<|bos|>`` (1), ``<|endoftext|>`` (2, eos), ``<|unk|>`` (3),
      ``<|im_start|>`` (4) and ``<|im_end|>`` (5);
    * like Llama, ``tokenizer(text)`` prepends ``<|bos|>`` (``add_bos_token=True``);
    * a ChatML chat template: ``<|im_start|>role\\ncontent<|im_end|>\\n``.

    Example::

        >>> tok = tiny_tokenizer()
        >>> ids = tok("Hello zebra!")["input_ids"]
        >>> ids[0] == tok.bos_token_id
        True
        >>> tok.decode(ids, skip_special_tokens=True)
        'Hello zebra!'
        >>> tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
        '<|im_start|>user\\nhi<|im_end|>\\n'
    """
    if directory is None:
        key = _default_tokenizer_dir(os.getpid())
    else:
        key = str(Path(directory).expanduser().resolve())
    return copy.deepcopy(_build_tokenizer(key))


def _base_config(defaults: dict[str, Any], overrides: dict[str, Any]) -> HookedTransformerConfig:
    from transformer_lens import HookedTransformerConfig

    params = {**defaults, **overrides}
    if params.get("d_vocab", -1) == -1:
        params["d_vocab"] = len(_build_tokenizer(_default_tokenizer_dir(os.getpid())))
    with _preserved_global_rng():  # __post_init__ seeds the global RNGs when cfg.seed is set
        return HookedTransformerConfig(**params)


def tiny_llama_config(**overrides: Any) -> HookedTransformerConfig:
    """Config of a tiny Llama-like model (RMSNorm, rotary, gated SiLU MLP, grouped-query attention).

    Defaults: ``n_layers=3, d_model=32, n_heads=4, n_key_value_heads=2, d_head=8, d_mlp=64,
    n_ctx=128, d_vocab=len(tiny_tokenizer()), default_prepend_bos=False, seed=0, device="cpu",
    dtype=torch.float32``. Any :class:`~transformer_lens.HookedTransformerConfig` field can be
    overridden by keyword.

    Example::

        >>> cfg = tiny_llama_config(n_layers=2)
        >>> cfg.n_layers, cfg.n_key_value_heads, cfg.positional_embedding_type
        (2, 2, 'rotary')
    """
    import torch

    defaults: dict[str, Any] = dict(
        model_name="hooksteer-tiny-llama",
        original_architecture="LlamaForCausalLM",
        n_layers=3,
        d_model=32,
        d_head=8,
        n_heads=4,
        n_key_value_heads=2,
        d_mlp=64,
        n_ctx=128,
        act_fn="silu",
        gated_mlp=True,
        normalization_type="RMS",
        final_rms=True,
        positional_embedding_type="rotary",
        rotary_base=10000,
        eps=1e-5,
        default_prepend_bos=False,
        seed=0,
        device="cpu",
        dtype=torch.float32,
    )
    return _base_config(defaults, overrides)


def tiny_gpt2_config(**overrides: Any) -> HookedTransformerConfig:
    """Config of a tiny GPT-2-like model (LayerNorm, learned absolute positions, GELU MLP).

    Defaults: ``n_layers=3, d_model=32, n_heads=4, d_head=8, d_mlp=128, n_ctx=128,
    d_vocab=len(tiny_tokenizer()), act_fn="gelu_new", default_prepend_bos=True, seed=0,
    device="cpu", dtype=torch.float32``. Any :class:`~transformer_lens.HookedTransformerConfig`
    field can be overridden by keyword.

    Example::

        >>> cfg = tiny_gpt2_config(d_mlp=64)
        >>> cfg.normalization_type, cfg.positional_embedding_type, cfg.d_mlp
        ('LN', 'standard', 64)
    """
    import torch

    defaults: dict[str, Any] = dict(
        model_name="hooksteer-tiny-gpt2",
        original_architecture="GPT2LMHeadModel",
        n_layers=3,
        d_model=32,
        d_head=8,
        n_heads=4,
        d_mlp=128,
        n_ctx=128,
        act_fn="gelu_new",
        normalization_type="LN",
        positional_embedding_type="standard",
        eps=1e-5,
        default_prepend_bos=True,
        seed=0,
        device="cpu",
        dtype=torch.float32,
    )
    return _base_config(defaults, overrides)


_CONFIG_FACTORIES = {"llama": tiny_llama_config, "gpt2": tiny_gpt2_config}


def tiny_model(
    kind: Literal["llama", "gpt2"] = "llama", *, seed: int = 0, **config_overrides: Any
) -> HookedTransformer:
    """Build a tiny randomly initialised :class:`~transformer_lens.HookedTransformer` (a few ms).

    Weights are drawn with TransformerLens' own initialisation (``init_mode="gpt2"``: normal with
    std ``0.8/sqrt(d_model)`` for every weight matrix, unit norm weights, zero biases) from ``seed``:
    the same ``kind``/``seed``/overrides give bit-identical parameters, different seeds give
    different ones. The global RNG state of the caller is left untouched. The model is in eval mode,
    every parameter has ``requires_grad=False``, and it owns a private copy of :func:`tiny_tokenizer`.

    Args:
        kind: ``"llama"`` (see :func:`tiny_llama_config`) or ``"gpt2"`` (see :func:`tiny_gpt2_config`).
        seed: weight-initialisation seed (stored as ``model.cfg.seed``).
        **config_overrides: forwarded to the config factory, e.g. ``n_layers=2``.

    Raises:
        ValueError: if ``kind`` is not one of :data:`MODEL_KINDS`.

    Example::

        >>> model = tiny_model("gpt2", seed=1, n_layers=2)
        >>> logits = model("The capital of France is")
        >>> logits.shape[-1] == model.cfg.d_vocab
        True
    """
    try:
        factory = _CONFIG_FACTORIES[kind]
    except (KeyError, TypeError):
        raise ValueError(f"unknown tiny model kind {kind!r}; valid kinds are {list(MODEL_KINDS)}") from None

    from transformer_lens import HookedTransformer

    cfg = factory(seed=seed, **config_overrides)
    tokenizer = tiny_tokenizer()
    with _preserved_global_rng(), warnings.catch_warnings():
        # TransformerLens 3.x deprecates HookedTransformer in favour of TransformerBridge.
        warnings.filterwarnings("ignore", message=r".*HookedTransformer is deprecated.*")
        model = HookedTransformer(cfg, tokenizer=tokenizer)
    model.eval()
    model.requires_grad_(False)
    return model


def tiny_bridge(*, seed: int = 0, directory: str | os.PathLike[str] | None = None) -> Any:
    """Build a tiny Llama-like TransformerLens ``TransformerBridge`` (random weights, offline).

    A Hugging Face ``LlamaForCausalLM`` with the same shape as :func:`tiny_llama_config` is created
    from ``seed``, saved with :func:`tiny_tokenizer` to ``directory`` (default: a fresh temp dir)
    and booted with ``TransformerBridge.boot_transformers`` from there, exactly as
    :func:`hooksteer.models.load_bridge` boots the embedded model.

    Example::

        >>> bridge = tiny_bridge(seed=0)
        >>> "blocks.1.hook_resid_post" in bridge.hook_dict
        True
    """
    import torch
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer()
    cfg = tiny_llama_config()
    hf_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_mlp,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_key_value_heads,
        max_position_embeddings=cfg.n_ctx,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    folder = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="hooksteer-tiny-bridge-"))
    if directory is None:
        atexit.register(shutil.rmtree, folder, True)
    with _preserved_global_rng(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(seed)
        LlamaForCausalLM(hf_config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        bridge = TransformerBridge.boot_transformers(str(folder), tokenizer=tokenizer, device="cpu")
    bridge.eval()
    bridge.requires_grad_(False)
    return bridge
