"""Worker wire types shared by hives and the queen: what to run, and what is running.

A `WorkerSpec` is what `POST /v1/workers` asks for; a `WorkerInfo` is what hives report. Both
cross the wire as JSON (a remote hive reports its workers to the queen over HTTP), so each has a
strict parser that names the field that is wrong.
"""

from __future__ import annotations

import dataclasses
import re
import signal
from dataclasses import dataclass
from typing import Any, Literal, get_args

from rbee.errors import (
    ApiError,
    ConfigError,
    HiveNotStartedError,
    HiveUnavailableError,
    InsufficientMemoryError,
    ModelError,
    SelectionError,
    SshError,
    UnknownModelError,
    WorkerExistsError,
    WorkerNotFoundError,
)

__all__ = [
    "LIVE_STATES",
    "REPACK_SETTINGS",
    "WorkerInfo",
    "WorkerSpec",
    "WorkerState",
    "exit_description",
    "parse_worker_info",
    "parse_worker_spec",
    "spawn_error",
    "validate_worker_id",
]

WorkerState = Literal["starting", "ready", "restarting", "crash-loop", "stopping", "exited"]
"""A worker's life: `starting` (loading, then one warm-up decode) → `ready`; an unexpected exit
→ `restarting` (after a backoff) → `starting` again, or, after too many crashes, `crash-loop`
(`error` says why) until `rbee worker restart`; `stopping` → `exited` when asked to stop."""
LIVE_STATES: frozenset[str] = frozenset({"starting", "ready", "restarting"})
"""States of a worker that serves now or is about to (a request may wait for it)."""
REPACK_SETTINGS = ("auto", "on", "off")
_MAX_CTX = 1 << 20
_WORKER_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,79}")


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker should run."""

    model: str
    engine: str = "auto"
    """llamacpp, mlx, exllamav2, or auto: the hive picks by its hardware (rbee.engines.select)."""
    device: str = "auto"
    """cpu, cuda:N, metal:0, or auto."""
    ctx_size: int = 4096
    threads: int = 0
    embeddings: bool = False
    """Load the model for `/v1/embeddings` (it then serves nothing else)."""
    cpu_repack: str = "auto"
    """llama.cpp's weight repacking for the CPU: on, off, or auto (rbee.engines.repack decides)."""
    max_queued: int = 8
    """Requests it holds waiting behind the one it generates; more are refused (503)."""
    max_queued_tokens: int = 0
    """Prompt tokens it holds waiting (0: four times its context length)."""


@dataclass(frozen=True)
class WorkerInfo:
    """A snapshot of one worker, as its hive reports it."""

    id: str
    model: str
    engine: str
    device: str
    state: WorkerState
    pid: int | None = None
    port: int | None = None
    started_at: float = 0.0
    exit_code: int | None = None
    log_path: str = ""
    context_length: int = 0
    embeddings: bool = False
    """The model was loaded for embeddings: route `/v1/embeddings` here and nothing else."""
    note: str = ""
    """Why the hive passed over the preferred engine, when it did (set in spawn answers)."""
    restarts: int = 0
    """How many times the hive started it again after it exited unexpectedly (or was hung)."""
    last_exit: str | None = None
    """How its process last ended unexpectedly: a signal's name (SIGSEGV) or `exit N`."""
    last_exit_at: float | None = None
    error: str | None = None
    """Why it is restarting or in crash-loop (the exit, what the hive saw, the log's last lines)."""
    retry_at: float | None = None
    """When a restarting worker is started again (epoch seconds)."""
    cpu_repack: str = "auto"
    max_queued: int = 8
    """Requests it holds waiting behind the one it generates (its capacity is one more)."""
    threads: int = 0
    """The engine threads it was started with (0: as many as the machine has cores)."""

    @property
    def url(self) -> str | None:
        """The worker's base URL on its own machine, once it has a port."""
        return f"http://127.0.0.1:{self.port}" if self.port else None

    def to_json(self, hive: str) -> dict[str, Any]:
        """The JSON the APIs answer with (the hive's name and the URL added)."""
        return {**dataclasses.asdict(self), "hive": hive, "url": self.url}


def validate_worker_id(worker_id: Any) -> str:
    """`worker_id` if it is a safe worker id (it names a log file), else ApiError 400."""
    if not isinstance(worker_id, str) or not _WORKER_ID.fullmatch(worker_id) or ".." in worker_id:
        raise ApiError(
            400,
            "id must be 1-80 of a-z 0-9 . _ - starting with a letter or digit",
            param="id",
        )
    return worker_id


