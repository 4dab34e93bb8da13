"""The multi-turn rollout: generate, call the memory tool, feed the result back, repeat, answer.

Two backends drive the same turn logic:
- a `TokenPolicy` (local transformers): works on token ids so that prompt + completion ids are exactly what
  the model saw, with a mask that is 1 on the model's own tokens; all active rollouts of a batch generate together;
- a `ChatLLM` (e.g. the OpenAI-compatible backend): works on text; assistant turns are sent with structured
  `tool_calls` and the backend returns tool calls as Qwen2.5-style `<tool_call>` text (see `ChatLLM.chat`).

Budget: `max_new_tokens_total` bounds the whole completion (model turns + tool results), like TRL's
`max_completion_length` and the paper's max response length; `max_new_tokens_per_turn` bounds one turn;
`max_tool_calls` bounds the calls (malformed ones included). A call over the limit gets one error message asking
for the answer; a second one ends the rollout.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from mrrec_lib.agent.parse import TOOL_CLOSE, TOOL_OPEN, parse_answer, parse_tool_calls, strip_tool_calls, tool_query
from mrrec_lib.agent.policy import END_OF_TURN, TokenPolicy, end_of_turn_id, stop_token_ids, trim_at_stop
from mrrec_lib.agent.prompt import TOOL_NAME, Prompt, structured_messages
from mrrec_lib.agent.trajectory import ToolCallRecord, Trajectory
from mrrec_lib.llm.base import ChatLLM, Sampling

CHARS_PER_TOKEN = 4  # text backends return no ids; budgets are estimated from characters


@dataclass
class ToolResult:
    """What a memory tool returns: the text shown to the model and the ids of the entries in it."""

    text: str
    entry_ids: list[str] = field(default_factory=list)


ToolFn = Callable[[str], "str | ToolResult"]

_CALL_HINT = (
    f'Call the tool as <tool_call>{{"name": "{TOOL_NAME}", "arguments": {{"query": "<aspect>"}}}}</tool_call> '
    "or give your final answer in \\boxed{...}."
)


@dataclass
class _State:
    prompt: Prompt
    tool: ToolFn | None
    qid: str
    sample: int
    messages: list[dict]
    prompt_ids: list[int] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    calls: list[ToolCallRecord] = field(default_factory=list)
    attempts: int = 0
    warned: bool = False
    new_tokens: int = 0
    used: int = 0  # completion length so far (tokens, or estimated tokens for text backends)
    last_text: str = ""
    done: bool = False
    finish: str = "answer"


def _call_tool(state: _State, text: str, max_calls: int) -> str | None:
    """Handle the tool call ending `text`: run it or explain the error; None means the rollout ends here."""
    calls = parse_tool_calls(text)
    call = calls[-1] if calls else {"name": None, "error": "empty tool call", "arguments": {}}
    state.attempts += 1
    if state.attempts > max_calls:
        state.calls.append(ToolCallRecord(query=tool_query(call), error="over the tool-call limit"))
        if state.warned:
            state.finish = "max_tool_calls"
            return None
        state.warned = True
        return f"Error: the limit of {max_calls} tool calls is reached. Give your final answer in \\boxed{{...}} now."
    query = tool_query(call) if call.get("error") is None else None
    if call.get("error") is not None:
        error = call["error"]
    elif state.tool is None:
        error = "no tools are available in this conversation"
    elif call["name"] != TOOL_NAME:
        error = f"unknown tool {call['name']!r}"
    elif query is None:
        error = 'missing the "query" argument'
    else:
        error = None
    if error is None:
        try:
            result = state.tool(query)
        except Exception as e:  # noqa: BLE001 - a failing tool is reported to the model, as TRL does
            error = f"tool failed: {type(e).__name__}: {e}"
        else:
            res = result if isinstance(result, ToolResult) else ToolResult(text=str(result))
            state.calls.append(ToolCallRecord(query=query, entry_ids=list(res.entry_ids)))
            return res.text
    state.calls.append(ToolCallRecord(query=query, error=error))
    return f"Error: {error}. {_CALL_HINT}"


def _tool_suffix_text(tokenizer: Any, messages: list[dict], tool_msg: dict, tools: list[dict] | None) -> str:
    """Template text between the end-of-turn token closing the last assistant turn and the next assistant turn."""
    prefix = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=False)
    full = tokenizer.apply_chat_template(messages + [tool_msg], tools=tools, tokenize=False, add_generation_prompt=True)
    cut = prefix.rfind(END_OF_TURN)
    if cut < 0 or not full.startswith(prefix):
        raise ValueError("chat template does not render tool results as a continuation of the conversation")
    return full[cut + len(END_OF_TURN) :]


def _finish(state: _State, ids_known: bool) -> Trajectory:
    answer = parse_answer(state.last_text)
    n_ok = sum(1 for c in state.calls if c.error is None)
    return Trajectory(
        qid=state.qid,
        prompt_kind=state.prompt.kind,
        messages=state.messages,
        tools=state.prompt.tools,
        sample=state.sample,
        prompt_ids=state.prompt_ids if ids_known else [],
        completion_ids=state.ids if ids_known else [],
        completion_mask=state.mask if ids_known else [],
        tool_calls=state.calls,
        n_tool_calls=n_ok,
        n_invalid_calls=len(state.calls) - n_ok,
        parse_ok=answer.ok and state.finish != "error",
        parse_error=state.last_text if state.finish == "error" else answer.error,
        profile=answer.profile,
        memory_ids=answer.memory_ids,
        final_text=strip_tool_calls(state.last_text),
        n_new_tokens=state.new_tokens,
        n_completion_tokens=state.used,
        finish_reason=state.finish,
    )


def _turn_budget(state: _State, cfg: Any) -> int:
    return max(0, min(cfg.max_new_tokens_per_turn, cfg.max_new_tokens_total - state.used))


def _after_turn(state: _State, text: str, stop: str | None, cfg: Any) -> str | None:
    """Common turn logic; returns the tool message text to append, or None when the rollout is over."""
    state.messages.append({"role": "assistant", "content": text})
    state.last_text = text
    wants_tool = stop == "tool_call" or (stop == "eos" and TOOL_OPEN in text and parse_answer(text).ok is False)
    if not wants_tool:
        state.done = True
        state.finish = "answer" if stop is not None else "length"
        return None
    result = _call_tool(state, text, cfg.max_tool_calls)
    if result is None:
        state.done = True
    return result


def _end_token_turn(s: _State, kept: list[int], stop: str | None, tok: Any, eot: int, cfg: Any) -> list[int] | None:
    """Book a model turn that ended with `stop`, run its tool call, and append the tool result.

    Returns the tokens the model must read after `kept` (the <|im_end|> closing a tool-call turn, then the
    tool-result suffix), or None when the rollout is over. Both token backends share it, so their
    trajectories stay identical.
    """
    extra: list[int] = []
    if stop == "tool_call" and s.used + len(kept) + 1 > cfg.max_new_tokens_total:
        stop = None  # no room to close the turn: the call is cut off by the budget
    elif stop == "tool_call":
        extra = [eot]  # the template closes a tool-call turn with <|im_end|>; the model learns it too
    s.ids += kept + extra
    s.mask += [1] * (len(kept) + len(extra))
    s.new_tokens += len(kept) + len(extra)
    s.used += len(kept) + len(extra)
    body = kept[:-1] if stop == "eos" else kept
    result = _after_turn(s, tok.decode(body, skip_special_tokens=False), stop, cfg)
    if result is None:
        return None
    tool_msg = {"role": "tool", "name": TOOL_NAME, "content": result}
    suffix = tok(_tool_suffix_text(tok, s.messages, tool_msg, s.prompt.tools), add_special_tokens=False)["input_ids"]
    if s.used + len(suffix) >= cfg.max_new_tokens_total:
        s.done, s.finish = True, "length"
        return None
    s.messages.append(tool_msg)
    s.ids += suffix
    s.mask += [0] * len(suffix)
    s.used += len(suffix)
    return extra + suffix


def _run_token_batch(policy: TokenPolicy, states: list[_State], cfg: Any, seed: int) -> None:
    tok = policy.tokenizer
    stops, eot = stop_token_ids(tok), end_of_turn_id(tok)
    for s in states:
        text = tok.apply_chat_template(s.messages, tools=s.prompt.tools, tokenize=False, add_generation_prompt=True)
        s.prompt_ids = tok(text, add_special_tokens=False)["input_ids"]
    turn = 0
    while active := [s for s in states if not s.done]:
        for s in active:
            if _turn_budget(s, cfg) == 0:
                s.done, s.finish = True, "length"
        active = [s for s in active if not s.done]
        if not active:
            break
        outs = policy.generate_ids(
            [s.prompt_ids + s.ids for s in active],
            max(_turn_budget(s, cfg) for s in active),
            cfg.rollout_temperature,
            cfg.rollout_top_p,
            seed + 1009 * turn,
        )
        turn += 1
        for s, out in zip(active, outs, strict=True):
            kept, stop = trim_at_stop(out[: _turn_budget(s, cfg)], tok, stops)
            _end_token_turn(s, kept, stop, tok, eot, cfg)


def _run_token_engine(policy: Any, states: list[_State], cfg: Any, seed: int) -> None:
    """The same turns as `_run_token_batch`, decoded by the continuous-batching KV engine (`agent.engine`)."""
    import torch

    from mrrec_lib.agent.engine import Decoding, EngineRow

    tok = policy.tokenizer
    eot = end_of_turn_id(tok)
    rows = []
    for k, s in enumerate(states):
        text = tok.apply_chat_template(s.messages, tools=s.prompt.tools, tokenize=False, add_generation_prompt=True)
        s.prompt_ids = tok(text, add_special_tokens=False)["input_ids"]
        budget = _turn_budget(s, cfg)
        if budget == 0:
            s.done, s.finish = True, "length"
            continue
        gen = torch.Generator().manual_seed(seed * 1_000_003 + k) if cfg.rollout_temperature > 0 else None
        rows.append(EngineRow(key=s, context=list(s.prompt_ids), budget=budget, generator=gen))

    def on_turn_end(row: EngineRow, kept: list[int], stop: str | None) -> list[int] | None:
        s: _State = row.key
        fed = _end_token_turn(s, kept, stop, tok, eot, cfg)
        if fed is None:
            return None
        row.budget = _turn_budget(s, cfg)
        if row.budget == 0:
            s.done, s.finish = True, "length"
            return None
        return fed

    decoding = Decoding(cfg.rollout_temperature, cfg.rollout_top_p, getattr(policy, "no_repeat_ngram", 0))
    policy.engine(cfg.rollout_batch_size).run(rows, decoding, on_turn_end)


def _run_text_batch(llm: ChatLLM, states: list[_State], cfg: Any, seed: int) -> None:
    turn = 0
    while active := [s for s in states if not s.done]:
        for s in active:
            if _turn_budget(s, cfg) == 0:
                s.done, s.finish = True, "length"
        active = [s for s in active if not s.done]
        if not active:
            break
        sampling = Sampling(
            temperature=cfg.rollout_temperature,
            top_p=cfg.rollout_top_p,
            max_new_tokens=max(_turn_budget(s, cfg) for s in active),
            seed=seed + 1009 * turn,
            stop=(TOOL_CLOSE,),
        )
        outs: dict[int, list[str]] = {}
        for kind in sorted({s.prompt.kind for s in active}):  # one request per tool list
            group = [i for i, s in enumerate(active) if s.prompt.kind == kind]
            convs = [structured_messages(active[i].messages) for i in group]
            for i, out in zip(group, llm.chat(convs, sampling, n=1, tools=active[group[0]].prompt.tools), strict=True):
                outs[i] = out
        turn += 1
        for i, s in enumerate(active):
            text = (outs[i][0] if outs[i] else "") or ""
            text = text[: _turn_budget(s, cfg) * CHARS_PER_TOKEN]
            stop: str | None = "eos"
            if TOOL_CLOSE in text:
                text = text[: text.index(TOOL_CLOSE) + len(TOOL_CLOSE)]
                stop = "tool_call"
            elif TOOL_OPEN in text and not parse_answer(text).ok:
                text += TOOL_CLOSE  # HTTP backends drop the stop string from the output
                stop = "tool_call"
            est = -(-len(text) // CHARS_PER_TOKEN)
            s.new_tokens += est
            s.used += est
            result = _after_turn(s, text, stop, cfg)
            if result is not None:
                s.messages.append({"role": "tool", "name": TOOL_NAME, "content": result})
                s.used += -(-len(result) // CHARS_PER_TOKEN)


def run_rollouts(
    policy: TokenPolicy | ChatLLM,
    prompts: Sequence[Prompt],
    tools: Sequence[ToolFn | None],
    cfg: Any,
    *,
    qids: Sequence[str] | None = None,
    samples: Sequence[int] | None = None,
    seed: int | None = None,
    progress: bool = True,
) -> list[Trajectory]:
    """Roll out every prompt (with its own tool, None for tool-less prompts), `cfg.rollout_batch_size` at a time.

    A `policy` with `generate_ids` runs at token level: with `cfg.rollout_engine == "kv"` (and a policy that has
    an `engine`) every prompt goes to the continuous-batching KV engine, else in turn-synchronous batches; anything
    else is treated as a `ChatLLM`.
    Sampling is seeded per batch and turn from `seed` (default `cfg.seed`). A row whose decoding raises is
    finished as an error (`_run_isolated`) and the others go on.
    """
    if len(tools) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(tools)} tools")
    qids = list(qids) if qids is not None else [str(i) for i in range(len(prompts))]
    samples = list(samples) if samples is not None else [0] * len(prompts)
    seed = cfg.seed if seed is None else seed
    token_level = hasattr(policy, "generate_ids")
    engine = token_level and cfg.rollout_engine == "kv" and hasattr(policy, "engine")
    bs = max(1, len(prompts) if engine else cfg.rollout_batch_size)
    trajs: list[Trajectory] = []
    failures: list[Exception] = []
    bar = tqdm(total=len(prompts), desc="rollouts", disable=not progress)
    for start in range(0, len(prompts), bs):
        part = slice(start, start + bs)
        rows = list(zip(prompts[part], tools[part], qids[part], samples[part], strict=True))
        states = _run_isolated(policy, rows, cfg, seed + 7919 * (start // bs), engine, token_level, failures)
        trajs += [_finish(s, token_level) for s in states]
        bar.update(len(states))
    bar.close()
    if failures and len(failures) == len(prompts):
        raise RuntimeError(f"every one of {len(prompts)} rollouts failed") from failures[0]
    return trajs


def _new_states(rows: Sequence[tuple[Prompt, ToolFn | None, str, int]]) -> list[_State]:
    return [_State(prompt=p, tool=t, qid=q, sample=k, messages=[dict(m) for m in p.messages]) for p, t, q, k in rows]


def _run_isolated(
    policy: Any,
    rows: Sequence[tuple[Prompt, ToolFn | None, str, int]],
    cfg: Any,
    seed: int,
    engine: bool,
    token_level: bool,
    failures: list[Exception],
) -> list[_State]:
    """Run one batch; if it raises, rerun its rows one by one and finish those that fail again as errors.

    Why: an engine or server error on one row (an HTTP 500, a row whose context overflows the model) must not
    stop an evaluation of hundreds of requests or a GRPO step. A failed row ends with `finish_reason` "error"
    and an unparseable answer, so it is scored and counted as malformed; the error is printed. If every row
    of a call fails, `run_rollouts` raises: that is a bug or a dead backend, not one bad row.
    """
    run = _run_token_engine if engine else _run_token_batch if token_level else _run_text_batch
    states = _new_states(rows)
    try:
        run(policy, states, cfg, seed)
        return states
    except Exception as e:  # noqa: BLE001 - retried row by row below; errors are reported, not hidden
        if len(rows) == 1:
            return [_failed(policy, _new_states(rows)[0], e, failures)]
    out = []
    for row in rows:
        (state,) = _new_states([row])
        try:
            run(policy, [state], cfg, seed)
        except Exception as e:  # noqa: BLE001 - this row alone fails: it is finished as malformed
            state = _failed(policy, _new_states([row])[0], e, failures)
        out.append(state)
    return out


def _failed(policy: Any, state: _State, error: Exception, failures: list[Exception]) -> _State:
    """A row that failed alone: no answer, and for token policies one end-of-turn token outside the loss mask,
    so GRPO scores it 0 without training on it."""
    failures.append(error)
    tqdm.write(f"rollout {state.qid} (sample {state.sample}) failed: {type(error).__name__}: {error}")
    state.done, state.finish = True, "error"
    state.last_text = f"rollout failed: {type(error).__name__}: {error}"
    tok = getattr(policy, "tokenizer", None)
    if hasattr(policy, "generate_ids") and tok is not None:
        try:
            text = tok.apply_chat_template(
                state.messages, tools=state.prompt.tools, tokenize=False, add_generation_prompt=True
            )
            state.prompt_ids = tok(text, add_special_tokens=False)["input_ids"]
            state.ids, state.mask = [end_of_turn_id(tok)], [0]
        except Exception:  # noqa: BLE001 - the row stays without ids; the error above is what is reported
            state.prompt_ids = []
    return state
