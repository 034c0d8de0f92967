"""`response_format`: structured outputs, parsed and checked before any engine sees them.

`{"type": "json_object"}` asks for any JSON object; `{"type": "json_schema", "json_schema": {"name",
"schema", "strict"}}` for an answer valid against a JSON Schema. Every engine enforces either one
by constrained decoding (llguidance: rbee.engines.grammar), so the schema must be one the grammar
compiler can enforce whole: a keyword it cannot enforce (`not`, `if`, `uniqueItems`, an unknown
`format`, a regex with look-around, a `$ref` that loops on itself, ...) is refused with a 400 that
names the keyword's path, e.g. `response_format.json_schema.schema.properties.tags.uniqueItems`,
never silently dropped. The schema is bounded before it is compiled: 64 KiB as compact JSON,
nested at most 64 levels (objects and arrays of the document).

Parsing stays pure (no I/O): the checks and the grammar are computed by llguidance, in process, the
same way on the queen and on the worker. The grammar travels in the parsed request, so an engine
only binds it to its tokenizer.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from rbee.errors import ApiError

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

__all__ = [
    "MAX_SCHEMA_BYTES",
    "MAX_SCHEMA_DEPTH",
    "SUPPORTED_FORMATS",
    "ResponseFormat",
    "json_object_format",
    "json_schema_format",
    "parse_response_format",
]

MAX_SCHEMA_BYTES = 64 * 1024
"""The largest schema accepted, in bytes of compact JSON."""
MAX_SCHEMA_DEPTH = 64
"""How deeply a schema document may nest objects and arrays."""

SUPPORTED_FORMATS = frozenset(
    {"date-time", "date", "time", "duration", "email", "hostname", "ipv4", "ipv6", "uri", "uuid"}
)
"""The string `format`s the grammar enforces; any other is refused rather than ignored."""

# JSON Schema keywords the grammar compiler does not implement: a schema using one is refused.
_UNSUPPORTED = frozenset(
    {
        "not",
        "if",
        "then",
        "else",
        "uniqueItems",
        "contains",
        "minContains",
        "maxContains",
        "propertyNames",
        "dependentRequired",
        "dependentSchemas",
        "dependencies",
        "unevaluatedProperties",
        "unevaluatedItems",
        "$dynamicRef",
        "$dynamicAnchor",
        "$recursiveRef",
        "$recursiveAnchor",
    }
)
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions")
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
_SCHEMA_ONE = ("additionalProperties", "additionalItems")
_TYPES = frozenset({"string", "number", "integer", "boolean", "object", "array", "null"})
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_LOCATE_TRIES = 64

# How answers are written: one line, `{"a": 1, "b": [2, 3]}`. Flexible whitespace would let a
# model pad an answer with spaces and newlines until max_tokens; none of these can be overridden
# by the schema's own "x-guidance" options, and `lenient` (dropping unknown keywords) stays off.
_COMPILE_OPTIONS: JsonCompileOptions = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
    "lenient": False,
    "coerce_one_of": False,
}


@dataclass(frozen=True)
class ResponseFormat:
    """A `response_format` that constrains the answer: its kind, schema and compiled grammar."""

    type: Literal["json_object", "json_schema"]
    schema: str
    """The schema as compact JSON (`{"type": "object"}` for json_object)."""
    grammar: str
    """The llguidance grammar enforcing it, to bind to a model's tokenizer."""
    name: str | None = None
    strict: bool = False
    """What the client asked for; rbee enforces the schema either way."""


