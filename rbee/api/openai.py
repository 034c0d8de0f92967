"""The OpenAI request schema rbee accepts, parsed into frozen dataclasses.

Parsing is pure: a dict in, a request or an ApiError (HTTP 4xx with OpenAI's error body, naming the
field) out. The queen and the worker both parse every request, so a bad one never reaches an engine.
Unknown fields are ignored, as OpenAI's own API does for most of them; fields whose meaning rbee
cannot honour (non-text content, `echo`, `best_of`) are refused rather than silently dropped.
`response_format` (chat only) is parsed and its schema checked by rbee.api.structured; `tools`,
`tool_choice` and the history's calls by rbee.api.tools.
`logit_bias` is checked here for its shape; its token ids are checked against the model's
vocabulary by the engine, which alone knows it.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeVar

from rbee.api.structured import ResponseFormat, parse_response_format
from rbee.api.tools import ToolCall, ToolSpec, parse_tool_calls, parse_tools
from rbee.errors import ApiError

__all__ = [
    "MAX_CHOICES",
    "MAX_COMPLETION_LOGPROBS",
    "MAX_EMBEDDING_INPUTS",
    "MAX_LOGIT_BIAS",
    "MAX_MAX_TOKENS",
    "MAX_MESSAGES",
    "MAX_STOP_SEQUENCES",
    "MAX_TOP_LOGPROBS",
    "ChatMessage",
    "ChatRequest",
    "CompletionRequest",
    "EmbeddingInput",
    "EmbeddingRequest",
    "SamplingParams",
    "choice_seed",
    "parse_chat_request",
    "parse_completion_request",
    "parse_embedding_request",
    "parse_off_loop",
]

MAX_STOP_SEQUENCES = 4
MAX_EMBEDDING_INPUTS = 2048
"""OpenAI's own limit on the number of inputs of one embeddings request."""
MAX_LOGIT_BIAS = 300
"""Tokens one request may bias (OpenAI's own limit)."""
_LOGIT_BIAS_RANGE = 100.0
_TOKEN_KEY = re.compile(r"0|[1-9][0-9]{0,9}")
MAX_CHOICES = 8
"""Choices (`n`) one request may ask for; they are sampled one after another on one worker."""
MAX_MAX_TOKENS = 1 << 30
"""The most tokens one request may ask to generate, all its choices together (n * max_tokens):
each is legal up to this alone, but 8 choices of a billion tokens is no request to queue."""
MAX_MESSAGES = 2048
"""Messages one chat request may hold: a 1 MiB body of empty messages is some 30,000 of them,
each templated and tokenized before the context check could refuse the whole."""
MAX_TOP_LOGPROBS = 20
"""Alternatives per token a chat request may ask for (`top_logprobs`, OpenAI's own limit)."""
MAX_COMPLETION_LOGPROBS = 5
"""Alternatives per token a legacy completion may ask for (`logprobs`, OpenAI's own limit)."""
_MAX_TOKEN_ID = 2**31 - 1
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
_MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class SamplingParams:
    """How to sample: OpenAI's fields with OpenAI's defaults."""

    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    """(token id, bias added to its logit) pairs, sorted by token id."""
    n: int = 1
    """How many choices to sample, one after another."""
    logprobs: int | None = None
    """None: no log-probabilities; else each token's, with this many likeliest alternatives."""

    def for_choice(self, index: int) -> SamplingParams:
        """The parameters choice `index` is sampled with: its own seed (see `choice_seed`)."""
        if self.seed is None or index == 0:
            return self
        return replace(self, seed=choice_seed(self.seed, index))


def choice_seed(seed: int, index: int) -> int:
    """The seed choice `index` of a request with `seed` is sampled with.

    Choice 0 uses `seed` itself, so `n: 1` samples as it always did; choice i > 0 uses the first
    8 bytes of SHA-256 of the ASCII text `"{seed}:{i}"` (e.g. "42:1"), read big-endian and shifted
    right by one bit (0 to 2**63 - 1). The same request thus repeats exactly, choice by choice,
    and no two choices share a seed by accident of arithmetic (seed + i would make choice 1 of
    seed 41 the choice 0 of seed 42).
    """
    if index == 0:
        return seed
    digest = hashlib.sha256(f"{seed}:{index}".encode("ascii")).digest()
    return int.from_bytes(digest[:8], "big") >> 1


@dataclass(frozen=True)
class ChatMessage:
    """One message of a conversation, its content flattened to text."""

    role: str
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    """The calls an assistant message made."""
    tool_call_id: str | None = None
    """The call a `tool` message answers."""


