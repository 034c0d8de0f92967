"""What `rbee apply` would do: a pure function of a playbook and the fleet as it is.

The fleet as it is (`Fleet`) is read by rbee.apply.current; here nothing is asked of anyone, so
every rule below has a table test. The plan's steps come in the order they must run: installs,
then hive starts, then per hive and model the upload of a model the hive lacks and the spawns,
and stops last (a worker being replaced keeps serving until its successor does).

Rules, per hive the playbook names:
- a hive the queen has not started is started (`localhost` always runs); one where rbee is not
  installed, or another version is, is installed first;
- workers of a model the playbook places there, with the same embeddings flag, "belong" to that
  placement: one whose engine or device breaks the placement's constraint (`auto` allows any), or
  that was started with other settings than the playbook states (ctx_size, threads, max_queued,
  cpu_repack; `auto` and 0 threads allow any), is replaced, and then as many are spawned or
  stopped as make `replicas` (a worker that is not serving is stopped before a ready one; then
  the newest);
- other workers there are left alone, unless the playbook says `prune: true`;
- a model's idle TTL and autoload are set where they differ from the queen's.
Hives the playbook does not name are never touched. A hive the queen started that does not run
now (reconnecting, or in error) is left out (`unsettled`): its workers cannot be read, and the
queen brings back the ones it wants there by itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from rbee.apply.playbook import LOCAL, Playbook, Policy, Want

__all__ = [
    "Action",
    "Fleet",
    "HiveNow",
    "Verb",
    "WorkerNow",
    "make_plan",
    "policy_text",
    "summary",
    "unsettled",
]

Verb = Literal["install", "start", "upload", "spawn", "policy", "stop"]
_SERVING = ("ready", "busy", "idle", "parked")
"""States of a worker that serves (or, parked, comes back on the next request)."""


@dataclass(frozen=True)
class WorkerNow:
    """A worker as the queen lists it."""

    id: str
    """Queen-wide: `ID` on localhost, `ID@hive` elsewhere."""
    model: str
    engine: str
    device: str
    state: str
    embeddings: bool = False
    context_length: int = 0
    threads: int = 0
    max_queued: int = 8
    cpu_repack: str = "auto"

    def setting(self, name: str) -> int | str:
        """The value of one of a playbook's worker settings it was started with."""
        values: dict[str, int | str] = {"ctx_size": self.context_length, "threads": self.threads,
                                         "max_queued": self.max_queued,
                                         "cpu_repack": self.cpu_repack}  # fmt: skip
        return values[name]


@dataclass(frozen=True)
class HiveNow:
    """A hive as it is now."""

    alias: str
    started: bool
    """The queen has it (running, or reconnecting): no start needed."""
    state: str = "not started"
    installed: bool = True
    """rbee, this version, is installed there (checked only for a hive not started)."""
    install_note: str = ""
    """Why an install is needed ("not installed", "rbee 0.0.9 there, 0.1.0 here")."""
    models: frozenset[str] | None = None
    """The models in its store; None when it cannot be asked (not running)."""
    workers: tuple[WorkerNow, ...] = ()


@dataclass(frozen=True)
class Fleet:
    """What the plan is made against: the hives the playbook names, and the queen's policies."""

    hives: Mapping[str, HiveNow]
    policies: Mapping[str, Policy] = field(default_factory=dict)
    """The queen's policy of each model the playbook gives one (idle_ttl and autoload)."""


@dataclass(frozen=True)
class Action:
    """One step of a plan."""

    verb: Verb
    hive: str
    model: str = ""
    engine: str = "auto"
    device: str = "auto"
    embeddings: bool = False
    worker: str = ""
    """The worker a stop stops."""
    why: str = ""
    policy: Policy | None = None
    settings: tuple[tuple[str, int | str], ...] = ()
    """A spawn's worker settings (the playbook's)."""

    @property
    def sign(self) -> str:
        """`+` adds, `-` removes, `~` changes (as terraform prints them)."""
        return {"stop": "-", "policy": "~"}.get(self.verb, "+")

    def describe(self) -> str:
        """The step on one line, such as `+ spawn smollm2-135m on hive1 (llamacpp, cpu)`."""
        why = f": {self.why}" if self.why else ""
        if self.verb == "install":
            text = f"install rbee on {self.hive}"
        elif self.verb == "start":
            text = f"start hive {self.hive}"
        elif self.verb == "upload":
            text = f"upload model {self.model} to {self.hive}"
        elif self.verb == "spawn":
            serves = ", embeddings" if self.embeddings else ""
            stated = "".join(f", {name} {value}" for name, value in self.settings)
            text = (f"spawn {self.model} on {self.hive} "
                    f"({self.engine}, {self.device}{serves}{stated})")  # fmt: skip
        elif self.verb == "policy":
            assert self.policy is not None
            text = f"set {self.model}'s policy on the queen to {policy_text(self.policy)}"
        else:
            text = f"stop {self.worker} ({self.model} on {self.hive})"
        return f"{self.sign} {text}{why}"


