"""The one exception tree of rbee.

    RbeeError                 anything rbee raises on purpose; the CLI prints `str(err)` on one line
    ├── ConfigError           bad settings or config file (message names the file and line or key)
    ├── ModelError            model catalog and store
    │   ├── UnknownModelError   an id that is not in the catalog or the store
    │   ├── ModelFetchError     the default model could not be downloaded or unpacked
    │   └── ChecksumError       a stored file does not match its recorded sha256
    ├── EngineError           an engine could not load a model or generate
    ├── WorkerError           a worker process failed to start or died
    │   ├── WorkerNotFoundError  no worker with that id (on that hive)
    │   ├── WorkerExistsError    a worker with that id runs already
    │   └── WorkerUnavailableError  no worker can serve a model now (restarting, crash-loop)
    ├── HiveError             a hive cannot take the request
    │   ├── HiveNotStartedError  the hive was not started (names how to start it)
    │   └── HiveUnavailableError the hive is started but not reachable now (reconnecting, error)
    ├── QueenError            talking to the queen
    │   ├── QueenNotRunningError
    │   └── JobFailedError      a job ended failed or cancelled (the job's own error)
    ├── PortInUseError        a listening port is taken
    ├── SshError              reaching or running something on a hive over SSH (names the hive)
    │   ├── HostKeyError        the hive's host key is unknown or changed
    │   ├── RemoteCommandError  a command on a hive failed (argv, exit status, stderr tail)
    │   └── InstallError        `rbee hive install` failed (host, step, argv, stderr tail)
    ├── WheelhouseError       the queen could not gather the wheels a hive needs
    ├── ApiError              an HTTP request was refused; carries the OpenAI error body fields
    │   ├── OverloadedError     every worker that could take it is full (503, Retry-After)
    │   └── DeadlineError       its deadline passed (504)
    └── ClientGoneError       the HTTP client went away before its answer (internal)

Every error carries what an operator needs to act (file, field, host, command, stderr tail) in its
message; none of them should ever reach a user as a traceback.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = [
    "ApiError",
    "ChecksumError",
    "ClientGoneError",
    "ConfigError",
    "DeadlineError",
    "EngineError",
    "HiveError",
    "HiveNotStartedError",
    "HiveUnavailableError",
    "HostKeyError",
    "InstallError",
    "InsufficientMemoryError",
    "JobFailedError",
    "ModelError",
    "ModelFetchError",
    "OverloadedError",
    "PortInUseError",
    "QueenError",
    "QueenNotRunningError",
    "RbeeError",
    "RemoteCommandError",
    "SelectionError",
    "SshError",
    "UnknownModelError",
    "WheelhouseError",
    "WorkerError",
    "WorkerExistsError",
    "WorkerNotFoundError",
    "WorkerUnavailableError",
]


class RbeeError(Exception):
    """Base of every error rbee raises on purpose."""


class ConfigError(RbeeError):
    """A setting or config file is wrong; the message names the file and line or the key."""


class ModelError(RbeeError):
    """Model catalog or store problem."""


class UnknownModelError(ModelError):
    """A model id that is neither in the catalog nor in the store."""

    def __init__(self, model: str, known: list[str]) -> None:
        self.model = model
        self.known = known
        listing = ", ".join(known) if known else "none"
        super().__init__(f"unknown model {model!r} (known models: {listing})")


class ModelFetchError(ModelError):
    """A model could not be fetched (from a wheel, the hub or a local path)."""


class ChecksumError(ModelError):
    """A stored model file does not match its recorded sha256."""


class EngineError(RbeeError):
    """An engine failed to load a model or to generate."""


class SelectionError(EngineError):
    """No engine can run this model on this hive (or the one asked for cannot); says why."""


class InsufficientMemoryError(EngineError):
    """A model does not fit the free memory of the device it was meant for."""


class WorkerError(RbeeError):
    """A worker process failed to start, or died."""


class WorkerNotFoundError(WorkerError):
    """No worker with the id asked for."""


class WorkerExistsError(WorkerError):
    """A worker with the id asked for already runs on that hive."""


class WorkerUnavailableError(WorkerError):
    """No worker can serve the model now; `retry_after` says when one may (None: unknown)."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class HiveError(RbeeError):
    """A hive cannot take a request."""


