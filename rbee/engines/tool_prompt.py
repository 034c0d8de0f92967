"""How a chat request's messages and tools reach a model's chat template.

A template with a tools section in the call syntax rbee enforces (rbee.api.tools: `<tool_call>`
blocks, as Qwen 2.5/3, Hermes and SmolLM3 write them) gets the tools and the history's calls the
way transformers' `apply_chat_template` passes them: `tools` as chat's tool objects, assistant
`tool_calls` with their arguments as objects, `tool` messages with their `tool_call_id` and the
function's `name`. Any other template gets rbee's own rendering (`SYSTEM_TOOLS`), in messages
every template takes: the tools are described at the end of the system message (one is added
first when the conversation has none), an assistant's calls are written into its content in the
syntax above, and tool results become a user message of `<tool_response>` blocks. With
`tool_choice: "none"` the tools are left out of the prompt; the history's calls and results are
still rendered.
"""

from __future__ import annotations

import json
from typing import Any

from rbee.api.openai import ChatMessage, ChatRequest
from rbee.api.tools import CALL_CLOSE, CALL_OPEN, ToolSpec, call_text

__all__ = ["SYSTEM_TOOLS", "supports_tools", "template_inputs"]

SYSTEM_TOOLS = f"""# Tools

You may call one or more of the functions below to help with the request. Their signatures are \
given as JSON within <tools></tools> tags:
<tools>
{{tools}}
</tools>

To call a function, answer with its name and arguments as a JSON object within \
{CALL_OPEN}{CALL_CLOSE} tags:
{CALL_OPEN}
{{"name": "function_name", "arguments": {{"argument": "value"}}}}
{CALL_CLOSE}{{must}}"""
"""The system prompt text that describes tools to a model whose template cannot (`{tools}`: one
tool per line as chat's JSON; `{must}`: a sentence for `required` or a named function)."""


def supports_tools(source: str | None) -> bool:
    """True when a chat template renders `tools` itself, for calls in rbee's syntax."""
    return source is not None and "tools" in source and CALL_OPEN in source


def _arguments(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _must(spec: ToolSpec) -> str:
    if spec.choice == "function":
        return f"\n\nCall the function {spec.function} now."
    if spec.choice == "required":
        return "\n\nAnswer with at least one function call."
    return ""


def _native(messages: tuple[ChatMessage, ...]) -> list[dict[str, Any]]:
    names: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    for m in messages:
        entry: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.tool_calls:
            entry["tool_calls"] = [
                {"id": c.id, "type": "function",
                 "function": {"name": c.name, "arguments": _arguments(c.arguments)}}
                for c in m.tool_calls
            ]  # fmt: skip
            names.update((c.id, c.name) for c in m.tool_calls)
        if m.role == "tool":
            entry["tool_call_id"] = m.tool_call_id
            if m.tool_call_id in names:
                entry["name"] = names[m.tool_call_id]
        out.append(entry)
    return out


def _rendered(messages: tuple[ChatMessage, ...], system: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if system:
        if messages and messages[0].role == "system":
            first = messages[0].content
            out.append({"role": "system", "content": f"{first}\n\n{system}" if first else system})
            messages = messages[1:]
        else:
            out.append({"role": "system", "content": system})
    for m in messages:
        if m.role == "tool":
            block = f"<tool_response>\n{m.content}\n</tool_response>"
            if out and out[-1]["role"] == "user" and out[-1].get("tool_results"):
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block, "tool_results": True})
            continue
        content = m.content
        if m.tool_calls:
            calls = "\n".join(call_text(c.name, c.arguments) for c in m.tool_calls)
            content = f"{content}\n{calls}" if content else calls
        out.append({"role": m.role, "content": content})
    for entry in out:
        entry.pop("tool_results", None)
    return out


def template_inputs(
    request: ChatRequest, template_source: str | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The `messages` and `tools` to render `request` with through the template whose source is
    `template_source` (`tools` None: render without them)."""
    spec = request.tools
    offered = spec is not None and spec.calls
    history = any(m.tool_calls or m.role == "tool" for m in request.messages)
    if not offered and not history:
        return [{"role": m.role, "content": m.content} for m in request.messages], None
    if supports_tools(template_source):
        tools = [t.as_openai() for t in spec.tools] if spec is not None and offered else None
        return _native(request.messages), tools
    system = ""
    if spec is not None and offered:
        lines = "\n".join(json.dumps(t.as_openai(), ensure_ascii=False) for t in spec.tools)
        system = SYSTEM_TOOLS.replace("{tools}", lines).replace("{must}", _must(spec))
    return _rendered(request.messages, system), None
