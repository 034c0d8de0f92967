"""The queen's API as an OpenAPI 3.1 document, served at `GET /openapi.json`.

One table, OPERATIONS, names every route the queen answers with its request and answer shapes,
so standard tools (schemathesis, SDK generators, Swagger UI) can drive the queen. The document is
built from that table; tests/test_openapi.py walks the app's routes and fails when the two
differ, and tests/test_fuzz.py checks a real queen's answers against these schemas.

The schemas say what the parsers in rbee/api accept (types, ranges, list sizes) and the fields an
answer always has; answers may carry more fields than listed (forward-compatible, as OpenAI's
own). Every error answer uses OpenAI's body, those under /v1/messages Anthropic's.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rbee import __version__
from rbee.api.openai import (
    MAX_CHOICES,
    MAX_COMPLETION_LOGPROBS,
    MAX_EMBEDDING_INPUTS,
    MAX_LOGIT_BIAS,
    MAX_MAX_TOKENS,
    MAX_MESSAGES,
    MAX_STOP_SEQUENCES,
    MAX_TOP_LOGPROBS,
)
from rbee.models.catalog import DEFAULT_MODEL_ID

__all__ = ["OPERATIONS", "Operation", "document", "openapi_routes"]

Schema = dict[str, Any]
Errors = Literal["openai", "anthropic"]
Answer = Literal["json", "sse", "json-or-sse", "prometheus"]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(props: dict[str, Schema], *required: str) -> Schema:
    return {"type": "object", "properties": props, "required": list(required)}


def _nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


_STR: Schema = {"type": "string"}
_INT: Schema = {"type": "integer"}
_NUM: Schema = {"type": "number"}
_BOOL: Schema = {"type": "boolean"}
_OBJ: Schema = {"type": "object"}
_SEED = 2**63 - 1
_TOKEN_ID = 2**31 - 1

_TEXT_PART = _obj({"type": {"const": "text"}, "text": _STR}, "type", "text")
_CONTENT: Schema = {"anyOf": [_STR, {"type": "array", "items": _TEXT_PART}, {"type": "null"}]}
_TOOL_CALL = _obj(
    {
        "id": _STR,
        "type": {"const": "function"},
        "function": _obj({"name": _STR, "arguments": _STR}, "name", "arguments"),
    },
    "id",
    "type",
    "function",
)
_MESSAGE: Schema = {
    "anyOf": [
        _obj(
            {
                "role": {"enum": ["system", "developer", "user", "assistant"]},
                "content": _CONTENT,
            },
            "role",
        ),
        _obj(
            {
                "role": {"const": "assistant"},
                "content": _CONTENT,
                "tool_calls": {"type": "array", "items": _TOOL_CALL},
            },
            "role",
            "tool_calls",
        ),
        _obj(
            {
                "role": {"const": "tool"},
                "tool_call_id": {**_STR, "minLength": 1},
                "content": _CONTENT,
            },
            "role",
            "tool_call_id",
        ),
    ]
}
_FUNCTION_TOOL = _obj(
    {
        "type": {"const": "function"},
        "function": _obj(
            {
                "name": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
                "description": _STR,
                "parameters": _OBJ,
                "strict": _BOOL,
            },
            "name",
        ),
    },
    "type",
    "function",
)
_TOOL_CHOICE: Schema = {
    "anyOf": [
        {"enum": ["none", "auto", "required"]},
        _obj(
            {"type": {"const": "function"}, "function": _obj({"name": _STR}, "name")},
            "type",
            "function",
        ),
    ]
}
_RESPONSE_FORMAT: Schema = {
    "anyOf": [
        _obj({"type": {"enum": ["text", "json_object"]}}, "type"),
        _obj(
            {
                "type": {"const": "json_schema"},
                "json_schema": _obj(
                    {
                        "name": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
                        "schema": _OBJ,
                        "strict": _BOOL,
                        "description": _STR,
                    },
                    "name",
                ),
            },
            "type",
            "json_schema",
        ),
    ]
}
_STOP: Schema = {
    "anyOf": [
        {"type": "string", "minLength": 1},
        {
            "type": "array",
            "items": {"type": "string", "minLength": 1},
            "maxItems": MAX_STOP_SEQUENCES,
        },
        {"type": "null"},
    ]
}
_MAX_TOKENS: Schema = {"type": "integer", "minimum": 1, "maximum": MAX_MAX_TOKENS}
_SAMPLING: dict[str, Schema] = {
    "model": {"type": "string", "minLength": 1},
    "stream": _BOOL,
    "stream_options": _obj({"include_usage": _BOOL}),
    "max_tokens": _MAX_TOKENS,
    "temperature": {"type": "number", "minimum": 0, "maximum": 2},
    "top_p": {"type": "number", "minimum": 0, "maximum": 1},
    "stop": _STOP,
    "seed": {"type": "integer", "minimum": -_SEED, "maximum": _SEED},
    "presence_penalty": {"type": "number", "minimum": -2, "maximum": 2},
    "frequency_penalty": {"type": "number", "minimum": -2, "maximum": 2},
    "n": {"type": "integer", "minimum": 1, "maximum": MAX_CHOICES},
    "logit_bias": {
        "type": "object",
        "propertyNames": {"pattern": "^[0-9]{1,10}$"},
        "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100},
        "maxProperties": MAX_LOGIT_BIAS,
    },
    "user": _STR,
}
_RESPONSES_TEXT = _obj(
    {"type": {"enum": ["input_text", "output_text"]}, "text": _STR}, "type", "text"
)
_RESPONSES_CONTENT: Schema = {"anyOf": [_STR, {"type": "array", "items": _RESPONSES_TEXT}]}
_RESPONSES_ITEM: Schema = {
    "anyOf": [
        _obj(
            {
                "type": {"const": "message"},
                "role": {"enum": ["user", "system", "developer", "assistant"]},
                "content": _RESPONSES_CONTENT,
            },
            "role",
            "content",
        ),
        _obj(
            {
                "type": {"const": "function_call"},
                "call_id": {"type": "string", "minLength": 1},
                "name": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
                "arguments": _STR,
            },
            "type",
            "call_id",
            "name",
            "arguments",
        ),
        _obj(
            {
                "type": {"const": "function_call_output"},
                "call_id": {"type": "string", "minLength": 1},
                "output": _RESPONSES_CONTENT,
            },
            "type",
            "call_id",
            "output",
        ),
    ]
}
_RESPONSES_TOOL = _obj(
    {
        "type": {"const": "function"},
        "name": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
        "description": _STR,
        "parameters": _OBJ,
        "strict": _BOOL,
    },
    "type",
    "name",
)
_RESPONSES_FORMAT: Schema = {
    "anyOf": [
        _obj({"type": {"enum": ["text", "json_object"]}}, "type"),
        _obj(
            {
                "type": {"const": "json_schema"},
                "name": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
                "schema": _OBJ,
                "strict": _BOOL,
            },
            "type",
            "name",
            "schema",
        ),
    ]
}
_ANTHROPIC_TEXT = _obj({"type": {"const": "text"}, "text": _STR}, "type", "text")
_ANTHROPIC_USE = _obj(
    {
        "type": {"const": "tool_use"},
        "id": {"type": "string", "minLength": 1},
        "name": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
        "input": _OBJ,
    },
    "type",
    "id",
    "name",
    "input",
)
_ANTHROPIC_RESULT = _obj(
    {
        "type": {"const": "tool_result"},
        "tool_use_id": {"type": "string", "minLength": 1},
        "content": {"anyOf": [_STR, {"type": "array", "items": _ANTHROPIC_TEXT}]},
        "is_error": _BOOL,
    },
    "type",
    "tool_use_id",
)
_ANTHROPIC_MESSAGES: Schema = {
    "type": "array",
    "minItems": 1,
    "maxItems": MAX_MESSAGES,
    "items": {
        # tool_use blocks are the assistant's, tool_result blocks the user's.
        "anyOf": [
            _obj(
                {
                    "role": {"const": role},
                    "content": {
                        "anyOf": [
                            _STR,
                            {"type": "array", "items": {"anyOf": [_ANTHROPIC_TEXT, block]}},
                        ]
                    },
                },
                "role",
                "content",
            )
            for role, block in (("user", _ANTHROPIC_RESULT), ("assistant", _ANTHROPIC_USE))
        ]
    },
}
_ANTHROPIC_SYSTEM: Schema = {"anyOf": [_STR, {"type": "array", "items": _ANTHROPIC_TEXT}]}
_ANTHROPIC_TOOL = _obj(
    {
        "name": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
        "description": _STR,
        "input_schema": _OBJ,
    },
    "name",
    "input_schema",
)
_ANTHROPIC_TOOL_CHOICE: Schema = {
    "anyOf": [
        _obj(
            {"type": {"enum": ["auto", "any", "none"]}, "disable_parallel_tool_use": _BOOL},
            "type",
        ),
        _obj(
            {"type": {"const": "tool"}, "name": _STR, "disable_parallel_tool_use": _BOOL},
            "type",
            "name",
        ),
    ]
}
_USAGE = _obj(
    {"prompt_tokens": _INT, "completion_tokens": _INT, "total_tokens": _INT},
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
)
_FINISH = _nullable({"enum": ["stop", "length", "tool_calls", "content_filter"]})
_ERROR_STATUSES = (400, 401, 403, 404, 413, 429, 500, 502, 503, 504)
"""What every route may answer besides its success: a bad body or key, a key's scope or limits,
and the server-side failures the relay names (a worker gone, overloaded, too slow)."""

SCHEMAS: dict[str, Schema] = {
    "Error": _obj(
        {
            "error": _obj(
                {
                    "message": _STR,
                    "type": _STR,
                    "param": _nullable(_STR),
                    "code": _nullable(_STR),
                },
                "message",
                "type",
                "param",
                "code",
            )
        },
        "error",
    ),
    "AnthropicError": _obj(
        {
            "type": {"const": "error"},
            "error": _obj({"type": _STR, "message": _STR}, "type", "message"),
        },
        "type",
        "error",
    ),
    "ChatRequest": _obj(
        {
            **_SAMPLING,
            "messages": {
                "type": "array",
                "items": _MESSAGE,
                "minItems": 1,
                "maxItems": MAX_MESSAGES,
            },
            "max_completion_tokens": _MAX_TOKENS,
            "logprobs": _BOOL,
            "top_logprobs": {"type": "integer", "minimum": 0, "maximum": MAX_TOP_LOGPROBS},
            "response_format": _RESPONSE_FORMAT,
            "tools": {"type": "array", "items": _FUNCTION_TOOL, "maxItems": 128},
            "tool_choice": _TOOL_CHOICE,
            "parallel_tool_calls": _BOOL,
        },
        "model",
        "messages",
    )
    | {
        # What the parser refuses together: OpenAI's own rules.
        "dependentRequired": {"tool_choice": ["tools"]},
        "dependentSchemas": {
            "top_logprobs": _obj({"logprobs": {"const": True}}, "logprobs"),
            "stream_options": _obj({"stream": {"const": True}}, "stream"),
        },
    },
    "CompletionRequest": _obj(
        {
            **_SAMPLING,
            "prompt": {
                "anyOf": [_STR, {"type": "array", "items": _STR, "minItems": 1, "maxItems": 1}]
            },
            "logprobs": {"type": "integer", "minimum": 0, "maximum": MAX_COMPLETION_LOGPROBS},
            "echo": {"const": False},
            "best_of": {"const": 1},
        },
        "model",
        "prompt",
    )
    | {"dependentSchemas": {"stream_options": _obj({"stream": {"const": True}}, "stream")}},
    "EmbeddingRequest": _obj(
        {
            "model": {"type": "string", "minLength": 1},
            "input": {
                "anyOf": [
                    {"type": "string", "minLength": 1},
                    {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": MAX_EMBEDDING_INPUTS,
                        "items": {"type": "string", "minLength": 1},
                    },
                    {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": MAX_EMBEDDING_INPUTS,
                        "items": {"type": "integer", "minimum": 0, "maximum": _TOKEN_ID},
                    },
                ]
            },
            "encoding_format": {"enum": ["float", "base64"]},
            "dimensions": {"type": "integer", "minimum": 1},
            "user": _STR,
        },
        "model",
        "input",
    ),
    "ChatCompletion": _obj(
        {
            "id": _STR,
            "object": {"const": "chat.completion"},
            "created": _INT,
            "model": _STR,
            "choices": {
                "type": "array",
                "items": _obj(
                    {
                        "index": _INT,
                        "message": _obj(
                            {
                                "role": {"const": "assistant"},
                                "content": _nullable(_STR),
                                "tool_calls": {"type": "array", "items": _TOOL_CALL},
                            },
                            "role",
                            "content",
                        ),
                        "logprobs": _nullable(_OBJ),
                        "finish_reason": _FINISH,
                    },
                    "index",
                    "message",
                    "finish_reason",
                ),
            },
            "usage": _USAGE,
        },
        "id",
        "object",
        "created",
        "model",
        "choices",
        "usage",
    ),
    "Completion": _obj(
        {
            "id": _STR,
            "object": {"const": "text_completion"},
            "created": _INT,
            "model": _STR,
            "choices": {
                "type": "array",
                "items": _obj(
                    {
                        "index": _INT,
                        "text": _STR,
                        "logprobs": _nullable(_OBJ),
                        "finish_reason": _FINISH,
                    },
                    "index",
                    "text",
                    "finish_reason",
                ),
            },
            "usage": _USAGE,
        },
        "id",
        "object",
        "created",
        "model",
        "choices",
        "usage",
    ),
    "EmbeddingList": _obj(
        {
            "object": {"const": "list"},
            "model": _STR,
            "data": {
                "type": "array",
                "items": _obj(
                    {
                        "object": {"const": "embedding"},
                        "index": _INT,
                        "embedding": {"anyOf": [{"type": "array", "items": _NUM}, _STR]},
                    },
                    "object",
                    "index",
                    "embedding",
                ),
            },
            "usage": _obj({"prompt_tokens": _INT, "total_tokens": _INT}, "prompt_tokens"),
        },
        "object",
        "data",
        "model",
        "usage",
    ),
    "Model": _obj(
        {
            "id": _STR,
            "object": {"const": "model"},
            "created": _INT,
            "owned_by": _STR,
            "context_length": _INT,
            "loaded": _BOOL,
        },
        "id",
        "object",
        "created",
        "owned_by",
    ),
    "ModelList": _obj(
        {"object": {"const": "list"}, "data": {"type": "array", "items": _ref("Model")}},
        "object",
        "data",
    ),
    "ResponsesRequest": {
        **_obj(
            {
                "model": {"type": "string", "minLength": 1},
                "input": {
                    "anyOf": [
                        _STR,
                        {"type": "array", "items": _RESPONSES_ITEM, "minItems": 1},
                    ]
                },
                "instructions": _nullable(_STR),
                "max_output_tokens": _MAX_TOKENS,
                "temperature": {"type": "number", "minimum": 0, "maximum": 2},
                "top_p": {"type": "number", "minimum": 0, "maximum": 1},
                "stream": _BOOL,
                "metadata": {
                    "type": "object",
                    "additionalProperties": _STR,
                    "maxProperties": 16,
                },
                "tools": {"type": "array", "items": _RESPONSES_TOOL, "maxItems": 128},
                "tool_choice": {
                    "anyOf": [
                        {"enum": ["none", "auto", "required"]},
                        _obj({"type": {"const": "function"}, "name": _STR}, "type", "name"),
                    ]
                },
                "parallel_tool_calls": _BOOL,
                "text": _obj({"format": _RESPONSES_FORMAT}),
                "store": {"const": False},
                "user": _STR,
            },
            "model",
            "input",
        ),
        "dependentRequired": {"tool_choice": ["tools"]},
    },
    "Response": _obj(
        {
            "id": _STR,
            "object": {"const": "response"},
            "created_at": _INT,
            "status": {"enum": ["completed", "incomplete", "failed", "in_progress"]},
            "model": _STR,
            "output": {"type": "array", "items": _obj({"type": _STR, "id": _STR}, "type")},
            "usage": _nullable(_OBJ),
        },
        "id",
        "object",
        "created_at",
        "status",
        "model",
        "output",
    ),
    "MessagesRequest": {
        **_obj(
            {
                "model": {"type": "string", "minLength": 1},
                "max_tokens": _MAX_TOKENS,
                "messages": _ANTHROPIC_MESSAGES,
                "system": _ANTHROPIC_SYSTEM,
                "stop_sequences": {
                    "type": "array",
                    "items": {"type": "string", "minLength": 1},
                    "maxItems": MAX_STOP_SEQUENCES,
                },
                "temperature": {"type": "number", "minimum": 0, "maximum": 1},
                "top_p": {"type": "number", "minimum": 0, "maximum": 1},
                "stream": _BOOL,
                "tools": {"type": "array", "items": _ANTHROPIC_TOOL, "maxItems": 128},
                "tool_choice": _ANTHROPIC_TOOL_CHOICE,
                "metadata": _OBJ,
            },
            "model",
            "max_tokens",
            "messages",
        ),
        "dependentRequired": {"tool_choice": ["tools"]},
    },
    "CountTokensRequest": {
        **_obj(
            {
                "model": {"type": "string", "minLength": 1},
                "messages": _ANTHROPIC_MESSAGES,
                "system": _ANTHROPIC_SYSTEM,
                "tools": {"type": "array", "items": _ANTHROPIC_TOOL, "maxItems": 128},
                "tool_choice": _ANTHROPIC_TOOL_CHOICE,
            },
            "model",
            "messages",
        ),
        "dependentRequired": {"tool_choice": ["tools"]},
    },
    "Message": _obj(
        {
            "id": _STR,
            "type": {"const": "message"},
            "role": {"const": "assistant"},
            "model": _STR,
            "content": {"type": "array", "items": _obj({"type": _STR}, "type")},
            "stop_reason": _nullable(_STR),
            "stop_sequence": _nullable(_STR),
            "usage": _obj({"input_tokens": _INT, "output_tokens": _INT}, "input_tokens"),
        },
        "id",
        "type",
        "role",
        "model",
        "content",
        "usage",
    ),
    "TokenCount": _obj({"input_tokens": _INT}, "input_tokens"),
    "Health": _obj({"status": {"enum": ["ok", "degraded"]}}, "status"),
    "WorkerSpec": _obj(
        {
            "model": {"type": "string", "minLength": 1},
            "hive": _STR,
            "engine": {"enum": ["auto", "llamacpp", "mlx", "exllamav2"]},
            "device": _STR,
            "ctx_size": {"type": "integer", "minimum": 1},
            "threads": {"type": "integer", "minimum": 1},
            "embeddings": _BOOL,
            "cpu_repack": {"enum": ["auto", "on", "off"]},
        },
        "model",
    ),
    "Worker": _obj({"id": _STR, "model": _STR, "state": _STR}, "id", "model", "state"),
    "WorkerList": _obj({"data": {"type": "array", "items": _ref("Worker")}}, "data"),
    "Hive": _obj({"name": _STR, "state": _STR}, "name", "state"),
    "HiveList": _obj({"data": {"type": "array", "items": _ref("Hive")}}, "data"),
    "HiveModels": _obj({"object": {"const": "list"}, "hive": _STR, "data": {"type": "array"}}),
    "JobRequest": _obj(
        {
            "operation": {
                "anyOf": [
                    {
                        "allOf": [
                            _ref("WorkerSpec"),
                            _obj({"kind": {"const": "worker.spawn"}}, "kind"),
                        ]
                    },
                    _obj(
                        {
                            "kind": {"enum": ["hive.install", "hive.start", "hive.stop"]},
                            "alias": _STR,
                        },
                        "kind",
                        "alias",
                    ),
                ]
            }
        },
        "operation",
    ),
    "JobAccepted": _obj({"job_id": _STR, "kind": _STR, "state": _STR}, "job_id", "kind", "state"),
    "Job": _obj(
        {
            "object": {"const": "job"},
            "job_id": _STR,
            "kind": _STR,
            "state": {"enum": ["queued", "running", "succeeded", "failed", "cancelled"]},
        },
        "job_id",
        "kind",
        "state",
    ),
    "JobList": _obj({"data": {"type": "array", "items": _ref("Job")}}, "data"),
    "PolicyUpdate": _obj(
        {"autoload": _BOOL, "idle_ttl": {"type": "number", "minimum": 0}},
    ),
    "Policy": _obj(
        {"model": _STR, "autoload": _BOOL, "idle_ttl": _NUM, "remote": _BOOL, "own": _BOOL},
        "model",
        "autoload",
        "idle_ttl",
    ),
    "Dashboard": _obj(
        {
            "object": {"const": "dashboard"},
            "at": _NUM,
            "queen": _OBJ,
            "hives": {"type": "array"},
            "workers": {"type": "array"},
            "models": {"type": "array"},
            "jobs": {"type": "array"},
            "requests": {"type": "array"},
            "recent": {"type": "array", "items": _ref("AnsweredRequest")},
            "sweep": {"oneOf": [{"type": "null"}, _OBJ]},
        },
        "object",
        "queen",
        "hives",
        "workers",
    ),
    "AnsweredRequest": _obj(
        {
            "at": _NUM,
            "model": _STR,
            "worker": _STR,
            "hive": _STR,
            "status": _INT,
            "stream": _BOOL,
            "duration_ms": _INT,
            "ttft_ms": {"oneOf": [{"type": "null"}, _INT]},
            "tokens": {"oneOf": [{"type": "null"}, _INT]},
        },
        "at",
        "model",
        "status",
    ),
    "LogTail": _obj(
        {"object": {"const": "log"}, "path": _STR, "lines": {"type": "array", "items": _STR}},
        "object",
        "lines",
    ),
    # OpenAPI 3.1 has `schema` of an event stream describe one event (3.2's reading, which
    # schemathesis follows): its fields as the SSE parser gives them; `data` holds one JSON
    # object (a chunk, an event, an error) or `[DONE]`.
    "SseEvent": _obj(
        {"data": _STR, "event": _STR, "id": _STR, "retry": {"type": "integer", "minimum": 0}},
        "data",
    ),
    "OpenApi": _obj({"openapi": _STR, "paths": _OBJ}, "openapi", "paths"),
}
"""The document's `components.schemas`: requests and answers, named as the routes use them."""