def policy_text(policy: Policy) -> str:
    """`idle_ttl 900s, autoload on` (the parts the policy says)."""
    parts = []
    if policy.idle_ttl is not None:
        parts.append(f"idle_ttl {policy.idle_ttl:g}s")
    if policy.autoload is not None:
        parts.append(f"autoload {'on' if policy.autoload else 'off'}")
    return ", ".join(parts)


def _order(worker: WorkerNow) -> tuple[bool, int, str]:
    """Keep serving workers and the oldest (lowest number) first."""
    number = worker.id.split("@")[0].rpartition("-")[2]
    return (worker.state not in _SERVING, int(number) if number.isdigit() else 0, worker.id)


def _fits(want: Want, worker: WorkerNow) -> str:
    """Why `worker` breaks `want`'s engine or device constraint ("" if it does not)."""
    if want.engine not in ("auto", worker.engine):
        return f"engine {worker.engine}, the playbook wants {want.engine}"
    if want.device not in ("auto", worker.device):
        return f"device {worker.device}, the playbook wants {want.device}"
    for name, value in want.settings:
        if value in ("auto", 0) and name in ("cpu_repack", "threads"):
            continue  # rbee decides: any value fits
        if worker.setting(name) != value:
            return f"{name} {worker.setting(name)}, the playbook wants {value}"
    return ""


def _workers(want: Want, hive: HiveNow) -> tuple[list[Action], list[Action]]:
    """(spawns, stops) that make `hive` run `want`."""
    mine = [w for w in hive.workers if (w.model, w.embeddings) == (want.model, want.embeddings)]
    stops = []
    kept = []
    for worker in mine:
        broken = _fits(want, worker)
        if broken:
            stops.append(Action("stop", hive.alias, want.model, worker=worker.id, why=broken))
        else:
            kept.append(worker)
    kept.sort(key=_order)
    for worker in reversed(kept[want.replicas :]):
        why = f"{want.replicas} replica(s) wanted" + (
            f", it is {worker.state}" if worker.state not in _SERVING else ""
        )
        stops.append(Action("stop", hive.alias, want.model, worker=worker.id, why=why))
    missing = max(0, want.replicas - len(kept))
    spawns = [
        Action("spawn", hive.alias, want.model, want.engine, want.device, want.embeddings,
               why=f"{len(kept) + i + 1} of {want.replicas}" if want.replicas > 1 else "",
               settings=want.settings)
        for i in range(missing)
    ]  # fmt: skip
    return spawns, stops


def unsettled(playbook: Playbook, fleet: Fleet) -> list[HiveNow]:
    """The playbook's hives that the queen started but that do not run now."""
    return [
        hive
        for alias in playbook.hives
        if alias != LOCAL and (hive := fleet.hives[alias]).started and hive.state != "running"
    ]


def make_plan(playbook: Playbook, fleet: Fleet) -> list[Action]:
    """The steps that make `fleet` what `playbook` says, in the order they must run (the
    `unsettled` hives left out)."""
    installs: list[Action] = []
    starts: list[Action] = []
    middle: list[Action] = []
    stops: list[Action] = []
    skipped = {hive.alias for hive in unsettled(playbook, fleet)}
    for alias in playbook.hives:
        hive = fleet.hives[alias]
        if alias in skipped:
            continue
        if alias != LOCAL and not hive.started:
            if not hive.installed:
                installs.append(Action("install", alias, why=hive.install_note))
            starts.append(Action("start", alias))
        wants = [w for w in playbook.wants if w.hive == alias]
        for want in wants:
            spawns, removed = _workers(want, hive)
            stored = hive.models is not None and want.model in hive.models
            if spawns and alias != LOCAL and not stored:
                why = "" if hive.models is not None else "if its store lacks it"
                middle.append(Action("upload", alias, want.model, why=why))
            middle.extend(spawns)
            stops.extend(removed)
        if playbook.prune:
            named = {(w.model, w.embeddings) for w in wants}
            for worker in hive.workers:
                if (worker.model, worker.embeddings) not in named:
                    why = "prune: the playbook places no such worker here"
                    stops.append(Action("stop", alias, worker.model, worker=worker.id, why=why))
    policies = []
    for policy in playbook.policies:
        change = _policy_change(policy, fleet.policies.get(policy.model))
        if change:
            policies.append(Action("policy", LOCAL, policy.model, policy=policy, why=change))
    return [*installs, *starts, *policies, *middle, *stops]


def _policy_change(want: Policy, now: Policy | None) -> str:
    """What differs between the playbook's policy and the queen's ("" if nothing)."""
    if now is None:
        return "the queen's policy is not known"
    changes = []
    if want.idle_ttl is not None and want.idle_ttl != now.idle_ttl:
        changes.append(f"idle_ttl is {now.idle_ttl:g}s")
    if want.autoload is not None and want.autoload != now.autoload:
        changes.append(f"autoload is {'on' if now.autoload else 'off'}")
    return ", ".join(f"now {c}" for c in changes)


def summary(actions: Sequence[Action]) -> str:
    """`3 to add, 0 to change, 1 to remove` (terraform's summary line)."""
    add = sum(a.sign == "+" for a in actions)
    change = sum(a.sign == "~" for a in actions)
    remove = sum(a.sign == "-" for a in actions)
    return f"{add} to add, {change} to change, {remove} to remove"
