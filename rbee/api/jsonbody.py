"""Strict JSON request bodies: what Python's json module accepts but no request may carry.

`json.loads` takes a body nested thousands deep (and then fails with RecursionError, or leaves a
structure every later walk recurses through), integer literals of any length (past 4300 digits it
raises ValueError), `NaN`/`Infinity` and `1e999`, and strings holding lone UTF-16 surrogates
(`"\\ud800"`) that no encoder can write back out. Each of these reached a 500 somewhere down the
line; here each is refused with a 400 that names the field it sits in, before any parser sees it.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from rbee.errors import ApiError

__all__ = ["MAX_DEPTH", "MAX_NUMBER_DIGITS", "decode_body"]

MAX_DEPTH = 64
"""Arrays and objects one body may nest (a JSON schema in `response_format` needs a dozen)."""
MAX_NUMBER_DIGITS = 40
"""Characters one number literal may have (a 64-bit seed has 20)."""

_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}|\xed[\xa0-\xbf]")
"""Where a lone surrogate could come from: a `\\uD800`-`\\uDFFF` escape, or its raw UTF-8-like
bytes (json.loads decodes bytes with `surrogatepass`)."""


class _Refused:
    """Stands in for a number the body must not carry, until the walk names its field."""

    def __init__(self, literal: str, why: str) -> None:
        self.literal = literal
        self.why = why


def _number_hooks(refused: list[_Refused]) -> dict[str, Any]:
    """json.loads hooks that turn each number the body must not carry into a _Refused (kept in
    `refused` too, so a body without any skips the walk that names its field)."""

    def refuse(literal: str, why: str) -> _Refused:
        refused.append(_Refused(literal, why))
        return refused[-1]

    def parse_int(literal: str) -> int | _Refused:
        if len(literal) > MAX_NUMBER_DIGITS:
            return refuse(literal, f"has {len(literal)} digits; at most {MAX_NUMBER_DIGITS} may")
        return int(literal)

    def parse_float(literal: str) -> float | _Refused:
        if len(literal) > MAX_NUMBER_DIGITS:
            return refuse(
                literal, f"has {len(literal)} characters; at most {MAX_NUMBER_DIGITS} may"
            )
        value = float(literal)
        if not math.isfinite(value):
            return refuse(literal, "is out of a 64-bit float's range")
        return value

    def parse_constant(literal: str) -> _Refused:
        return refuse(literal, "is not a JSON number (NaN and Infinity are not JSON)")

    return {"parse_int": parse_int, "parse_float": parse_float, "parse_constant": parse_constant}


def _param(path: list[str | int]) -> str | None:
    """`path` as a field name (`messages[0].content`); a key is cut to a short prefix and its
    lone surrogates written as escapes, so the answer itself can always be encoded."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        key = part[:40].encode("utf-8", "backslashreplace").decode()
        out += f".{key}" if out else key
    return out or None


def _bad_string(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _walk(value: Any, check_strings: bool) -> None:
    """Refuse the first thing in `value` nested too deep, a refused number or (when
    `check_strings`) a string with a lone surrogate, naming its field. Iterative: the point is
    not to recurse through what a client sent."""
    stack: list[tuple[Any, list[str | int]]] = [(value, [])]
    while stack:
        item, path = stack.pop()
        if isinstance(item, dict | list):
            if len(path) >= MAX_DEPTH:
                raise ApiError(
                    400,
                    f"the request body nests arrays and objects more than {MAX_DEPTH} deep",
                    param=_param(path[:8]),
                    code="invalid_json",
                )
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            for key, child in pairs:
                where = [*path, key]
                if check_strings and isinstance(key, str) and _bad_string(key):
                    raise _surrogate(where)
                if isinstance(child, dict | list | _Refused) or (
                    check_strings and isinstance(child, str)
                ):
                    stack.append((child, where))
        elif isinstance(item, _Refused):
            raise ApiError(
                400,
                f"{_param(path) or 'the body'}: the number {item.literal[:24]!r}"
                f"{'...' if len(item.literal) > 24 else ''} {item.why}",
                param=_param(path),
                code="invalid_value",
            )
        elif check_strings and isinstance(item, str) and _bad_string(item):
            raise _surrogate(path)


def _surrogate(path: list[str | int]) -> ApiError:
    where = _param(path) or "the body"
    return ApiError(
        400,
        f"{where}: the string holds a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff), "
        "which is not Unicode text",
        param=_param(path),
        code="invalid_unicode",
    )


def decode_body(raw: bytes) -> Any:
    """The JSON value of a request body, refused with a 400 (naming the field) when it is not
    strict JSON: malformed, nested past MAX_DEPTH, a number past MAX_NUMBER_DIGITS or past a
    float's range, NaN/Infinity, or a string with a lone surrogate."""
    if not raw.strip():
        raise ApiError(400, "the request body is empty; send a JSON object")
    refused: list[_Refused] = []
    try:
        value = json.loads(raw, **_number_hooks(refused))
    except RecursionError:
        raise ApiError(
            400,
            f"the request body nests arrays and objects more than {MAX_DEPTH} deep",
            code="invalid_json",
        ) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ApiError(400, f"the request body is not valid JSON: {err}") from None
    # Most bodies cannot nest deep (too few brackets) nor hold a surrogate: they skip the walk.
    nested = raw.count(b"[") + raw.count(b"{") > MAX_DEPTH
    check_strings = _SURROGATE.search(raw) is not None
    if refused or nested or check_strings:
        _walk(value, check_strings)
    return value