@dataclass(frozen=True)
class ChatRequest:
    """A parsed `POST /v1/chat/completions`."""

    model: str
    messages: tuple[ChatMessage, ...]
    sampling: SamplingParams
    stream: bool = False
    include_usage: bool = False
    kind: Literal["chat"] = "chat"
    response_format: ResponseFormat | None = None
    """The answer's required shape (json_object, json_schema); None for free text."""
    tools: ToolSpec | None = None
    """The functions the model may call, and how (rbee.api.tools)."""

    @property
    def calls_tools(self) -> bool:
        """True when the answer may hold tool calls (and is parsed for them)."""
        return self.tools is not None and self.tools.calls


@dataclass(frozen=True)
class CompletionRequest:
    """A parsed `POST /v1/completions`."""

    model: str
    prompt: str
    sampling: SamplingParams
    stream: bool = False
    include_usage: bool = False
    kind: Literal["completion"] = "completion"


EmbeddingInput = str | tuple[int, ...]
"""One input to embed: a text, or the model's token ids."""


@dataclass(frozen=True)
class EmbeddingRequest:
    """A parsed `POST /v1/embeddings`."""

    model: str
    inputs: tuple[EmbeddingInput, ...]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    """What the client asked for; the worker refuses any value but its model's own."""
    kind: Literal["embedding"] = "embedding"


