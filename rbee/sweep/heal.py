"""`rbee sweep --heal`: do what the checks call for, and say each action.

What it may do, and only this: start the queen when it is down but should serve (it then brings
back its hives and workers from its desired state by itself); with the queen up, start a wanted
hive that is down and a wanted worker that is missing, restart a worker in `crash-loop` once its
cause is gone (nothing critical left on its hive, and never twice for the same cause); stop
orphans. It never touches a host key: a changed key is the operator's to judge.

`plan` decides from the report alone (a pure function, tested with tables); `apply` acts.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass

from rbee.api.client import QueenClient
from rbee.config.hives import HivesConfig
from rbee.errors import RbeeError
from rbee.ssh.connection import HiveConnection
from rbee.sweep.expect import Expected
from rbee.sweep.probe import Proc
from rbee.sweep.queen_checks import QUEEN
from rbee.sweep.report import Action, Report
from rbee.sweep.status import Status

__all__ = ["KILL_SCRIPT", "Step", "apply", "plan"]

_JOB_WAIT = 180.0
_QUEEN_START = 180.0

# `sh -c KILL_SCRIPT rbee-sweep-kill PID ARGS`: stop PID only if it still runs ARGS (so a pid
# reused since the sweep saw it is never hit), with its process group if it leads one (a worker
# does), TERM first and KILL after 5 s. Prints `gone`, `killed` or `changed`. `env kill`: the
# kill program, as dash's builtin takes no `--` (and so no process group).
KILL_SCRIPT = r"""
pid=$1 expect=$2
[ "$(ps -o args= -p "$pid" 2>/dev/null)" = "$expect" ] || { echo changed; exit 0; }
target=$pid
[ "$(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ')" = "$pid" ] && target=-$pid
alive() {  # a zombie has exited: only its parent's wait is missing
    state=$(ps -o stat= -p "$pid" 2>/dev/null) || return 1
    case $state in Z*) return 1 ;; esac
}
env kill -TERM -- "$target" 2>/dev/null
i=0
while alive && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
if alive; then
    env kill -KILL -- "$target" 2>/dev/null; echo killed
else
    echo gone