@dataclass(frozen=True)
class Param:
    """A path or query parameter."""

    name: str
    where: Literal["path", "query"]
    schema: Schema
    required: bool = True


@dataclass(frozen=True)
class Operation:
    """One method on one path: what it takes and what it answers (the table's row)."""

    method: str
    path: str
    summary: str
    answer: str | None
    """The success answer's schema name (None: not JSON, see `media`)."""
    request: str | None = None
    status: int = 200
    media: Answer = "json"
    params: tuple[Param, ...] = ()
    errors: Errors = "openai"
    extra_errors: tuple[int, ...] = ()
    example: Schema | None = None
    """A request body to show (tools send it as it is: a streamed one checks the SSE path)."""
    tag: str = "openai"


_ID = Param("model", "path", {"type": "string", "minLength": 1})
_WORKER = Param("worker_id", "path", {"type": "string", "minLength": 1})
_ALIAS = Param("alias", "path", {"type": "string", "minLength": 1})
_JOB = Param("job_id", "path", {"type": "string", "minLength": 1})
_POLICY_MODEL = Param("model", "path", {"type": "string", "minLength": 1})
_HELLO = [{"role": "user", "content": "Say hello."}]
_EXAMPLE_MODEL = DEFAULT_MODEL_ID

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "get", "/health", "Liveness, and a summary for a caller with the key", "Health", tag="queen"
    ),
    Operation("get", "/openapi.json", "This document", "OpenApi", tag="queen"),
    Operation("get", "/metrics", "Prometheus metrics", None, media="prometheus", tag="queen"),
    Operation("get", "/v1/models", "Models served or loadable on demand", "ModelList"),
    Operation("get", "/v1/models/{model}", "One model's entry", "Model", params=(_ID,)),
    Operation(
        "post",
        "/v1/chat/completions",
        "A chat completion, whole or streamed",
        "ChatCompletion",
        "ChatRequest",
        media="json-or-sse",
        example={"model": _EXAMPLE_MODEL, "messages": _HELLO, "max_tokens": 16, "stream": True},
    ),
    Operation(
        "post",
        "/v1/completions",
        "A text completion, whole or streamed",
        "Completion",
        "CompletionRequest",
        media="json-or-sse",
        example={"model": _EXAMPLE_MODEL, "prompt": "Once upon", "max_tokens": 16},
    ),
    Operation("post", "/v1/embeddings", "Embedding vectors", "EmbeddingList", "EmbeddingRequest"),
    Operation(
        "post",
        "/v1/responses",
        "OpenAI's Responses API (stateless)",
        "Response",
        "ResponsesRequest",
        media="json-or-sse",
        example={
            "model": _EXAMPLE_MODEL,
            "input": "Say hello.",
            "max_output_tokens": 16,
            "stream": True,
        },
    ),
    Operation(
        "post",
        "/v1/messages",
        "Anthropic's Messages API",
        "Message",
        "MessagesRequest",
        media="json-or-sse",
        example={"model": _EXAMPLE_MODEL, "messages": _HELLO, "max_tokens": 16, "stream": True},
        errors="anthropic",
        extra_errors=(529,),
        tag="anthropic",
    ),
    Operation(
        "post",
        "/v1/messages/count_tokens",
        "A prompt's tokens",
        "TokenCount",
        "CountTokensRequest",
        errors="anthropic",
        extra_errors=(529,),
        tag="anthropic",
    ),
    Operation("get", "/v1/workers", "Every worker", "WorkerList", tag="admin"),
    Operation(
        "post",
        "/v1/workers",
        "Start a worker",
        "Worker",
        "WorkerSpec",
        status=201,
        extra_errors=(409, 507),
        tag="admin",
    ),
    Operation(
        "delete",
        "/v1/workers/{worker_id}",
        "Stop a worker",
        "Worker",
        params=(_WORKER,),
        tag="admin",
    ),
    Operation(
        "post",
        "/v1/workers/{worker_id}/restart",
        "Start a worker again",
        "Worker",
        params=(_WORKER,),
        tag="admin",
    ),
    Operation("get", "/v1/hives", "Every hive", "HiveList", tag="admin"),
    Operation(
        "get",
        "/v1/hives/{alias}/models",
        "A hive's stored models",
        "HiveModels",
        params=(_ALIAS,),
        tag="admin",
    ),
    Operation(
        "post",
        "/v1/hives/{alias}/start",
        "Start a hive over SSH",
        "Hive",
        params=(_ALIAS,),
        tag="admin",
    ),
    Operation(
        "post", "/v1/hives/{alias}/stop", "Stop a hive", "Hive", params=(_ALIAS,), tag="admin"
    ),
    Operation(
        "post", "/v1/jobs", "Start a job", "JobAccepted", "JobRequest", status=202, tag="jobs"
    ),
    Operation("get", "/v1/jobs", "Every running and recent job", "JobList", tag="jobs"),
    Operation("get", "/v1/jobs/{job_id}", "A job's state", "Job", params=(_JOB,), tag="jobs"),
    Operation("delete", "/v1/jobs/{job_id}", "Cancel a job", "Job", params=(_JOB,), tag="jobs"),
    Operation(
        "get",
        "/v1/jobs/{job_id}/stream",
        "A job's events (SSE)",
        None,
        media="sse",
        params=(_JOB, Param("after", "query", {"type": "integer", "minimum": 0}, False)),
        tag="jobs",
    ),
    Operation(
        "get",
        "/v1/policies/{model}",
        "A model's policy",
        "Policy",
        params=(_POLICY_MODEL,),
        tag="admin",
    ),
    Operation(
        "put",
        "/v1/policies/{model}",
        "Change a model's policy",
        "Policy",
        "PolicyUpdate",
        params=(_POLICY_MODEL,),
        tag="admin",
    ),
    Operation("get", "/v1/dashboard", "The whole fleet in one answer", "Dashboard", tag="admin"),
    Operation(
        "get",
        "/v1/dashboard/log",
        "The tail of a log on this machine",
        "LogTail",
        params=(
            Param("worker", "query", _STR, False),
            Param("hive", "query", _STR, False),
            Param("lines", "query", {"type": "integer", "minimum": 0, "maximum": 2000}, False),
        ),
        tag="admin",
    ),
)
"""Every route of the queen, once. A route added to rbee/queen/app.py without a row here fails
tests/test_openapi.py."""


