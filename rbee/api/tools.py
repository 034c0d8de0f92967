"""Tool calling: `tools`, `tool_choice` and `parallel_tool_calls` parsed, the grammar that makes a
call valid, and the parser that turns a constrained answer back into OpenAI's `tool_calls`.

Every model writes its calls in one syntax, the Hermes/Qwen one, which chat templates with a
tools section (Qwen 2.5 and 3, Hermes, SmolLM3, ...) already teach their models; rbee's own
rendering of tools into the system prompt (rbee.engines.tool_prompt) teaches it to the others:

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

The call is enforced by constrained decoding (rbee.engines.grammar, llguidance): with
`tool_choice: "required"` or a named function the answer IS one call (or, with
`parallel_tool_calls`, several, one block after another) whose arguments are valid against the
function's `parameters` schema; with `"auto"` the model may write text, and the moment it writes
`<tool_call>` the rest is held to a valid call (a lazy lexeme: llguidance's tool-calling
pattern). `"none"` leaves the answer free text and the tools out of the prompt. A schema rbee
cannot enforce is a 400 naming its path, as for `response_format`.
"""

from __future__ import annotations

import functools
import json
import re
import secrets
from dataclasses import dataclass
from typing import Any, Literal

from rbee.api.structured import (
    _COMPILE_OPTIONS,
    ResponseFormat,
    json_schema_format,
)
from rbee.errors import ApiError

__all__ = [
    "CALL_CLOSE",
    "CALL_OPEN",
    "MAX_TOOLS",
    "CallEvent",
    "CallParser",
    "Tool",
    "ToolCall",
    "ToolSpec",
    "call_text",
    "new_call_id",
    "parse_tool_calls",
    "parse_tools",
    "split_calls",
]

MAX_TOOLS = 128
"""Tools one request may declare (OpenAI's own limit)."""
MAX_CALLS_IN_MESSAGE = 128
"""Tool calls one assistant message of the history may carry."""
_MAX_ARGUMENTS = 256 * 1024
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_EMPTY_PARAMETERS = {"type": "object", "properties": {}, "additionalProperties": False}
"""A function declared without `parameters` takes none (OpenAI's rule)."""

CALL_OPEN = "<tool_call>"
"""What starts a call in an answer (the trigger of `auto`)."""
CALL_CLOSE = "</tool_call>"
_HEAD = re.compile(r'\n\{"name": "([A-Za-z0-9_-]{1,64})", "arguments": ')
_ARGS_END = "}\n" + CALL_CLOSE


@dataclass(frozen=True)
class Tool:
    """One function a request offers the model."""

    name: str
    parameters: str
    """Its JSON Schema as compact JSON (an object schema)."""
    description: str | None = None
    strict: bool = False
    """What the client asked for; rbee enforces the schema either way."""

    def as_openai(self) -> dict[str, Any]:
        """The tool in chat's request shape, as chat templates expect it."""
        function: dict[str, Any] = {"name": self.name}
        if self.description is not None:
            function["description"] = self.description
        function["parameters"] = json.loads(self.parameters)
        return {"type": "function", "function": function}


Choice = Literal["auto", "none", "required", "function"]


@dataclass(frozen=True)
class ToolSpec:
    """A request's tools and how the model may use them."""

    tools: tuple[Tool, ...]
    choice: Choice = "auto"
    function: str | None = None
    """The function a named `tool_choice` forces."""
    parallel: bool = True
    grammar: str | None = None
    """The llguidance grammar the answer follows; None with `tool_choice: "none"`."""

    @property
    def calls(self) -> bool:
        """True when the answer may hold calls (and is parsed for them)."""
        return self.choice != "none"


@dataclass(frozen=True)
class ToolCall:
    """A call in an assistant message of the history."""

    id: str
    name: str
    arguments: str
    """As the client sent it: a JSON text (OpenAI's own shape)."""

    def as_openai(self) -> dict[str, Any]:
        """The call in chat's shape."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


def _bad(param: str, message: str, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def new_call_id() -> str:
    """A fresh tool call id in OpenAI's style."""
    return "call_" + secrets.token_urlsafe(18)