def _bad(param: str, message: str, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _depth_within(value: Any, limit: int) -> bool:
    """True if `value` nests objects and arrays at most `limit` levels deep (no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            if depth > limit:
                return False
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children)
    return True


def _pointer(root: dict[str, Any], ref: str) -> Any:
    """The node a local `$ref` ("#", "#/a/b") points at; KeyError if there is none."""
    if ref == "#":
        return root
    node: Any = root
    for raw in ref[2:].split("/"):
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise KeyError(ref)
    return node


def _compile(schema: dict[str, Any]) -> tuple[str, str]:
    """The llguidance grammar for `schema`, and why it cannot be enforced ("" if it can)."""
    from llguidance import LLMatcher  # noqa: PLC0415 - loaded on the first structured request

    try:
        grammar = LLMatcher.grammar_from_json_schema(schema, overrides=_COMPILE_OPTIONS)
    except ValueError as err:
        # llguidance writes the schema out as JSON itself and refuses what it cannot hold: an
        # integer beyond 64 bits ("Value is not JSON serializable"). A 400, not a 500.
        return "", f"rbee cannot enforce this schema: {str(err)[:200]}"
    is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar)
    if not is_error:
        return grammar, ""
    return grammar, _reason(messages[0] if messages else "")


def _reason(message: str) -> str:
    """The line of a compiler message that says what is wrong, in terms a client can act on."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if not lines:
        return "the grammar compiler refused it"
    # A regex error shows the pattern and a caret under the fault, then "error: ..."; other
    # errors come first, followed by "while processing <where>" lines.
    reason = next((line for line in lines if line.startswith("error:")), lines[0])
    if reason.startswith("oneOf constraints are not supported"):
        # The compiler's own advice names an option of its own, which a client cannot set.
        return "oneOf is enforced only when its branches cannot overlap; use anyOf instead"
    return reason


@dataclass
class _Node:
    path: str
    schema: dict[str, Any]
    children: list[_Node] = field(default_factory=list)
    local_refs: bool = True
    """Every `$ref` in it (if any) points into the root's `$defs` or `definitions`, so it compiles
    alone once those are attached."""
    target: int | None = None
    """The id() of the schema its own `$ref` points at."""


class _Walker:
    """Checks a schema document node by node, naming the path of what it refuses, and keeps the
    tree of its subschemas to find what the compiler refuses in the whole (see `locate`)."""

    def __init__(self, root: dict[str, Any], param: str) -> None:
        self.root = root
        self.param = param
        self.defs = {k: root[k] for k in ("$defs", "definitions") if isinstance(root.get(k), dict)}
        self.nodes: dict[int, _Node] = {}
        """Every subschema's tree node by the id() of the schema."""

    def walk(self, node: Any, path: str) -> _Node | None:
        """Check `node`; its tree node (None for a boolean schema)."""
        if isinstance(node, bool):
            return None
        if not isinstance(node, dict):
            raise _bad(
                path,
                f"{path} must be a JSON Schema (an object or a boolean), got {_type_name(node)}",
                "invalid_type",
            )
        tree = self.nodes[id(node)] = _Node(path, node)
        for key, value in node.items():
            where = f"{path}.{key}"
            if key in _UNSUPPORTED or (key == "x-guidance" and node is self.root):
                raise _bad(
                    where,
                    f"rbee cannot enforce the JSON Schema keyword {key!r} ({where}); "
                    "remove it or express the constraint another way",
                    "unsupported_parameter",
                )
            if key == "$ref":
                tree.local_refs &= self._ref(value, where)
                tree.target = id(_pointer(self.root, value))
            elif key == "type":
                self._type(value, where)
            elif key == "format":
                self._format(value, where)
            elif key == "pattern":
                if not isinstance(value, str):
                    raise _bad(where, f"{where} must be a string", "invalid_type")
            elif key == "required":
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise _bad(where, f"{where} must be a list of property names", "invalid_type")
            elif key == "enum":
                if not isinstance(value, list):
                    raise _bad(where, f"{where} must be a list", "invalid_type")
            elif key in _SCHEMA_MAPS:
                if not isinstance(value, dict):
                    raise _bad(where, f"{where} must be an object of schemas", "invalid_type")
                for name, sub in value.items():
                    self._add(tree, self.walk(sub, f"{where}.{name}"))
            elif key in _SCHEMA_LISTS or (key == "items" and isinstance(value, list)):
                if not isinstance(value, list):
                    raise _bad(where, f"{where} must be a list of schemas", "invalid_type")
                for i, sub in enumerate(value):
                    self._add(tree, self.walk(sub, f"{where}[{i}]"))
            elif key in _SCHEMA_ONE or key == "items":
                self._add(tree, self.walk(value, where))
        return tree

    @staticmethod
    def _add(tree: _Node, child: _Node | None) -> None:
        if child is not None:
            tree.children.append(child)
            tree.local_refs &= child.local_refs

    def _type(self, value: Any, where: str) -> None:
        names = value if isinstance(value, list) and value else [value]
        bad = next((n for n in names if not isinstance(n, str) or n not in _TYPES), None)
        if bad is not None or (isinstance(value, list) and not value):
            raise _bad(
                where,
                f"{where} must be one of {', '.join(sorted(_TYPES))} or a list of them, "
                f"got {value!r:.100}",
            )

    def _format(self, value: Any, where: str) -> None:
        if not isinstance(value, str) or value not in SUPPORTED_FORMATS:
            raise _bad(
                where,
                f"rbee cannot enforce the format {value!r:.100} ({where}); it enforces "
                f"{', '.join(sorted(SUPPORTED_FORMATS))}",
                "unsupported_parameter",
            )

    @staticmethod
    def _pattern_fault(node: _Node) -> tuple[str, str] | None:
        """The path of a regex in `node` itself (its `pattern`, a `patternProperties` key) that
        the compiler cannot take, and why; None if they all compile."""
        schema = node.schema
        regexes = []
        if isinstance(schema.get("pattern"), str):
            regexes.append(
                (f"{node.path}.pattern", {"type": "string", "pattern": schema["pattern"]})
            )
        if isinstance(schema.get("patternProperties"), dict):
            regexes += [
                (f"{node.path}.patternProperties.{k}", {"patternProperties": {k: {}}})
                for k in schema["patternProperties"]
            ]
        for where, alone in regexes[:_LOCATE_TRIES]:
            _, why = _compile(alone)
            if why:
                return where, f"rbee cannot enforce the regex ({where}): {why}"
        return None

    def _ref(self, value: Any, where: str) -> bool:
        """Check a `$ref`: local, pointing at something, not a loop of references alone.
        True if it points into the root's $defs or definitions."""
        if not isinstance(value, str):
            raise _bad(where, f"{where} must be a string", "invalid_type")
        seen: set[int] = set()
        ref: Any = value
        while isinstance(ref, str):
            if ref != "#" and not ref.startswith("#/"):
                raise _bad(
                    where,
                    f"{where} is {value[:100]!r}: only references within the schema "
                    '("#/$defs/Name") are supported',
                    "unsupported_parameter",
                )
            try:
                target = _pointer(self.root, ref)
            except KeyError:
                raise _bad(where, f"{where}: {ref[:100]!r} points at nothing") from None
            if id(target) in seen:
                raise _bad(
                    where,
                    f"{where}: the reference {value[:100]!r} leads back to itself through "
                    "$ref alone, so it describes no value",
                )
            seen.add(id(target))
            ref = target.get("$ref") if isinstance(target, dict) else None
        return value.startswith(("#/$defs/", "#/definitions/"))

    def locate(self, tree: _Node, why: str) -> tuple[str, str]:
        """Where in the schema the compiler's refusal `why` (which names no path) lies: from
        the root down (through subschemas, and into what a `$ref` points at), the first
        subschema it also refuses on its own, as deep as that goes within a bounded number of
        compilations. The root's path and `why` otherwise."""
        where, tries = (tree.path, why), _LOCATE_TRIES
        node: _Node | None = tree
        while node is not None and tries > 0:
            found = None
            followed = self.nodes.get(node.target) if node.target is not None else None
            for child in [*node.children, *([followed] if followed is not None else [])]:
                if not child.local_refs or tries <= 0:
                    continue
                tries -= 1
                _, child_why = _compile({**child.schema, **self.defs})
                if child_why:
                    found, where = child, (child.path, child_why)
                    break
            if found is None and node is not None:
                # Nothing below it is refused alone: a regex of its own may be what is.
                fault = self._pattern_fault(node)
                if fault is not None:
                    return fault[0], fault[1]
            node = found
        return where


def json_schema_format(
    schema: Any, *, param: str, name: str | None = None, strict: bool = False
) -> ResponseFormat:
    """A json_schema ResponseFormat for `schema` (the value at `param`), or ApiError(400) naming
    the part of it that rbee cannot take: too big, too deep, or not enforceable."""
    if not isinstance(schema, dict):
        raise _bad(
            param,
            f"{param} must be a JSON Schema object, got {_type_name(schema)}",
            "invalid_type",
        )
    if not _depth_within(schema, MAX_SCHEMA_DEPTH):
        raise _bad(param, f"{param} nests deeper than {MAX_SCHEMA_DEPTH} levels")
    try:
        text = json.dumps(schema, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError as err:
        raise _bad(param, f"{param} is not valid JSON: {err}") from err
    size = len(text.encode())
    if size > MAX_SCHEMA_BYTES:
        raise _bad(
            param, f"{param} is {size} bytes as JSON; at most {MAX_SCHEMA_BYTES} are accepted"
        )
    grammar, fault = _checked(text, param)
    if fault is not None:
        raise _bad(*fault)
    return ResponseFormat("json_schema", text, grammar, name=name, strict=strict)


@functools.lru_cache(maxsize=64)
def _checked(text: str, param: str) -> tuple[str, tuple[str, str, str] | None]:
    """The grammar for the schema `text` (the value at `param`), or why it cannot be enforced:
    (param, message, code) of the 400. Clients send the same schemas again and again, and a
    big one takes the compiler tens of milliseconds: the last few are remembered."""
    schema = json.loads(text)
    walker = _Walker(schema, param)
    try:
        tree = walker.walk(schema, param)
    except ApiError as err:
        return "", (err.param or param, err.message, err.code or "invalid_value")
    grammar, why = _compile(schema)
    if not why:
        return grammar, None
    assert tree is not None  # the root is an object
    where, why = walker.locate(tree, why)
    message = (
        why
        if why.startswith("rbee cannot")
        else f"rbee cannot enforce this schema ({where}): {why}"
    )
    code = (
        "unsupported_parameter"
        if why.startswith("rbee cannot enforce the regex")
        else "invalid_value"
    )
    return "", (where, message, code)


@functools.cache
def json_object_format() -> ResponseFormat:
    """The json_object ResponseFormat: the answer is one JSON object (compiled once)."""
    schema = {"type": "object"}
    grammar, _ = _compile(schema)
    return ResponseFormat("json_object", json.dumps(schema), grammar)


def parse_response_format(
    body: dict[str, Any], key: str = "response_format"
) -> ResponseFormat | None:
    """The `response_format` of a chat request body; None for text (the default)."""
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _bad(key, f"{key} must be an object, got {_type_name(value)}", "invalid_type")
    kind = value.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return json_object_format()
    if kind != "json_schema":
        raise _bad(
            f"{key}.type",
            f'{key}.type must be "text", "json_object" or "json_schema", got {kind!r}',
        )
    spec = value.get("json_schema")
    param = f"{key}.json_schema"
    if spec is None:
        raise _bad(
            param, f'{param} is required when type is "json_schema"', "missing_required_parameter"
        )
    if not isinstance(spec, dict):
        raise _bad(param, f"{param} must be an object, got {_type_name(spec)}", "invalid_type")
    name = spec.get("name")
    if name is None:
        raise _bad(f"{param}.name", f"{param}.name is required", "missing_required_parameter")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise _bad(
            f"{param}.name",
            f"{param}.name must be 1 to 64 letters, digits, underscores or dashes, "
            f"got {str(name)[:80]!r}",
        )
    strict = spec.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise _bad(
            f"{param}.strict",
            f"{param}.strict must be a boolean, got {_type_name(strict)}",
            "invalid_type",
        )
    if "schema" not in spec:
        raise _bad(f"{param}.schema", f"{param}.schema is required", "missing_required_parameter")
    return json_schema_format(
        spec["schema"], param=f"{param}.schema", name=name, strict=bool(strict)
    )