def _answer(op: Operation) -> dict[str, Any]:
    content: dict[str, Any] = {}
    if op.answer is not None:
        content["application/json"] = {"schema": _ref(op.answer)}
    if op.media in ("json-or-sse", "sse"):
        content["text/event-stream"] = {"schema": _ref("SseEvent")}
    elif op.media == "prometheus":
        content["text/plain"] = {"schema": _STR}
    return {"description": op.summary, "content": content}


def _operation(op: Operation) -> dict[str, Any]:
    error = _ref("AnthropicError" if op.errors == "anthropic" else "Error")
    statuses = sorted({*_ERROR_STATUSES, *op.extra_errors})
    if op.request is None:
        statuses.remove(413)  # no body to be too large
    responses: dict[str, Any] = {str(op.status): _answer(op)}
    for status in statuses:
        responses[str(status)] = {
            "description": "an error",
            "content": {"application/json": {"schema": error}},
        }
    out: dict[str, Any] = {
        "operationId": f"{op.method}_{op.path}".replace("/", "_").replace("{", "").replace("}", ""),
        "summary": op.summary,
        "tags": [op.tag],
        "responses": responses,
    }
    if op.params:
        out["parameters"] = [
            {"name": p.name, "in": p.where, "required": p.required, "schema": p.schema}
            for p in op.params
        ]
    if op.request is not None:
        out["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {
                    "schema": _ref(op.request),
                    **({"example": op.example} if op.example is not None else {}),
                }
            },
        }
    if op.path == "/health":
        out["security"] = []  # anyone may ask; the summary needs the key (docs/security.md)
    return out


@cache
def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the queen's API (built once; the same for every caller)."""
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "rbee queen",
            "version": __version__,
            "description": "The queen's HTTP API: docs/api.md says what each route does.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}, {"apiKey": []}],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            },
        },
    }


async def openapi(request: Request) -> Response:
    """`GET /openapi.json`: the document (it describes the API; it holds no state)."""
    return JSONResponse(document())


def openapi_routes() -> list[Route]:
    """The route serving the document."""
    return [Route("/openapi.json", openapi, methods=["GET"])]