def _string(value: Any, param: str, *, required: bool = True) -> str | None:
    if value is None and not required:
        return None
    if value is None:
        raise _bad(param, f"{param} is required", "missing_required_parameter")
    if not isinstance(value, str):
        raise _bad(param, f"{param} must be a string, got {_type_name(value)}", "invalid_type")
    return value


def _name(value: Any, param: str) -> str:
    name = _string(value, param)
    assert name is not None
    if not _NAME.fullmatch(name):
        raise _bad(
            param,
            f"{param} must be 1 to 64 letters, digits, underscores or dashes, got {name[:80]!r}",
        )
    return name


def _tool(i: int, value: Any) -> Tool:
    param = f"tools[{i}]"
    if not isinstance(value, dict):
        raise _bad(param, f"{param} must be an object, got {_type_name(value)}", "invalid_type")
    if value.get("type") != "function":
        raise _bad(
            f"{param}.type",
            f'{param}.type must be "function" (the only kind of tool rbee runs), '
            f"got {value.get('type')!r:.80}",
            "unsupported_parameter" if isinstance(value.get("type"), str) else "invalid_value",
        )
    function = value.get("function")
    fparam = f"{param}.function"
    if not isinstance(function, dict):
        raise _bad(
            fparam,
            f"{fparam} must be an object, got {_type_name(function)}",
            "missing_required_parameter" if function is None else "invalid_type",
        )
    name = _name(function.get("name"), f"{fparam}.name")
    description = _string(function.get("description"), f"{fparam}.description", required=False)
    strict = function.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise _bad(f"{fparam}.strict", f"{fparam}.strict must be a boolean", "invalid_type")
    schema = function.get("parameters")
    pparam = f"{fparam}.parameters"
    if schema is None:
        schema = _EMPTY_PARAMETERS
    if not isinstance(schema, dict):
        raise _bad(
            pparam, f"{pparam} must be a JSON Schema object, got {_type_name(schema)}",
            "invalid_type",
        )  # fmt: skip
    kind = schema.get("type", "object")
    if kind != "object":
        raise _bad(
            f"{pparam}.type",
            f'{pparam} must describe an object ("type": "object"): a call\'s arguments are '
            f"named, got {kind!r:.80}",
        )
    checked = json_schema_format({**schema, "type": "object"}, param=pparam)
    return Tool(name, checked.schema, description, bool(strict))


def _choice(body: dict[str, Any], names: set[str]) -> tuple[Choice, str | None]:
    value = body.get("tool_choice")
    if value is None:
        return "auto", None
    if value in ("auto", "none", "required"):
        return value, None
    if isinstance(value, dict):
        function = value.get("function")
        if value.get("type") == "function" and isinstance(function, dict):
            name = _name(function.get("name"), "tool_choice.function.name")
            if name not in names:
                raise _bad(
                    "tool_choice.function.name",
                    f"tool_choice names the function {name!r}, which is not among tools "
                    f"({', '.join(sorted(names))})",
                )
            return "function", name
    raise _bad(
        "tool_choice",
        'tool_choice must be "auto", "none", "required" or '
        '{"type": "function", "function": {"name": ...}}, '
        f"got {json.dumps(value)[:100]}",
    )


def parse_tools(body: dict[str, Any], answer: ResponseFormat | None) -> ToolSpec | None:
    """The tools of a chat request body (None when it has none), with the grammar its answer
    follows; `answer` is the request's `response_format`, which a text answer keeps to."""
    if body.get("functions") is not None or body.get("function_call") is not None:
        key = "functions" if body.get("functions") is not None else "function_call"
        raise _bad(
            key,
            f"{key} is OpenAI's deprecated form of tools; send tools "
            '([{"type": "function", "function": {...}}]) and tool_choice instead',
            "unsupported_parameter",
        )
    value = body.get("tools")
    if value is None or value == []:
        if body.get("tool_choice") is not None:
            raise _bad("tool_choice", "tool_choice is only allowed when tools are specified")
        if body.get("parallel_tool_calls") is not None:
            raise _bad(
                "parallel_tool_calls",
                "parallel_tool_calls is only allowed when tools are specified",
            )
        return None
    if not isinstance(value, list):
        raise _bad("tools", f"tools must be a list, got {_type_name(value)}", "invalid_type")
    if len(value) > MAX_TOOLS:
        raise _bad("tools", f"tools takes at most {MAX_TOOLS} functions, got {len(value)}")
    tools = tuple(_tool(i, t) for i, t in enumerate(value))
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        if tool.name in seen:
            raise _bad(f"tools[{i}].function.name", f"two tools are named {tool.name!r}")
        seen.add(tool.name)
    choice, function = _choice(body, seen)
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise _bad("parallel_tool_calls", "parallel_tool_calls must be a boolean", "invalid_type")
    parallel = parallel is not False and choice != "function"
    grammar = None
    if choice != "none":
        offered = tuple(t for t in tools if function is None or t.name == function)
        grammar = call_grammar(offered, choice, parallel, answer)
    return ToolSpec(tools, choice, function, parallel, grammar)


