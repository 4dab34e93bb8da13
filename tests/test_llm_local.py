"""The real SmolLM2 model: GGUF conversion, tool-capable chat template, batched cached generation, offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from mrrec_lib.config import Config
from mrrec_lib.llm import (
    SMOLLM2,
    ResponseCache,
    Sampling,
    TransformersChat,
    chat_template_supports_tools,
    count_tokens,
    ensure_smollm2,
    load_causal_lm,
)
from mrrec_lib.llm.models import ModelLoadError, tool_chat_template

TOOL = {
    "type": "function",
    "function": {
        "name": "memory_retrieval_tool",
        "description": "Search the user's memory.",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
    },
}
CONVS = [
    [{"role": "system", "content": "You are a shopping assistant."}, {"role": "user", "content": "Suggest a tea."}],
    [{"role": "user", "content": "Name one fruit that is yellow."}],
    [{"role": "user", "content": "What is a good gift for a runner who trains every morning before work?"}],
]


@pytest.fixture(scope="module")
def lm():
    """One thread: tests often share the 2 cores with other processes, and oversubscribed torch threads
    slow this tiny model ~10x, while one thread loses little."""
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    threads = torch.get_num_threads()
    yield load_causal_lm(SMOLLM2, Config(device="cpu", num_threads=1))
    torch.set_num_threads(threads)


def test_converted_folder_is_plain_safetensors():
    d = ensure_smollm2(Config())
    assert (d / "model.safetensors").exists()
    config = json.loads((d / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert ensure_smollm2(Config()) == d  # second call reuses the folder


def test_tokenizer_renders_tools_and_tool_calls(lm):
    model, tok = lm
    assert chat_template_supports_tools(tok)
    assert tok.padding_side == "left" and tok.pad_token_id is not None
    messages = [
        *CONVS[0],
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"type": "function", "function": {"name": "memory_retrieval_tool", "arguments": {"query": "tea"}}}
            ],
        },
        {"role": "tool", "name": "memory_retrieval_tool", "content": "[pref:tea:1] likes green tea"},
    ]
    text = tok.apply_chat_template(messages, tools=[TOOL], tokenize=False, add_generation_prompt=True)
    assert "<tools>" in text and '"name": "memory_retrieval_tool"' in text
    assert '<tool_call>\n{"name": "memory_retrieval_tool", "arguments": {"query": "tea"}}\n</tool_call>' in text
    assert "<tool_response>\n[pref:tea:1] likes green tea\n</tool_response>" in text
    assert text.endswith("<|im_start|>assistant\n")
    # SmolLM2's own template silently drops all of that, which is why it is replaced.
    plain = "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n'}}{% endfor %}"
    original, tok.chat_template = tok.chat_template, plain
    try:
        assert not chat_template_supports_tools(tok)
    finally:
        tok.chat_template = original


def test_batched_greedy_matches_one_by_one_and_counts_tokens(lm):
    model, tok = lm
    sampling = Sampling(max_new_tokens=8)
    batched = TransformersChat(model, tok, name="smollm2-test", batch_size=3)
    single = TransformersChat(model, tok, name="smollm2-test", batch_size=1)
    out = batched.chat(CONVS, sampling)
    assert out == single.chat(CONVS, sampling)  # left padding does not change what a prompt generates
    assert all(isinstance(r[0], str) and r[0] for r in out)
    prompts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in CONVS]
    assert batched.usage.prompt_tokens == sum(count_tokens(tok, p) for p in prompts)
    assert 0 < batched.usage.completion_tokens <= 3 * 8 and batched.usage.calls == 3


def test_sampling_is_seeded_and_stop_strings_cut(lm):
    model, tok = lm
    llm = TransformersChat(model, tok, name="smollm2-test", batch_size=4)
    s1 = Sampling(temperature=1.0, max_new_tokens=12, seed=1)
    a = llm.chat(CONVS[:2], s1, n=2)
    assert a == llm.chat(CONVS[:2], s1, n=2)  # no cache here: reproducible from the seed alone
    assert a != llm.chat(CONVS[:2], Sampling(temperature=1.0, max_new_tokens=12, seed=2), n=2)
    assert len(a) == 2 and all(len(r) == 2 for r in a)
    [[cut]] = llm.chat(CONVS[1:2], Sampling(max_new_tokens=30, stop=(" ",)))
    assert " " not in cut and cut


def test_cache_resumes_only_missing_conversations(lm, tmp_path):
    model, tok = lm
    cache = ResponseCache(tmp_path / "c.sqlite")
    first = TransformersChat(model, tok, name="smollm2-test", cache=cache)
    a = first.chat(CONVS[:2], Sampling(max_new_tokens=6))
    second = TransformersChat(model, tok, name="smollm2-test", cache=cache)
    b = second.chat(CONVS, Sampling(max_new_tokens=6))
    assert b[:2] == a
    assert second.usage.cache_hits == 2 and second.usage.calls == 1
    third = TransformersChat(model, tok, name="smollm2-test", cache=cache)
    third.chat(CONVS, Sampling(max_new_tokens=6))
    assert third.usage.calls == 0 and third.usage.cache_hits == 3 and third.usage.completion_tokens == 0


def test_training_load_and_configured_template(tmp_path):
    template = tmp_path / "custom.jinja"
    template.write_text("{# custom #}" + tool_chat_template())
    model, tok = load_causal_lm(SMOLLM2, Config(device="cpu", llm_chat_template=str(template)), for_training=True)
    assert model.training and model.dtype == torch.float32
    assert tok.padding_side == "right" and tok.chat_template.startswith("{# custom #}")


def test_unknown_model_fails_fast_offline():
    with pytest.raises(ModelLoadError, match="no-such-org/no-such-model"):
        load_causal_lm("no-such-org/no-such-model", Config(device="cpu"))


@pytest.mark.slow
def test_two_processes_convert_once(tmp_path):
    """A fresh conversion from the GGUF, raced by two processes: one converts, both get the same complete folder."""
    code = (
        "import sys; from mrrec_lib.config import Config; from mrrec_lib.llm import ensure_smollm2;"
        "print(ensure_smollm2(Config(cache_dir=sys.argv[1])))"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("MRREC_CACHE", None)
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, env=env) for _ in range(2)
    ]
    outs = [p.communicate(timeout=600)[0].decode().strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0] == outs[1] == str(tmp_path / "models" / SMOLLM2)
    assert [p.name for p in (tmp_path / "models").iterdir() if not p.name.startswith(".")] == [SMOLLM2]
    model, tok = load_causal_lm(outs[0], Config(device="cpu"))
    assert chat_template_supports_tools(tok)
