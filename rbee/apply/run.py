"""Carrying a plan out, step by step, through the queen; stopping at the first failure.

Installs, hive starts and spawns are queen jobs (`hive.install`, `hive.start`, `worker.spawn`),
whose progress the caller's `run_job` narrates; a policy is set with `PUT /v1/policies/{model}`,
a stop is `DELETE /v1/workers/{id}`. The queen has no job that only uploads a model: a hive that
lacks the model when its upload step comes gets it from the spawn that follows (the spawn job
uploads what the hive lacks, resumably and sha256-checked), so the two run as one job and
succeed or fail together. The outcome says which steps were done, which failed and why, and
which were not started.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rbee.api.client import QueenClient
from rbee.apply.plan import Action
from rbee.errors import RbeeError

__all__ = ["Outcome", "execute"]

RunJob = Callable[[dict[str, Any]], dict[str, Any]]
"""Submits an operation as a queen job, shows its progress, returns its result (or raises)."""


@dataclass
class Outcome:
    """What an apply did."""

    done: list[Action] = field(default_factory=list)
    failed: list[Action] = field(default_factory=list)
    """The step that failed (with the upload it carried, if any)."""
    error: str = ""
    left: list[Action] = field(default_factory=list)
    """Steps not started."""
    interrupted: bool = False
    """Ctrl+C stopped it (a job being watched keeps running on the queen)."""


def _spawn_operation(action: Action) -> dict[str, Any]:
    return {"kind": "worker.spawn", "model": action.model, "hive": action.hive,
            "engine": action.engine, "device": action.device,
            "embeddings": action.embeddings, **dict(action.settings)}  # fmt: skip


def _stored(client: QueenClient, action: Action) -> bool:
    listed = client.request("GET", f"/v1/hives/{action.hive}/models")["data"]
    return any(m.get("id") == action.model for m in listed)


def execute(
    actions: Sequence[Action],
    client: QueenClient,
    run_job: RunJob,
    say: Callable[[str], None],
) -> Outcome:
    """Run `actions` in order; stop at the first that fails (KeyboardInterrupt: the same)."""
    outcome = Outcome()
    steps = list(actions)
    i = 0
    while i < len(steps):
        action = steps[i]
        batch = [action]
        say(f"[{i + 1}/{len(steps)}] {action.describe()}")
        try:
            if action.verb == "upload" and not _stored(client, action):
                spawn = _its_spawn(action, steps[i + 1 :])
                steps.remove(spawn)
                steps.insert(i + 1, spawn)
                batch.append(spawn)
                say(f"[{i + 2}/{len(steps)}] {spawn.describe()}")
            _carry_out(batch, client, run_job, say)
        except (RbeeError, KeyboardInterrupt) as err:
            outcome.failed = batch
            outcome.error = "interrupted" if isinstance(err, KeyboardInterrupt) else str(err)
            outcome.left = steps[i + len(batch) :]
            outcome.interrupted = isinstance(err, KeyboardInterrupt)
            return outcome
        outcome.done.extend(batch)
        i += len(batch)
    return outcome


def _its_spawn(upload: Action, later: Sequence[Action]) -> Action:
    """The spawn that follows `upload` (make_plan plans no upload without one)."""
    for action in later:
        if action.verb == "spawn" and (action.hive, action.model) == (upload.hive, upload.model):
            return action
    raise RbeeError(f"no spawn of {upload.model} on {upload.hive} follows its upload")


def _carry_out(
    batch: list[Action], client: QueenClient, run_job: RunJob, say: Callable[[str], None]
) -> None:
    """One step, or an upload and the spawn that does it."""
    first = batch[0]
    if first.verb != "upload":
        _run(first, client, run_job, say)
    elif len(batch) == 1:
        say(f"  {first.hive} has {first.model} already")
    else:
        say("  (one job: spawning on a hive uploads the model it lacks)")
        _run(batch[1], client, run_job, say)
        if not _stored(client, first):
            raise RbeeError(f"{first.hive}'s store does not list {first.model} after the spawn")
        say(f"  {first.model} is in {first.hive}'s store now")


def _run(action: Action, client: QueenClient, run_job: RunJob, say: Callable[[str], None]) -> None:
    if action.verb in ("install", "start"):
        run_job({"kind": f"hive.{action.verb}", "alias": action.hive})
    elif action.verb == "spawn":
        info = run_job(_spawn_operation(action))
        say(f"  worker {info.get('id')} ready ({info.get('engine')}, {info.get('device')})")
    elif action.verb == "policy":
        assert action.policy is not None
        said = (("idle_ttl", action.policy.idle_ttl), ("autoload", action.policy.autoload))
        body = {key: value for key, value in said if value is not None}
        client.request("PUT", f"/v1/policies/{action.model}", json=body)
    elif action.verb == "stop":
        client.stop_worker(action.worker)
    else:
        raise RbeeError(f"rbee apply cannot {action.verb}")