def _lark_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _json_rule(schema: str) -> str:
    """`%json` of `schema` (compact JSON of an object schema) written as answers are: one line,
    the same separators as `response_format` (rbee.api.structured)."""
    parsed = json.loads(schema)
    return "%json " + json.dumps({**parsed, "x-guidance": _COMPILE_OPTIONS}, ensure_ascii=False)


def call_grammar(
    tools: tuple[Tool, ...], choice: Choice, parallel: bool, answer: ResponseFormat | None
) -> str:
    """The grammar of an answer that calls `tools` as `choice` says (see the module's doc)."""
    return _call_grammar(
        tuple((t.name, t.parameters) for t in tools),
        choice,
        parallel,
        answer.schema if answer is not None else None,
    )


@functools.lru_cache(maxsize=64)
def _call_grammar(
    tools: tuple[tuple[str, str], ...], choice: Choice, parallel: bool, answer: str | None
) -> str:
    from llguidance import LLMatcher  # noqa: PLC0415 - loaded on the first structured request

    rules = ["%llguidance {}"]
    more = ' ("\\n" block)*' if parallel else ""
    if choice == "auto":
        # Free text (or the response_format's answer) or, lazily from the first `<tool_call>`,
        # calls: the text lexeme ends at the trigger, and what follows is held to a call.
        if answer is None:
            rules.append(f"start: TEXT | lead body{more}")
            rules.append(f"lead[lazy]: TEXT {_lark_string(CALL_OPEN)}")
            rules.append("TEXT: /(.|\\n)*/")
        else:
            rules.append(f"start: answer | block{more}")
            rules.append(f"answer: {_json_rule(answer)}")
    else:
        rules.append(f"start: block{more}")
    rules.append(f"block: {_lark_string(CALL_OPEN)} body")
    rules.append(f"body: call {_lark_string(chr(10) + CALL_CLOSE)}")
    rules.append("call: " + " | ".join(f"call_{i}" for i in range(len(tools))))
    for i, (name, schema) in enumerate(tools):
        head = _lark_string(f'\n{{"name": "{name}", "arguments": ')
        rules.append(f'call_{i}: {head} {_json_rule(schema)} "}}"')
    grammar = LLMatcher.grammar_from_lark("\n".join(rules) + "\n")
    is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        why = (messages[0] if messages else "").strip().splitlines()
        raise _bad("tools", f"rbee cannot enforce these tools: {why[0] if why else 'unknown'}")
    return grammar


def parse_tool_calls(index: int, value: Any) -> tuple[ToolCall, ...]:
    """The `tool_calls` of assistant message `index` of a request's history."""
    param = f"messages[{index}].tool_calls"
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _bad(param, f"{param} must be a list, got {_type_name(value)}", "invalid_type")
    if len(value) > MAX_CALLS_IN_MESSAGE:
        raise _bad(param, f"{param} holds at most {MAX_CALLS_IN_MESSAGE} calls, got {len(value)}")
    out = []
    for j, call in enumerate(value):
        where = f"{param}[{j}]"
        if not isinstance(call, dict):
            raise _bad(where, f"{where} must be an object", "invalid_type")
        if call.get("type", "function") != "function":
            raise _bad(f"{where}.type", f'{where}.type must be "function"')
        call_id = _string(call.get("id"), f"{where}.id")
        function = call.get("function")
        if not isinstance(function, dict):
            raise _bad(f"{where}.function", f"{where}.function must be an object", "invalid_type")
        name = _name(function.get("name"), f"{where}.function.name")
        arguments = _string(function.get("arguments"), f"{where}.function.arguments")
        assert call_id is not None
        assert arguments is not None
        if len(arguments) > _MAX_ARGUMENTS:
            raise _bad(
                f"{where}.function.arguments",
                f"{where}.function.arguments is longer than {_MAX_ARGUMENTS} characters",
            )
        out.append(ToolCall(call_id, name, arguments))
    return tuple(out)


