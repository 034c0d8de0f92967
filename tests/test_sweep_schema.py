"""The JSON schema of `rbee sweep --json` (rbee/sweep/schema.json), and a small validator of the
part of JSON Schema it uses (type, const, enum, required, properties, additionalProperties,
items, anyOf, $ref, minimum): jsonschema is not a dependency. The fleet tests validate real
sweeps with it; here, the validator is shown to catch what it must."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rbee.sweep.hive_checks import HiveFindings
from rbee.sweep.memory import Change
from rbee.sweep.probe import parse_probe
from rbee.sweep.queen_view import QueenView
from rbee.sweep.report import Action, Report, to_json
from rbee.sweep.status import Check, Status

SCHEMA = json.loads((Path(__file__).parent.parent / "rbee" / "sweep" / "schema.json").read_text())

_TYPES: dict[str, Any] = {
    "object": dict, "array": list, "string": str, "boolean": bool, "null": type(None),
    "integer": int, "number": (int, float),
}  # fmt: skip


def _type_ok(value: Any, name: str) -> bool:
    if name in ("integer", "number") and isinstance(value, bool):
        return False
    return isinstance(value, _TYPES[name])


def problems(value: Any, schema: dict[str, Any], root: dict[str, Any] = SCHEMA, at: str = "$"
             ) -> list[str]:  # fmt: skip
    """Where `value` breaks `schema` (empty: it conforms)."""
    if "$ref" in schema:
        name = schema["$ref"].removeprefix("#/$defs/")
        return problems(value, root["$defs"][name], root, at)
    if "anyOf" in schema:
        if all(problems(value, s, root, at) for s in schema["anyOf"]):
            return [f"{at}: matches none of anyOf"]
        return []
    found = []
    if "const" in schema and value != schema["const"]:
        found.append(f"{at}: {value!r} is not {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        found.append(f"{at}: {value!r} not in {schema['enum']}")
    if "type" in schema:
        names = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_type_ok(value, n) for n in names):
            return [*found, f"{at}: {type(value).__name__} is not {names}"]
    if "minimum" in schema and _type_ok(value, "number") and value < schema["minimum"]:
        found.append(f"{at}: {value} < {schema['minimum']}")
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                found.append(f"{at}: missing {key!r}")
        props = schema.get("properties", {})
        for key, item in value.items():
            if key in props:
                found += problems(item, props[key], root, f"{at}.{key}")
            elif schema.get("additionalProperties") is False:
                found.append(f"{at}: unexpected {key!r}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            found += problems(item, schema["items"], root, f"{at}[{i}]")
    return found


def validate(document: Any) -> None:
    """Fail the test with every place `document` breaks the sweep's schema."""
    found = problems(document, SCHEMA)
    assert not found, "\n".join(found)


PROBE = """home /h
install_dir /h/install
data_dir /h/.local/share/rbee
installed_version 0.1.0
disk_install_kib /dev/sda1 1048576
disk_models_kib /dev/sda1 1048576
mem_total_kib 1000000
mem_available_kib 900000
proc hive 10 9 1000 sshd /h/install/venv/bin/python /h/install/venv/bin/rbee hive run --name a
"""


def report() -> Report:
    probe = parse_probe(PROBE, 0.05)
    hive = HiveFindings("a", (Check("a", "reachable", Status.OK, "fine", 0.05),), probe,
                        probe.procs, None)  # fmt: skip
    queen = QueenView(url="http://127.0.0.1:1", up=True, pid=5, version="0.1.0", queue_depth=0)
    return Report(
        started_at="2026-01-01T00:00:00+00:00", seconds=0.1, queen=queen, hives=(hive,),
        queen_checks=(Check("queen", "up", Status.OK, "up", 1.0),),
        changes=(Change("a", "reachable", "CRITICAL", "OK"),),
        actions=(Action("a", "stop-orphan", True, "hive pid 10: gone", "10"),),
    )  # fmt: skip


def test_a_report_conforms_and_the_validator_catches_breaks() -> None:
    document = to_json(report())
    validate(document)
    assert document["status"] == "OK"
    assert document["exit_code"] == 0
    assert document["hives"][0]["orphans"][0]["pid"] == 10
    broken: list[tuple[str, Any]] = [
        ("status", "FINE"),
        ("exit_code", 4),
        ("seconds", -1),
        ("queen", {**document["queen"], "pid": "5"}),
        ("hives", [{**document["hives"][0], "extra": 1}]),
        ("changes", [{"target": "a", "check": "x", "before": "MEH", "after": None}]),
    ]
    for key, value in broken:
        assert problems({**document, key: value}, SCHEMA), key
    missing = dict(document)
    del missing["checks"]
    assert problems(missing, SCHEMA) == ["$: missing 'checks'"]


@pytest.mark.parametrize("status", list(Status))
def test_each_status_is_in_the_schema(status: Status) -> None:
    assert status.name in SCHEMA["$defs"]["status"]["enum"]
    assert int(status) in SCHEMA["properties"]["exit_code"]["enum"]