fi
"""


@dataclass(frozen=True)
class Step:
    """One action `--heal` will take."""

    target: str
    action: str
    """start-queen, start-hive, start-worker, restart-worker, stop-orphan."""
    subject: str = ""
    """The hive alias, the queen's worker id, or the orphan's pid."""
    proc: Proc | None = None
    cause: str = ""


def _critical(report: Report, alias: str) -> set[str]:
    hive = next(h for h in report.hives if h.alias == alias)
    return {c.name for c in hive.checks if c.status == Status.CRITICAL}


def plan(report: Report, expected: Expected, restarted: Mapping[str, str]) -> list[Step]:
    """What to do about `report`; `restarted`: crash-loop causes already restarted for."""
    queen = report.queen
    if not queen.up:
        serving = expected.serving
        if serving is not None and serving.serve and serving.start_argv:
            return [Step(QUEEN, "start-queen")]
        return [
            Step(h.alias, "stop-orphan", str(p.pid), p) for h in report.hives for p in h.orphans
        ]
    steps = []
    for hive in report.hives:
        if hive.probe is None:  # unreachable, or its host key changed: nothing to do over SSH
            continue
        steps += [Step(hive.alias, "stop-orphan", str(p.pid), p) for p in hive.orphans]
        failing = {c.name for c in hive.checks if c.status != Status.OK}
        if "hive" in failing and hive.hive_pid is None:
            steps.append(Step(hive.alias, "start-hive", hive.alias))
            continue  # its workers come back with it
        blocked = _critical(report, hive.alias) & {"disk_install", "disk_models", "ram"}
        reported = {str(w.get("id")).partition("@")[0]: w for w in queen.workers_on(hive.alias)}
        for check in hive.checks:
            if not check.name.startswith("worker:") or check.status != Status.CRITICAL:
                continue
            wid = check.name.partition(":")[2]
            info = reported.get(wid)
            qid = str(info["id"]) if info else f"{wid}@{hive.alias}"
            if info is None:
                steps.append(Step(hive.alias, "start-worker", qid))
            elif info.get("state") == "crash-loop" and not blocked:
                cause = str(info.get("error") or info.get("last_exit") or "")
                if restarted.get(qid) != cause:
                    steps.append(Step(hive.alias, "restart-worker", qid, cause=cause))
    return steps


def _start_queen(argv: tuple[str, ...]) -> Action:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=_QUEEN_START,
                              check=False)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as err:
        return Action(QUEEN, "start-queen", False, str(err))
    said = (done.stdout or done.stderr).strip().splitlines()
    return Action(QUEEN, "start-queen", done.returncode == 0, said[-1] if said else "")


def _wait_job(client: QueenClient, job_id: str) -> dict[str, object]:
    deadline = time.monotonic() + _JOB_WAIT
    while True:
        job = client.get_job(job_id)
        if job.get("state") in ("succeeded", "failed", "cancelled") or time.monotonic() > deadline:
            return job
        time.sleep(0.2)


def _queen_step(client: QueenClient, step: Step) -> Action:
    try:
        if step.action == "start-hive":
            job = _wait_job(client, client.submit_job({"kind": "hive.start", "alias": step.subject})
                            ["job_id"])  # fmt: skip
            ok = job.get("state") == "succeeded"
            return Action(step.target, step.action, ok, f"job {job.get('state')}"
                          + (f": {job.get('error')}" if not ok else ""))  # fmt: skip
        worker = client.restart_worker(step.subject)
        detail = f"{step.subject} {worker.get('state')}"
        return Action(step.target, step.action, True, detail, step.subject)
    except RbeeError as err:
        return Action(step.target, step.action, False, str(err), step.subject)


async def _stop_orphans(config: HivesConfig, steps: list[Step], limit: float) -> list[Action]:
    async def on_hive(alias: str, mine: list[Step]) -> list[Action]:
        done = []
        try:
            async with asyncio.timeout(limit + 10), HiveConnection.of(config, alias) as conn:
                for step in mine:
                    assert step.proc is not None
                    argv = [
                        "sh",
                        "-c",
                        KILL_SCRIPT,
                        "rbee-sweep-kill",
                        step.subject,
                        step.proc.args,
                    ]
                    said = (await conn.check(argv, time_limit=15)).stdout.strip()
                    detail = f"{step.proc.kind} pid {step.subject}: {said}"
                    done.append(
                        Action(alias, step.action, said in ("gone", "killed"), detail, step.subject)
                    )
        except (RbeeError, TimeoutError) as err:
            done += [
                Action(alias, s.action, False, str(err) or "timed out") for s in mine[len(done) :]
            ]
        return done

    by_hive: dict[str, list[Step]] = {}
    for step in steps:
        by_hive.setdefault(step.target, []).append(step)
    found = await asyncio.gather(*(on_hive(a, s) for a, s in by_hive.items()))
    return [a for actions in found for a in actions]


def apply(
    steps: list[Step],
    *,
    config: HivesConfig,
    expected: Expected,
    queen_url: str | None,
    api_key: str | None,
    timeout: float,
) -> list[Action]:
    """Take each step; an Action per step says how it went."""
    actions: list[Action] = []
    orphans = [s for s in steps if s.action == "stop-orphan"]
    if orphans:
        actions += asyncio.run(_stop_orphans(config, orphans, timeout))
    for step in steps:
        if step.action == "start-queen" and expected.serving is not None:
            actions.append(_start_queen(expected.serving.start_argv))
    queen_steps = [s for s in steps if s.action in ("start-hive", "start-worker", "restart-worker")]
    if queen_steps and queen_url is not None:
        with QueenClient(queen_url, api_key=api_key) as client:
            actions += [_queen_step(client, s) for s in queen_steps]
    return actions