def exit_description(code: int) -> str:
    """A process's exit status as people read it: SIGSEGV for -11, `exit 1` for 1."""
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"exit {code}"


def parse_worker_spec(body: Any) -> WorkerSpec:
    """Parse `POST /v1/workers`; 400 naming the field that is wrong."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "model is required (a model id such as smollm2-135m)", param="model")
    fields: dict[str, Any] = {"model": model}
    for key in ("engine", "device"):
        value = body.get(key)
        if value is not None:
            if not isinstance(value, str) or not value.isprintable() or len(value) > 32:
                raise ApiError(400, f"{key} must be a short string", param=key)
            fields[key] = value
    for key, lo, hi in (
        ("ctx_size", 64, _MAX_CTX),
        ("threads", 0, 1024),
        ("max_queued", 0, 4096),
        ("max_queued_tokens", 0, 1 << 30),
    ):
        value = body.get(key)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise ApiError(400, f"{key} must be an integer from {lo} to {hi}", param=key)
            fields[key] = value
    repack = body.get("cpu_repack")
    if repack is not None:
        if repack not in REPACK_SETTINGS:
            raise ApiError(
                400, f"cpu_repack must be one of {', '.join(REPACK_SETTINGS)}", param="cpu_repack"
            )
        fields["cpu_repack"] = repack
    embeddings = body.get("embeddings")
    if embeddings is not None:
        if not isinstance(embeddings, bool):
            raise ApiError(400, "embeddings must be true or false", param="embeddings")
        fields["embeddings"] = embeddings
    return WorkerSpec(**fields)


def parse_worker_info(raw: Any) -> WorkerInfo:
    """Parse one worker as a hive reports it; ValueError or TypeError naming what is wrong."""
    if not isinstance(raw, dict):
        raise TypeError("a worker must be a JSON object")
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(WorkerInfo):
        if f.name not in raw:
            if f.default is dataclasses.MISSING:
                raise ValueError(f"worker field {f.name!r} is missing")
            continue
        fields[f.name] = raw[f.name]
    if fields["state"] not in get_args(WorkerState):
        raise ValueError(f"worker state {fields['state']!r} is not one of {get_args(WorkerState)}")
    for name in ("id", "model", "engine", "device", "log_path"):
        if name in fields and not isinstance(fields[name], str):
            raise ValueError(f"worker field {name!r} must be a string")
    for name in ("pid", "port", "exit_code", "restarts", "max_queued", "threads"):
        value = fields.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"worker field {name!r} must be an integer or null")
    for name in ("last_exit", "error", "note", "cpu_repack"):
        value = fields.get(name)
        if value is not None and not isinstance(value, str):
            raise ValueError(f"worker field {name!r} must be a string or null")
    for name in ("started_at", "last_exit_at", "retry_at"):
        value = fields.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ValueError(f"worker field {name!r} must be a number or null")
    if not isinstance(fields.get("embeddings", False), bool):
        raise TypeError("worker field 'embeddings' must be true or false")
    return WorkerInfo(**fields)


def spawn_error(err: Exception) -> ApiError:
    """The HTTP error for a failed worker operation: 404 unknown model, worker or hive; 409 a
    worker with that id exists; 400 bad input or an impossible engine/device choice; 503 a hive
    that cannot be reached now; 507 not enough memory; 500 worker failure."""
    if isinstance(err, ApiError):
        return err
    if isinstance(err, WorkerNotFoundError):
        return ApiError(404, str(err), param="worker_id", code="worker_not_found")
    if isinstance(err, WorkerExistsError):
        return ApiError(409, str(err), param="id", code="worker_exists")
    if isinstance(err, HiveNotStartedError):
        return ApiError(404, str(err), param="hive", code="hive_not_found")
    if isinstance(err, HiveUnavailableError):
        return ApiError(503, str(err), type="server_error", code="hive_unavailable",
                        retry_after=5)  # fmt: skip
    if isinstance(err, SshError):
        return ApiError(502, str(err), type="server_error", code="hive_unreachable")
    if isinstance(err, UnknownModelError):
        return ApiError(404, str(err), param="model", code="model_not_found")
    if isinstance(err, ModelError):
        return ApiError(400, str(err), param="model")
    if isinstance(err, SelectionError):
        return ApiError(400, str(err), param="engine", code="engine_unavailable")
    if isinstance(err, InsufficientMemoryError):
        return ApiError(507, str(err), type="server_error", code="insufficient_memory")
    if isinstance(err, ConfigError):
        return ApiError(400, str(err))
    return ApiError(500, str(err), type="server_error", code="worker_failed")
