"""Train sparse autoencoders (sae-lens 6.x) on a hooksteer model's residual stream, on packaged corpora.

:func:`train_sae` runs sae-lens' ``LanguageModelSAETrainingRunner`` with ``override_model`` = our
``HookedTransformer`` (the embedded SmolLM2 or any other) and ``override_dataset`` = a pre-tokenised
``datasets.Dataset`` built from the packaged corpora (:mod:`analysis.corpora`). The SAE is saved in
sae-lens format (``cfg.json`` + ``sae_weights.safetensors``, loadable with ``SAE.load_from_disk``), and
its quality on held-out texts — explained variance, L0, dead fraction — is written to ``metrics.json``
beside it, with the settings in ``training_settings.json``.

Conventions (SmolLM2 has no BOS token):

* documents are concatenated with ``<|endoftext|>`` between them and cut into ``context_size`` windows;
* the separator tokens and the first position of every window are left out of training and evaluation:
  the first position is an attention sink whose residual norm is ~100× the others (≈23,000 vs ≈230
  at layer 20 of SmolLM2-135M) and would dominate the reconstruction loss.

Example:
    >>> import hooksteer as hs                                                # doctest: +SKIP
    >>> from analysis.sae_training import SAETrainingSettings, train_sae
    >>> model = hs.load_model()
    >>> result = train_sae(model, SAETrainingSettings(training_tokens=200_000), "runs/sae/l20")
    >>> result.metrics.explained_variance, result.metrics.l0, result.metrics.dead_fraction
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Int
from torch import Tensor, nn
from tqdm.auto import tqdm

from hooksteer.activations import activations_for_tokens, check_texts
from hooksteer.hooks import check_hook_name

__all__ = [
    "ARCHITECTURES",
    "METRICS_FILE",
    "SETTINGS_FILE",
    "SAEMetrics",
    "SAETrainingSettings",
    "TrainedSAE",
    "evaluate_sae",
    "runner_config",
    "separator_token_id",
    "token_chunks",
    "token_dataset",
    "train_sae",
]

Architecture = Literal["topk", "batchtopk", "standard", "jumprelu"]
ARCHITECTURES: tuple[str, ...] = ("topk", "batchtopk", "standard", "jumprelu")
METRICS_FILE = "metrics.json"
SETTINGS_FILE = "training_settings.json"


@dataclass
class SAETrainingSettings:
    """What to train, on what, for how long. Saved as ``training_settings.json`` beside the SAE.

    Attributes:
        hook_name: TransformerLens hook to read, e.g. ``"blocks.20.hook_resid_post"`` (HyperSteer's
            site is ~2/3 depth; layer 20 of SmolLM2's 30).
        d_sae: number of features.
        architecture: ``"topk"`` (default: fixed L0 = ``k``, few dead features in short runs),
            ``"batchtopk"``, ``"standard"`` (ReLU + L1) or ``"jumprelu"``.
        k: active features per token for the (batch-)TopK architectures.
        l1_coefficient: sparsity penalty for ``standard`` / ``jumprelu``.
        training_tokens: activations seen in training (tokens, after dropping first positions).
        context_size: tokens per window fed to the model.
        corpora: names from :data:`analysis.corpora.CORPORA`.
        heldout_texts: texts of the corpus kept out of training and used for :func:`evaluate_sae`.
        eval_tokens: held-out tokens used for the metrics.
        n_batches_in_buffer: windows held in sae-lens' shuffling buffer; ``None`` = enough for 8 training
            batches (sae-lens needs at least one).
        dead_feature_window: steps without firing after which a feature counts as dead in training
            (drives TopK's auxiliary loss); ``None`` = a tenth of the training steps.
        init_b_dec_to_mean: start the decoder bias at the mean activation of the first training windows
            (sae-lens starts it at zero; in short runs on the CPU that costs most of the budget).
    """

    hook_name: str = "blocks.20.hook_resid_post"
    d_sae: int = 2048
    architecture: Architecture = "topk"
    k: int = 32
    l1_coefficient: float = 5.0
    training_tokens: int = 200_000
    context_size: int = 128
    train_batch_size_tokens: int = 1024
    store_batch_size_prompts: int = 8
    n_batches_in_buffer: int | None = None
    lr: float = 4e-4
    lr_warm_up_steps: int = 0
    corpora: tuple[str, ...] = ("wiki", "bbc")
    heldout_texts: int = 100
    eval_tokens: int = 20_000
    dead_feature_window: int | None = None
    init_b_dec_to_mean: bool = True
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        self.corpora = tuple(self.corpora)
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {list(ARCHITECTURES)}, got {self.architecture!r}")
        for name in ("d_sae", "k", "training_tokens", "train_batch_size_tokens", "store_batch_size_prompts",
                     "eval_tokens"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.context_size < 2:
            raise ValueError(f"context_size must be >= 2 (position 0 is dropped), got {self.context_size}")
        if self.k > self.d_sae:
            raise ValueError(f"k ({self.k}) cannot exceed d_sae ({self.d_sae})")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if self.training_tokens < self.train_batch_size_tokens:
            raise ValueError(f"training_tokens ({self.training_tokens}) is less than one batch "
                             f"({self.train_batch_size_tokens})")

    @property
    def buffer_windows(self) -> int:
        if self.n_batches_in_buffer is not None:
            return self.n_batches_in_buffer
        return math.ceil(8 * self.train_batch_size_tokens / (self.context_size - 1))

    @property
    def steps(self) -> int:
        return self.training_tokens // self.train_batch_size_tokens

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["corpora"] = list(self.corpora)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SAETrainingSettings:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown SAE training setting(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)


@dataclass(frozen=True)
class SAEMetrics:
    """Reconstruction quality of an SAE on held-out activations.

    Attributes:
        explained_variance: ``1 - Σ‖x - x̂‖² / Σ‖x - mean(x)‖²`` over all evaluated tokens.
        l0: mean number of active features per token.
        dead_fraction: fraction of features that never fired on the evaluated tokens.
        mse: mean squared error per activation element.
        relative_error: ``Σ‖x - x̂‖² / Σ‖x‖²``.
        n_tokens: tokens evaluated.
    """

    explained_variance: float
    l0: float
    dead_fraction: float
    mse: float
    relative_error: float
    n_tokens: int
    d_sae: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainedSAE:
    """What :func:`train_sae` returns: the inference SAE, where it lies, and its held-out metrics."""

    sae: Any
    path: Path
    metrics: SAEMetrics
    settings: SAETrainingSettings
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------- data
def separator_token_id(model: Any) -> int:
    """Token put between concatenated documents: ``<|endoftext|>`` if the vocabulary has it, else EOS."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ValueError("the model has no tokenizer; SAE training needs one to tokenize the corpora")
    token_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    if isinstance(token_id, int) and token_id != getattr(tokenizer, "unk_token_id", None):
        return token_id
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has neither <|endoftext|> nor an EOS token to separate documents")
    return int(tokenizer.eos_token_id)


def token_chunks(
    model: Any, texts: Sequence[str], context_size: int, max_chunks: int | None = None
) -> Iterator[Int[Tensor, " context"]]:
    """Concatenate tokenised texts with a separator between them and yield ``context_size`` windows.

    Example:
        >>> from hooksteer.testing import tiny_model
        >>> chunks = list(token_chunks(tiny_model(), ["Hello there.", "Good night."] * 20, context_size=16))
        >>> {tuple(c.shape) for c in chunks}
        {(16,)}
    """
    texts = check_texts(texts)
    if context_size < 2:
        raise ValueError(f"context_size must be >= 2, got {context_size}")
    separator = separator_token_id(model)
    buffer: list[int] = []
    produced = 0
    for text in texts:
        buffer.extend(model.tokenizer(text, add_special_tokens=False)["input_ids"])
        buffer.append(separator)
        while len(buffer) >= context_size:
            yield torch.tensor(buffer[:context_size], dtype=torch.long)
            buffer = buffer[context_size:]
            produced += 1
            if max_chunks is not None and produced >= max_chunks:
                return


def token_dataset(model: Any, texts: Sequence[str], context_size: int, max_chunks: int | None = None) -> Any:
    """A ``datasets.Dataset`` with a ``tokens`` column of ``context_size``-long windows (sae-lens format)."""
    from datasets import Dataset

    rows = [chunk.tolist() for chunk in token_chunks(model, texts, context_size, max_chunks)]
    if not rows:
        raise ValueError(f"the texts hold fewer than context_size={context_size} tokens; give more text")
    return Dataset.from_dict({"tokens": rows})


# ---------------------------------------------------------------------------- sae-lens config
def _sae_config(settings: SAETrainingSettings, d_in: int) -> Any:
    import sae_lens

    common = dict(d_in=d_in, d_sae=settings.d_sae, device=settings.device, dtype="float32")
    if settings.architecture == "topk":
        return sae_lens.TopKTrainingSAEConfig(k=settings.k, **common)
    if settings.architecture == "batchtopk":
        return sae_lens.BatchTopKTrainingSAEConfig(k=settings.k, **common)
    if settings.architecture == "standard":
        return sae_lens.StandardTrainingSAEConfig(l1_coefficient=settings.l1_coefficient, **common)
    return sae_lens.JumpReLUTrainingSAEConfig(l0_coefficient=settings.l1_coefficient, **common)


def runner_config(settings: SAETrainingSettings, model: Any, output_path: str | Path | None) -> Any:
    """The sae-lens ``LanguageModelSAERunnerConfig`` for ``settings`` on ``model`` (no W&B, no checkpoints)."""
    import sae_lens

    steps = max(1, settings.steps)
    dead_window = settings.dead_feature_window or max(5, steps // 10)
    return sae_lens.LanguageModelSAERunnerConfig(
        sae=_sae_config(settings, int(model.cfg.d_model)),
        model_name=f"hooksteer:{model.cfg.model_name}",
        hook_name=settings.hook_name,
        dataset_path="hooksteer-corpora:" + "+".join(settings.corpora),
        is_dataset_tokenized=True,
        streaming=False,
        context_size=settings.context_size,
        seqpos_slice=(1, None),
        exclude_special_tokens=[separator_token_id(model)],
        prepend_bos=False,
        training_tokens=settings.training_tokens,
        train_batch_size_tokens=settings.train_batch_size_tokens,
        store_batch_size_prompts=settings.store_batch_size_prompts,
        n_batches_in_buffer=settings.buffer_windows,
        lr=settings.lr,
        lr_warm_up_steps=settings.lr_warm_up_steps,
        dead_feature_window=dead_window,
        feature_sampling_window=max(dead_window, steps),
        device=settings.device,
        seed=settings.seed,
        dtype="float32",
        logger=sae_lens.LoggingConfig(log_to_wandb=False),
        checkpoint_path=None,
        output_path=str(output_path) if output_path is not None else None,
        model_from_pretrained_kwargs={},
        verbose=False,
    )


# ---------------------------------------------------------------------------- training
def train_sae(
    model: nn.Module,
    settings: SAETrainingSettings | None = None,
    output_dir: str | Path = "runs/sae",
    *,
    texts: Sequence[str] | None = None,
    heldout: Sequence[str] | None = None,
    progress: bool = True,
) -> TrainedSAE:
    """Train an SAE with sae-lens on ``model``'s activations at ``settings.hook_name`` and save it.

    Args:
        model: a ``HookedTransformer`` with a tokenizer (sae-lens calls ``run_with_cache``).
        settings: what to train (defaults: :class:`SAETrainingSettings`).
        output_dir: folder for ``cfg.json``, ``sae_weights.safetensors``, ``metrics.json``, settings.
        texts: training texts; default: the packaged corpora ``settings.corpora`` minus the held-out part.
        heldout: texts for the metrics; default: ``settings.heldout_texts`` texts split off the corpora.
        progress: show sae-lens' progress bar.

    Returns:
        :class:`TrainedSAE` with the reloaded inference SAE (``SAE.load_from_disk(output_dir)``).
    """
    import sae_lens

    settings = settings or SAETrainingSettings()
    if not hasattr(model, "run_with_cache"):
        raise TypeError("sae-lens training needs a HookedTransformer-like model with run_with_cache; "
                        f"got {type(model).__name__}")
    check_hook_name(model, settings.hook_name)
    texts, heldout = _training_texts(settings, texts, heldout)
    per_window = settings.context_size - 1
    max_chunks = math.ceil(settings.training_tokens / per_window * 1.1) + settings.store_batch_size_prompts
    dataset = token_dataset(model, texts, settings.context_size, max_chunks=max_chunks)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(settings.seed)
    config = runner_config(settings, model, out)
    initial = _initial_sae(config, model, dataset, settings) if settings.init_b_dec_to_mean else None
    with _quiet_sae_lens(), torch.enable_grad():
        runner = sae_lens.LanguageModelSAETrainingRunner(config, override_dataset=dataset, override_model=model,
                                                         override_sae=initial)
        with _progress_bars(progress):
            runner.run()
    sae = sae_lens.SAE.load_from_disk(out, device=settings.device)
    metrics = evaluate_sae(model, sae, heldout, context_size=settings.context_size,
                           max_tokens=settings.eval_tokens, progress=progress)
    extra = {"train_windows": len(dataset), "train_texts": len(texts), "heldout_texts": len(heldout),
             "sae_lens_version": sae_lens.__version__}
    (out / SETTINGS_FILE).write_text(json.dumps({**settings.to_dict(), **extra}, indent=2))
    (out / METRICS_FILE).write_text(json.dumps(metrics.to_dict(), indent=2))
    return TrainedSAE(sae=sae, path=out, metrics=metrics, settings=settings, extra=extra)


@torch.no_grad()
def _initial_sae(config: Any, model: Any, dataset: Any, settings: SAETrainingSettings, windows: int = 16) -> Any:
    """sae-lens' own initial TrainingSAE, with ``b_dec`` set to the mean activation of a few windows."""
    from sae_lens import TrainingSAE, TrainingSAEConfig

    sae = TrainingSAE.from_dict(TrainingSAEConfig.from_dict(config.get_training_sae_cfg_dict()).to_dict())
    tokens = torch.tensor(dataset[: min(windows, len(dataset))]["tokens"], dtype=torch.long)
    acts = activations_for_tokens(model, tokens, settings.hook_name)[:, 1:].float().cpu()
    keep = tokens[:, 1:] != separator_token_id(model)
    sae.b_dec.data.copy_(acts[keep].mean(dim=0).to(sae.b_dec.dtype))
    return sae


def _training_texts(
    settings: SAETrainingSettings, texts: Sequence[str] | None, heldout: Sequence[str] | None
) -> tuple[list[str], list[str]]:
    from analysis.corpora import load_corpus, split_texts

    if texts is not None and heldout is not None:
        return check_texts(texts, "texts"), check_texts(heldout, "heldout")
    corpus = check_texts(texts, "texts") if texts is not None else load_corpus(settings.corpora, seed=settings.seed)
    if heldout is not None:
        return corpus, check_texts(heldout, "heldout")
    return split_texts(corpus, settings.heldout_texts, seed=settings.seed)


class _quiet_sae_lens:
    """Silence sae-lens' 'you passed an override' warnings and logger chatter for the run."""

    def __enter__(self) -> None:
        self._logger = logging.getLogger("sae_lens")
        self._level = self._logger.level
        self._logger.setLevel(logging.ERROR)
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.filterwarnings("ignore", message=r".*(fewer samples|pretokenized dataset|exhausted|To copy construct).*")

    def __exit__(self, *exc: object) -> None:
        self._warnings.__exit__(*exc)
        self._logger.setLevel(self._level)


@contextlib.contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    """Disable sae-lens' training progress bar for the run (restored afterwards)."""
    import sae_lens.training.sae_trainer as trainer_module

    original = trainer_module.tqdm
    if not enabled:
        trainer_module.tqdm = lambda *a, **k: original(*a, **{**k, "disable": True})  # type: ignore[assignment]
    try:
        yield
    finally:
        trainer_module.tqdm = original


# ---------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_sae(
    model: nn.Module,
    sae: Any,
    texts: Sequence[str],
    *,
    hook_name: str | None = None,
    context_size: int = 128,
    max_tokens: int = 20_000,
    batch_size: int = 8,
    progress: bool = False,
) -> SAEMetrics:
    """Explained variance, L0 and dead fraction of ``sae`` on ``model``'s activations over ``texts``.

    Texts are chunked as in training (separators and each window's first position dropped).

    Example:
        >>> m = evaluate_sae(model, sae, heldout_texts, max_tokens=5000)      # doctest: +SKIP
        >>> 0 <= m.dead_fraction <= 1
        True
    """
    from analysis.sae_compare import load_sae, sae_hook_name

    sae = load_sae(sae)
    hook_name = hook_name or sae_hook_name(sae)
    check_hook_name(model, hook_name)
    separator = separator_token_id(model)
    d_sae = int(sae.cfg.d_sae)
    fired = torch.zeros(d_sae, dtype=torch.bool)
    sse = total_sq = l0_sum = 0.0
    total = torch.zeros(int(sae.cfg.d_in), dtype=torch.float64)
    n_tokens = 0
    chunks = list(token_chunks(model, texts, context_size, max_chunks=math.ceil(max_tokens / (context_size - 1))))
    if not chunks:
        raise ValueError(f"the evaluation texts hold fewer than context_size={context_size} tokens")
    sums_of_x: list[Tensor] = []
    for start in tqdm(range(0, len(chunks), batch_size), desc="evaluate SAE", disable=not progress):
        tokens = torch.stack(chunks[start : start + batch_size])
        acts = activations_for_tokens(model, tokens, hook_name)[:, 1:].float().cpu()
        keep = tokens[:, 1:] != separator
        x = acts[keep].to(sae.W_dec.device, sae.W_dec.dtype)
        feats = sae.encode(x)
        recon = sae.decode(feats)
        fired |= (feats > 0).any(dim=0).cpu()
        sse += float((x - recon).pow(2).sum())
        total_sq += float(x.pow(2).sum())
        l0_sum += float((feats > 0).sum())
        total += x.double().sum(dim=0).cpu()
        sums_of_x.append(x.double().pow(2).sum(dim=0).cpu())
        n_tokens += int(x.shape[0])
    mean = total / n_tokens
    variance = float(torch.stack(sums_of_x).sum(dim=0).sum() - n_tokens * mean.pow(2).sum())
    return SAEMetrics(
        explained_variance=1.0 - sse / variance if variance > 0 else float("nan"),
        l0=l0_sum / n_tokens,
        dead_fraction=1.0 - float(fired.float().mean()),
        mse=sse / (n_tokens * int(sae.cfg.d_in)),
        relative_error=sse / total_sq if total_sq > 0 else float("nan"),
        n_tokens=n_tokens,
        d_sae=d_sae,
    )