def call_text(name: str, arguments: str) -> str:
    """A call as the model writes it (the history's calls are rendered back this way)."""
    try:
        args = json.dumps(json.loads(arguments), ensure_ascii=False)
    except ValueError:
        args = arguments
    return f'{CALL_OPEN}\n{{"name": "{name}", "arguments": {args}}}\n{CALL_CLOSE}'


@dataclass(frozen=True)
class CallEvent:
    """What a piece of a constrained answer adds: text, a call's start, or its arguments."""

    kind: Literal["text", "call", "arguments"]
    text: str = ""
    """The text, or the piece of the arguments."""
    index: int = 0
    """The call's index in the answer."""
    id: str = ""
    name: str = ""


def _held(text: str, marker: str) -> int:
    """How many characters at the end of `text` could begin `marker` (kept back until known)."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0


class CallParser:
    """Cuts an answer streamed in pieces into text and calls, as soon as each part is known.

    The answer was constrained to the syntax of the module's doc, so this reads exactly that:
    text up to `<tool_call>`, then the head (`{"name": "f", "arguments": `), then the arguments
    piece by piece up to `}` and `</tool_call>`, then maybe another call.
    """

    def __init__(self) -> None:
        self._buf = ""
        self._state: Literal["text", "head", "arguments", "between"] = "text"
        self.calls = 0
        """Calls begun so far."""

    def feed(self, piece: str) -> list[CallEvent]:
        """The events `piece` completes."""
        self._buf += piece
        out: list[CallEvent] = []
        while True:
            buf = self._buf
            if self._state in ("text", "between"):
                at = buf.find(CALL_OPEN)
                if at >= 0:
                    self._text(out, buf[:at])
                    self._buf, self._state = buf[at + len(CALL_OPEN) :], "head"
                    continue
                keep = _held(buf, CALL_OPEN)
                self._text(out, buf[: len(buf) - keep])
                self._buf = buf[len(buf) - keep :]
                return out
            if self._state == "head":
                head = _HEAD.match(buf)
                if head is None:
                    return out
                out.append(CallEvent("call", index=self.calls, id=new_call_id(), name=head[1]))
                self._buf, self._state = buf[head.end() :], "arguments"
                continue
            at = buf.find(_ARGS_END)
            if at >= 0:
                self._arguments(out, buf[:at])
                self._buf, self._state = buf[at + len(_ARGS_END) :], "between"
                self.calls += 1
                continue
            keep = _held(buf, _ARGS_END)
            self._arguments(out, buf[: len(buf) - keep])
            self._buf = buf[len(buf) - keep :]
            return out

    def end(self) -> list[CallEvent]:
        """What is left once the answer ends (cut short by max_tokens, say)."""
        out: list[CallEvent] = []
        rest, self._buf = self._buf, ""
        if self._state == "arguments":
            self._arguments(out, rest)
        elif self._state == "head":
            self._text(out, CALL_OPEN + rest)
        else:
            self._text(out, rest)
        return out

    def _text(self, out: list[CallEvent], text: str) -> None:
        if self._state == "between":
            # Between and after calls the grammar allows only the newline that separates them.
            text = text.strip()
        if text:
            out.append(CallEvent("text", text))

    def _arguments(self, out: list[CallEvent], text: str) -> None:
        if text:
            out.append(CallEvent("arguments", text, index=self.calls))


def split_calls(text: str) -> tuple[str, list[dict[str, Any]]]:
    """A whole answer's text and its calls in chat's `tool_calls` shape."""
    parser = CallParser()
    events = parser.feed(text) + parser.end()
    content = "".join(e.text for e in events if e.kind == "text")
    calls: list[dict[str, Any]] = []
    for event in events:
        if event.kind == "call":
            calls.append(
                {"id": event.id, "type": "function",
                 "function": {"name": event.name, "arguments": ""}}
            )  # fmt: skip
        elif event.kind == "arguments":
            calls[event.index]["function"]["arguments"] += event.text
    return content, calls
