"""Job wire types: the operation a job runs, and the progress events it reports.

`POST /v1/jobs` carries `{"operation": {"kind": "...", ...}}`. Each kind has a parser that turns
its fields into a frozen dataclass and refuses a wrong field with a 400 naming it
(`operation.model`). The parsers form a plain mapping passed to whoever parses, so a queen (or a
test) decides which kinds it accepts; `OPERATION_PARSERS` holds rbee's own.

A job reports `JobEvent`s: steps (`[1/2] fetching model`), log lines, progress of a transfer, and
one final event, `done` or `error`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, Literal, Protocol, get_args

from rbee.api.workers import WorkerSpec, parse_worker_spec
from rbee.errors import ApiError

__all__ = [
    "OPERATION_PARSERS",
    "HiveAction",
    "JobEvent",
    "JobEventType",
    "JobState",
    "Operation",
    "OperationParser",
    "WorkerSpawn",
    "check_fields",
    "field_error",
    "parse_operation",
]

JobEventType = Literal["step", "log", "progress", "done", "error"]
JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
_EVENT_TYPES = get_args(JobEventType)


class Operation(Protocol):
    """A parsed operation: a frozen dataclass that knows its kind and its JSON form."""

    @property
    def kind(self) -> str:
        """The operation's kind, such as `worker.spawn`."""
        ...

    def to_json(self) -> dict[str, Any]:
        """The operation as JSON, `kind` included."""
        ...


OperationParser = Callable[[Mapping[str, Any]], Operation]
"""Parses the fields of one kind of operation; raises ApiError(400) naming `operation.FIELD`."""


def field_error(err: ApiError) -> ApiError:
    """`err` (about a body field) restated about the same field of `operation`."""
    param = f"operation.{err.param}" if err.param else "operation"
    message = err.message
    if err.param and message.startswith(err.param):
        message = "operation." + message
    else:
        message = f"{param}: {message}"
    return ApiError(err.status, message, type=err.type, param=param, code=err.code)


def check_fields(raw: Mapping[str, Any], kind: str, allowed: tuple[str, ...]) -> None:
    """Refuse a field that `kind` does not have (a typo would otherwise pass unnoticed)."""
    for key in raw:
        if key != "kind" and key not in allowed:
            raise ApiError(
                400,
                f"operation.{str(key)[:40]} is not a field of {kind} "
                f"(fields: {', '.join(allowed)})",
                param=f"operation.{str(key)[:40]}",
            )


@dataclass(frozen=True)
class WorkerSpawn:
    """Start a worker, fetching its model first if the store lacks it."""

    spec: WorkerSpec
    hive: str | None = None
    """The hive to start it on; None means the queen's own machine."""
    kind: ClassVar[str] = "worker.spawn"

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> WorkerSpawn:
        """Parse `{"kind": "worker.spawn", "model", "engine"?, "device"?, ..., "hive"?}`."""
        fields = (*(f.name for f in dataclasses.fields(WorkerSpec)), "hive")
        check_fields(raw, cls.kind, fields)
        hive = raw.get("hive")
        if hive is not None and (
            not isinstance(hive, str) or not hive or not hive.isprintable() or len(hive) > 64
        ):
            raise ApiError(400, "operation.hive must be a hive alias", param="operation.hive")
        spec = {k: v for k, v in raw.items() if k != "hive"}
        try:
            return cls(parse_worker_spec(spec), hive)
        except ApiError as err:
            raise field_error(err) from None

    def to_json(self) -> dict[str, Any]:
        """The operation as JSON."""
        return {"kind": self.kind, **dataclasses.asdict(self.spec), "hive": self.hive}


_ALIAS = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class HiveAction:
    """Install, start or stop a hive from hives.conf over SSH (`hive.install|start|stop`)."""

    alias: str
    kind: str

    @classmethod
    def parser(cls, kind: str) -> OperationParser:
        """The parser of `{"kind": kind, "alias"}`."""

        def parse(raw: Mapping[str, Any]) -> HiveAction:
            check_fields(raw, kind, ("alias",))
            alias = raw.get("alias")
            if not isinstance(alias, str) or not _ALIAS.fullmatch(alias):
                raise ApiError(400, "operation.alias must be a hive alias from hives.conf",
                               param="operation.alias")  # fmt: skip
            return cls(alias, kind)

        return parse

    def to_json(self) -> dict[str, Any]:
        """The operation as JSON."""
        return {"kind": self.kind, "alias": self.alias}


OPERATION_PARSERS: Mapping[str, OperationParser] = MappingProxyType(
    {
        WorkerSpawn.kind: WorkerSpawn.parse,
        "hive.start": HiveAction.parser("hive.start"),
        "hive.stop": HiveAction.parser("hive.stop"),
        "hive.install": HiveAction.parser("hive.install"),
    }
)
"""The operation kinds rbee itself defines."""


def parse_operation(body: Any, parsers: Mapping[str, OperationParser]) -> Operation:
    """Parse a `POST /v1/jobs` body against `parsers`; 400 naming the field that is wrong."""
    known = ", ".join(sorted(parsers)) or "none"
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    raw = body.get("operation")
    if not isinstance(raw, dict):
        raise ApiError(
            400,
            'operation is required: an object such as {"kind": "worker.spawn", '
            '"model": "smollm2-135m"}',
            param="operation",
        )
    kind = raw.get("kind")
    if not isinstance(kind, str) or not kind:
        raise ApiError(
            400, f"operation.kind is required (known kinds: {known})", param="operation.kind"
        )
    parser = parsers.get(kind)
    if parser is None:
        raise ApiError(
            400,
            f"unknown operation kind {kind[:60]!r} (known kinds: {known})",
            param="operation.kind",
            code="unknown_operation",
        )
    return parser(raw)


def _optional_int(raw: Mapping[str, Any], name: str) -> int | None:
    value = raw.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise TypeError(f"job event field {name!r} must be an integer or null, got {value!r}")
    return value


@dataclass(frozen=True)
class JobEvent:
    """One thing a job reports; `seq` counts from 1 within its job."""

    seq: int
    job_id: str
    type: JobEventType
    message: str
    step: int | None = None
    steps: int | None = None
    done: int | None = None
    total: int | None = None
    at: float = 0.0

    @property
    def final(self) -> bool:
        """True for the last event of a job (`done` or `error`)."""
        return self.type in ("done", "error")

    def to_json(self) -> dict[str, Any]:
        """The event as JSON."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, raw: Any) -> JobEvent:
        """Parse an event; ValueError or TypeError naming the field that is wrong."""
        if not isinstance(raw, dict):
            raise TypeError("a job event must be a JSON object")
        seq = raw.get("seq")
        if isinstance(seq, bool) or not isinstance(seq, int):
            raise TypeError(f"job event field 'seq' must be an integer, got {seq!r}")
        for name in ("job_id", "message"):
            if not isinstance(raw.get(name), str):
                raise TypeError(f"job event field {name!r} must be a string")
        if raw.get("type") not in _EVENT_TYPES:
            raise ValueError(f"job event type {raw.get('type')!r} is not one of {_EVENT_TYPES}")
        at = raw.get("at", 0.0)
        if isinstance(at, bool) or not isinstance(at, int | float):
            raise TypeError(f"job event field 'at' must be a number, got {at!r}")
        return cls(
            seq=seq,
            job_id=raw["job_id"],
            type=raw["type"],
            message=raw["message"],
            step=_optional_int(raw, "step"),
            steps=_optional_int(raw, "steps"),
            done=_optional_int(raw, "done"),
            total=_optional_int(raw, "total"),
            at=float(at),
        )