class HiveNotStartedError(HiveError):
    """The hive named was not started (`rbee hive start ALIAS`)."""


class HiveUnavailableError(HiveError):
    """The hive is started but cannot be reached now (connecting, lost, or in error)."""


class QueenError(RbeeError):
    """The queen refused a request or could not be reached."""


class QueenNotRunningError(QueenError):
    """Nothing answers at the queen's address."""


class JobFailedError(QueenError):
    """A job ended failed or cancelled; the message is the job's own error."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job
        kind, state = job.get("kind", "job"), job.get("state")
        error = job.get("error") or state
        super().__init__(
            f"{kind} was {error}" if state == "cancelled" else f"{kind} failed: {error}"
        )


class ClientGoneError(RbeeError):
    """The HTTP client disconnected before its answer was ready (control flow, never shown)."""


class PortInUseError(RbeeError):
    """A port rbee was asked to listen on is taken."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        super().__init__(f"port {port} on {host} is already in use (pick another with --port)")


class SshError(RbeeError):
    """A hive could not be reached or used over SSH; the message starts with its alias."""


class HostKeyError(SshError):
    """A hive's host key is not in known_hosts, or does not match it."""


class RemoteCommandError(SshError):
    """A command run on a hive exited non-zero."""

    def __init__(self, alias: str, argv: list[str], exit_status: int | None, stderr: str) -> None:
        self.alias = alias
        self.argv = argv
        self.exit_status = exit_status
        self.stderr = stderr
        tail = " | ".join(line for line in stderr.strip().splitlines()[-3:] if line.strip())
        status = "was killed" if exit_status is None else f"exited {exit_status}"
        super().__init__(f"{alias}: `{' '.join(argv)}` {status}" + (f": {tail}" if tail else ""))


class InstallError(SshError):
    """Installing on (or removing from) a hive failed at one step; the previous install stays."""

    def __init__(
        self,
        alias: str,
        step: str,
        reason: str,
        *,
        argv: list[str] | None = None,
        exit_status: int | None = None,
        stderr: str = "",
    ) -> None:
        self.alias = alias
        self.step = step
        self.argv = argv
        self.exit_status = exit_status
        self.stderr = stderr
        tail = " | ".join(line for line in stderr.strip().splitlines()[-3:] if line.strip())
        command = f": `{' '.join(_brief(word) for word in argv)}`" if argv else ""
        super().__init__(
            f"{alias}: {step} failed{command}: {reason}" + (f": {tail}" if tail else "")
        )


def _brief(word: str) -> str:
    """An argv word as an error line shows it: a script passed with `-c` is not worth quoting."""
    if "\n" in word.strip():
        return f"<{len(word.strip().splitlines())}-line script>"
    return word if len(word) <= 120 else word[:117] + "..."


class WheelhouseError(RbeeError):
    """The queen could not build or gather the wheels a hive needs (names what is missing)."""


class ApiError(RbeeError):
    """A refused HTTP request, shaped as OpenAI's error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.retry_after = retry_after
        """Seconds after which the request may succeed (sent as `Retry-After`, whole seconds)."""
        super().__init__(message)

    def headers(self) -> dict[str, str]:
        """The HTTP headers the error's response carries."""
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}

    def body(self) -> dict[str, Any]:
        """The OpenAI error body: {"error": {"message", "type", "param", "code"}}."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class OverloadedError(ApiError):
    """Every worker that could take the request is full: 503 `server_overloaded`, answered at
    once, with `Retry-After` from the pace the work drains at."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(503, message, type="server_error", code="server_overloaded",
                         retry_after=retry_after)  # fmt: skip


class DeadlineError(ApiError):
    """The request's deadline (`--request-timeout`, `X-Rbee-Deadline`) passed: 504."""

    def __init__(self, message: str) -> None:
        super().__init__(504, message, type="server_error", code="request_timeout")