def _bad(param: str, message: str, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _number(body: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(key, f"{key} must be a number, got {_type_name(value)}", "invalid_type")
    if not math.isfinite(value) or not lo <= value <= hi:
        raise _bad(key, f"{key} must be between {lo:g} and {hi:g}, got {value!r}")
    return float(value)


def _integer(body: dict[str, Any], key: str, lo: int, hi: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(
            value
        )  # 4.0 is an integer to JSON Schema (and to vLLM's and llama.cpp's parsers)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(key, f"{key} must be an integer, got {_type_name(value)}", "invalid_type")
    if not lo <= value <= hi:
        raise _bad(key, f"{key} must be between {lo} and {hi}, got {value}")
    return value


def _boolean(body: dict[str, Any], key: str) -> bool:
    value = body.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _bad(key, f"{key} must be a boolean, got {_type_name(value)}", "invalid_type")
    return value


def _model(body: dict[str, Any]) -> str:
    value = body.get("model")
    if value is None:
        raise _bad("model", "model is required", "missing_required_parameter")
    if not isinstance(value, str) or not value:
        raise _bad(
            "model", f"model must be a non-empty string, got {_type_name(value)}", "invalid_type"
        )
    return value


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise _bad("stop", "stop must be a string or a list of strings", "invalid_type")
    if len(items) > MAX_STOP_SEQUENCES:
        raise _bad("stop", f"stop takes at most {MAX_STOP_SEQUENCES} sequences, got {len(items)}")
    if any(s == "" for s in items):
        raise _bad("stop", "stop sequences must not be empty")
    return tuple(items)


def _refuse_unsupported(body: dict[str, Any]) -> None:
    if body.get("echo") not in (None, False):
        raise _bad("echo", "echo is not supported yet", "unsupported_parameter")
    if body.get("suffix") not in (None, ""):
        raise _bad("suffix", "suffix is not supported yet", "unsupported_parameter")
    if body.get("best_of") not in (None, 1):
        raise _bad("best_of", "best_of > 1 is not supported yet", "unsupported_parameter")


def _logit_bias(body: dict[str, Any]) -> tuple[tuple[int, float], ...]:
    value = body.get("logit_bias")
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise _bad(
            "logit_bias",
            f"logit_bias must be an object mapping token ids to numbers, got {_type_name(value)}",
            "invalid_type",
        )
    if len(value) > MAX_LOGIT_BIAS:
        raise _bad(
            "logit_bias", f"logit_bias takes at most {MAX_LOGIT_BIAS} tokens, got {len(value)}"
        )
    out = []
    for key, bias in value.items():
        if not isinstance(key, str) or not _TOKEN_KEY.fullmatch(key) or int(key) > _MAX_TOKEN_ID:
            raise _bad(
                "logit_bias",
                f"logit_bias has the key {str(key)[:40]!r}; keys must be token ids, whole numbers "
                f'from 0 to {_MAX_TOKEN_ID} written in decimal, like "50256"',
            )
        if isinstance(bias, bool) or not isinstance(bias, int | float):
            raise _bad(
                "logit_bias",
                f"logit_bias[{key!r}] must be a number, got {_type_name(bias)}",
                "invalid_type",
            )
        if not math.isfinite(bias) or not -_LOGIT_BIAS_RANGE <= bias <= _LOGIT_BIAS_RANGE:
            raise _bad(
                "logit_bias",
                f"logit_bias[{key!r}] must be between -100 and 100, got {bias!r}",
            )
        out.append((int(key), float(bias)))
    return tuple(sorted(out))


def _chat_logprobs(body: dict[str, Any]) -> int | None:
    wanted = _boolean(body, "logprobs")
    top = _integer(body, "top_logprobs", 0, MAX_TOP_LOGPROBS)
    if top is not None and not wanted:
        raise _bad("top_logprobs", "top_logprobs is only allowed when logprobs is true")
    return (top or 0) if wanted else None


def _sampling(body: dict[str, Any], logprobs: int | None) -> SamplingParams:
    max_tokens = _integer(body, "max_tokens", 1, MAX_MAX_TOKENS)
    max_completion = _integer(body, "max_completion_tokens", 1, MAX_MAX_TOKENS)
    wanted = max_tokens if max_tokens is not None else max_completion
    n = _integer(body, "n", 1, MAX_CHOICES) or 1
    if wanted is not None and n * wanted > MAX_MAX_TOKENS:
        field = "max_tokens" if max_tokens is not None else "max_completion_tokens"
        raise _bad(
            field,
            f"n * {field} is {n} * {wanted} = {n * wanted} tokens; one request may ask for at "
            f"most {MAX_MAX_TOKENS} in all its choices together",
        )
    return SamplingParams(
        max_tokens=wanted,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0),
        stop=_stop(body),
        seed=_integer(body, "seed", -_MAX_SEED, _MAX_SEED),
        presence_penalty=_number(body, "presence_penalty", 0.0, -2.0, 2.0),
        frequency_penalty=_number(body, "frequency_penalty", 0.0, -2.0, 2.0),
        logit_bias=_logit_bias(body),
        n=n,
        logprobs=logprobs,
    )


def _stream_options(body: dict[str, Any], stream: bool) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise _bad("stream_options", "stream_options must be an object", "invalid_type")
    if not stream:
        raise _bad("stream_options", "stream_options is only allowed when stream is true")
    return _boolean(options, "include_usage")


def _content(index: int, value: Any) -> str:
    param = f"messages[{index}].content"
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = []
        for j, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else _type_name(part)
                raise _bad(
                    f"{param}[{j}]",
                    f"only text content parts are supported, got {kind!r}",
                    "unsupported_parameter",
                )
            text = part.get("text")
            if not isinstance(text, str):
                raise _bad(f"{param}[{j}].text", "text must be a string", "invalid_type")
            parts.append(text)
        return "".join(parts)
    raise _bad(
        param,
        f"content must be a string or a list of text parts, got {_type_name(value)}",
        "invalid_type",
    )


def _messages(body: dict[str, Any]) -> tuple[ChatMessage, ...]:
    value = body.get("messages")
    if value is None:
        raise _bad("messages", "messages is required", "missing_required_parameter")
    if not isinstance(value, list):
        raise _bad("messages", f"messages must be a list, got {_type_name(value)}", "invalid_type")
    if not value:
        raise _bad("messages", "messages must not be empty")
    if len(value) > MAX_MESSAGES:
        raise _bad("messages", f"messages holds at most {MAX_MESSAGES} messages, got {len(value)}")
    out = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise _bad(f"messages[{i}]", "each message must be an object", "invalid_type")
        role = message.get("role")
        if not isinstance(role, str) or role not in _ROLES:
            got = repr(role[:40]) if isinstance(role, str) else _type_name(role)
            raise _bad(
                f"messages[{i}].role", f"role must be one of {', '.join(sorted(_ROLES))}, got {got}"
            )
        calls = parse_tool_calls(i, message.get("tool_calls")) if role == "assistant" else ()
        if role != "assistant" and message.get("tool_calls") is not None:
            raise _bad(f"messages[{i}].tool_calls", "only assistant messages may carry tool_calls")
        call_id = None
        if role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                raise _bad(
                    f"messages[{i}].tool_call_id",
                    "a tool message needs the tool_call_id of the call it answers",
                    "missing_required_parameter" if call_id is None else "invalid_type",
                )
        content = message.get("content")
        out.append(
            ChatMessage(
                role="system" if role == "developer" else role,
                content=_content(i, content),
                tool_calls=calls,
                tool_call_id=call_id,
            )
        )
    return tuple(out)


def _require_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {_type_name(body)}")
    return body


_Parsed = TypeVar("_Parsed")


async def parse_off_loop(parse: Callable[[Any], _Parsed], body: Any) -> _Parsed:
    """`parse(body)`, on a thread when the body carries a schema or tools: compiling their grammar
    takes the compiler up to tens of milliseconds, which the event loop must not wait out (every
    stream it relays would stall). Other bodies parse in microseconds, on the loop."""
    if isinstance(body, dict) and (body.get("response_format") or body.get("tools")):
        return await asyncio.to_thread(parse, body)
    return parse(body)


def parse_chat_request(body: Any) -> ChatRequest:
    """Parse the JSON body of a chat completion request."""
    body = _require_object(body)
    _refuse_unsupported(body)
    stream = _boolean(body, "stream")
    model = _model(body)
    messages = _messages(body)
    sampling = _sampling(body, _chat_logprobs(body))
    answer = parse_response_format(body)
    return ChatRequest(
        model=model,
        messages=messages,
        sampling=sampling,
        stream=stream,
        include_usage=_stream_options(body, stream),
        response_format=answer,
        tools=parse_tools(body, answer),
    )


def parse_completion_request(body: Any) -> CompletionRequest:
    """Parse the JSON body of a (legacy) text completion request."""
    body = _require_object(body)
    _refuse_unsupported(body)
    for key in ("tools", "tool_choice", "functions"):
        if body.get(key) is not None:
            raise _bad(
                key,
                f"{key} is not a field of /v1/completions; tools are called through "
                "/v1/chat/completions",
                "unsupported_parameter",
            )
    fmt = body.get("response_format")
    if fmt is not None and fmt != {"type": "text"}:
        # Not a field of OpenAI's legacy completions: structured answers are a chat feature.
        raise _bad(
            "response_format",
            "response_format is not supported on /v1/completions; send the request to "
            "/v1/chat/completions, where json_object and json_schema are",
            "unsupported_parameter",
        )
    stream = _boolean(body, "stream")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if prompt is None:
        raise _bad("prompt", "prompt is required", "missing_required_parameter")
    if not isinstance(prompt, str):
        raise _bad(
            "prompt",
            "prompt must be a string (batches of prompts are not supported yet)",
            "invalid_type",
        )
    return CompletionRequest(
        model=_model(body),
        prompt=prompt,
        sampling=_sampling(body, _integer(body, "logprobs", 0, MAX_COMPLETION_LOGPROBS)),
        stream=stream,
        include_usage=_stream_options(body, stream),
    )


def _token_ids(param: str, value: list[Any]) -> tuple[int, ...]:
    if not value:
        raise _bad(param, f"{param} must not be an empty list of token ids")
    for j, token in enumerate(value):
        if isinstance(token, bool) or not isinstance(token, int):
            raise _bad(
                f"{param}[{j}]",
                f"token ids must be integers, got {_type_name(token)}",
                "invalid_type",
            )
        if not 0 <= token <= _MAX_TOKEN_ID:
            raise _bad(f"{param}[{j}]", f"token ids must be from 0 to {_MAX_TOKEN_ID}, got {token}")
    return tuple(value)


def _embedding_inputs(body: dict[str, Any]) -> tuple[EmbeddingInput, ...]:
    value = body.get("input")
    if value is None:
        raise _bad("input", "input is required", "missing_required_parameter")
    if isinstance(value, str):
        if not value:
            raise _bad("input", "input must not be an empty string")
        return (value,)
    if not isinstance(value, list):
        raise _bad(
            "input",
            "input must be a string, a list of strings, a list of token ids or a list of lists "
            f"of token ids, got {_type_name(value)}",
            "invalid_type",
        )
    if not value:
        raise _bad("input", "input must not be an empty list")
    if all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        return (_token_ids("input", value),)
    if len(value) > MAX_EMBEDDING_INPUTS:
        raise _bad(
            "input",
            f"input takes at most {MAX_EMBEDDING_INPUTS} items, got {len(value)}; "
            "split them over several requests",
        )
    out: list[EmbeddingInput] = []
    first = type(value[0])
    for i, item in enumerate(value):
        param = f"input[{i}]"
        if not isinstance(item, str | list):
            raise _bad(
                param,
                f"each input must be a string or a list of token ids, got {_type_name(item)}",
                "invalid_type",
            )
        if type(item) is not first:
            raise _bad(
                param,
                "input must be a list of strings or a list of lists of token ids, not a mix: "
                f"input[0] is a {_type_name(value[0])}, {param} a {_type_name(item)}",
                "invalid_type",
            )
        if isinstance(item, str):
            if not item:
                raise _bad(param, f"{param} must not be an empty string")
            out.append(item)
        else:
            out.append(_token_ids(param, item))
    return tuple(out)


def _encoding_format(body: dict[str, Any]) -> Literal["float", "base64"]:
    value = body.get("encoding_format")
    if value is None or value == "float":
        return "float"
    if value == "base64":
        return "base64"
    raise _bad("encoding_format", f'encoding_format must be "float" or "base64", got {value!r}')


def parse_embedding_request(body: Any) -> EmbeddingRequest:
    """Parse the JSON body of an embeddings request (`user` is accepted and ignored)."""
    body = _require_object(body)
    return EmbeddingRequest(
        model=_model(body),
        inputs=_embedding_inputs(body),
        encoding_format=_encoding_format(body),
        dimensions=_integer(body, "dimensions", 1, 1 << 20),
    )
