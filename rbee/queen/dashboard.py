"""The dashboard's view of the queen: one snapshot of the whole fleet per call, and log tails.

GET /v1/dashboard                   hives, workers (with their live counters), models, jobs,
                                    request totals, the last requests and the last sweep, all in
                                    one answer
GET /v1/dashboard/log?worker=ID     the last lines of a worker's log (`hive=ALIAS`: a hive's;
                                    `localhost` is the queen's own); `lines` (200) at most 2000

A dashboard polls the snapshot once a second, and several may be open; so the snapshot is built
at most once per `MAX_AGE` and shared by every caller in that window (concurrent callers wait for
the same build), which keeps the queen's cost flat in the number of dashboards. A worker's live
figures (queue, requests served, tokens generated) are the queen's own counts: with every hop
authenticated the queen is its workers' only client, so building a snapshot asks no worker
anything (rbee.queen.ledger). It reads each remote hive's model store at most every
`MODELS_MAX_AGE`, and the last sweep's memory when its file changed. Request figures are totals
since the queen started: the dashboard turns two snapshots into rates.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rbee import __version__
from rbee.api.http import tail_lines
from rbee.api.workers import WorkerInfo, spawn_error, validate_worker_id
from rbee.config.hive_keys import ALIAS
from rbee.errors import ApiError, RbeeError
from rbee.facts import read_gpu_apps
from rbee.fsutil import read_tail
from rbee.queen.registry import LOCAL_HIVE, Endpoint
from rbee.queen.service import Queen
from rbee.sweep.memory import Memory, load_memory, sweep_memory_path

__all__ = ["MAX_AGE", "Dashboard", "dashboard_routes"]

MAX_AGE = 0.5
"""Seconds a snapshot is shared: two dashboards polling each second get the same build."""
MODELS_MAX_AGE = 10.0
"""Seconds a hive's model list is reused (a remote one is a round trip over SSH; this
machine's reads the store's manifests)."""
FACTS_MAX_AGE = 5.0
"""Seconds this machine's facts are reused (reading free VRAM runs nvidia-smi)."""
GPU_MEMORY_MAX_AGE = 10.0
"""Seconds the GPU memory of each worker is reused (nvidia-smi on each GPU hive)."""
RECENT_SHOWN = 50
"""Requests listed (the newest)."""


def _rss(pid: int | None) -> int | None:
    """A local process's resident memory in bytes (Linux /proc; None elsewhere or if gone)."""
    if not pid:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _request_totals(queen: Queen) -> list[dict[str, Any]]:
    """Requests answered and time to first token, per (model, worker, hive), since the start."""
    totals: dict[tuple[str, str, str], dict[str, Any]] = {}

    def entry(labels: Mapping[str, str]) -> dict[str, Any]:
        key = (labels.get("model", ""), labels.get("worker", ""), labels.get("hive", ""))
        return totals.setdefault(
            key,
            {"model": key[0], "worker": key[1], "hive": key[2], "requests": 0, "errors": 0,
             "ttft_sum": 0.0, "ttft_count": 0},
        )  # fmt: skip

    for family in queen.metrics.registry.collect():
        for sample in family.samples:
            if sample.name == "rbee_requests_total":
                found = entry(sample.labels)
                found["requests"] += int(sample.value)
                if not sample.labels.get("code", "").startswith("2"):
                    found["errors"] += int(sample.value)
            elif sample.name == "rbee_time_to_first_token_seconds_sum":
                entry(sample.labels)["ttft_sum"] += sample.value
            elif sample.name == "rbee_time_to_first_token_seconds_count":
                entry(sample.labels)["ttft_count"] += int(sample.value)
    return list(totals.values())


def _facts_json(facts: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The facts a dashboard shows (the full ones are `GET /v1/hives`)."""
    if not facts:
        return None
    keep = ("os", "arch", "hostname", "cpu_count", "mem_total", "mem_available", "engines")
    gpus = [{k: g.get(k) for k in ("index", "name", "vram_total", "vram_free")}
            for g in facts.get("gpus") or ()]  # fmt: skip
    return {**{k: facts.get(k) for k in keep}, "gpus": gpus}


class Dashboard:
    """Builds the fleet snapshot, shared by every dashboard for `max_age` seconds."""

    def __init__(self, queen: Queen, *, max_age: float = MAX_AGE) -> None:
        self.queen = queen
        self.max_age = max_age
        self.builds = 0
        """Snapshots built so far."""
        self._started = time.time()
        self._last: tuple[float, dict[str, Any]] | None = None
        self._building: asyncio.Future[dict[str, Any]] | None = None
        self._models: dict[str, tuple[float, list[dict[str, Any]], str | None]] = {}
        self._facts: tuple[float, dict[str, Any] | None] | None = None
        self._gpu: tuple[float, dict[str, dict[int, int]]] | None = None
        self._sweep: tuple[tuple[float, int] | None, dict[str, Any] | None] = (None, None)
        """(the sweep memory file's mtime and size when read, what it said)."""

    async def snapshot(self) -> dict[str, Any]:
        """The fleet now (at most `max_age` old); concurrent callers share one build."""
        now = time.monotonic()
        if self._last is not None and now - self._last[0] < self.max_age:
            return self._last[1]
        if self._building is None:
            # A task of its own, awaited by every caller through a shield: a caller that goes
            # away (its client disconnected) does not cancel the build the others wait for.
            self._building = asyncio.ensure_future(self._build())
            self._building.add_done_callback(self._built)
        return await asyncio.shield(self._building)

    def _built(self, task: asyncio.Future[dict[str, Any]]) -> None:
        self._building = None
        if not task.cancelled() and task.exception() is None:
            self._last = (time.monotonic(), task.result())

    async def _build(self) -> dict[str, Any]:
        self.builds += 1
        queen = self.queen
        hives = await self._hives()
        workers = await self._workers(await self._gpu_memory(hives))
        models = await self._models_of([h["name"] for h in hives if h["state"] == "running"])
        return {
            "object": "dashboard",
            "at": time.time(),
            "queen": {
                "version": __version__,
                "pid": os.getpid(),
                "uptime_s": round(time.time() - self._started, 1),
                "problems": queen.problems(),
            },
            "hives": hives,
            "workers": workers,
            "models": models,
            "jobs": [job.to_json() for job in queen.jobs.jobs()],
            "requests": _request_totals(queen),
            "recent": queen.relay.ledger.recent(RECENT_SHOWN),
            "sweep": await self._last_sweep(),
        }

    async def _last_sweep(self) -> dict[str, Any] | None:
        """What the last `rbee sweep` with the default state dir found (None: none ran), read
        again only when its file changed."""
        path = sweep_memory_path(self.queen.paths.data_dir / "sweep")
        try:
            st = path.stat()
            seen: tuple[float, int] | None = (st.st_mtime, st.st_size)
        except OSError:
            seen = None
        if seen != self._sweep[0]:
            memory = await asyncio.to_thread(load_memory, path.parent) if seen else None
            self._sweep = (seen, None if memory is None else _sweep_json(memory))
        return self._sweep[1]

    async def _hives(self) -> list[dict[str, Any]]:
        queen = self.queen
        now = time.monotonic()
        if self._facts is None or now - self._facts[0] >= FACTS_MAX_AGE:
            try:  # free memory and VRAM are read again (nvidia-smi on a GPU machine)
                self._facts = (now, dataclasses.asdict(await queen.hive.facts()))
            except RbeeError:
                self._facts = (now, None)
        local_facts = self._facts[1]
        hives = [{"name": LOCAL_HIVE, "host": "127.0.0.1", "state": "running", "pid": os.getpid(),
                  "workers": len(queen.hive.workers()), "last_error": None, "lease_age": None,
                  "facts": _facts_json(local_facts)}]  # fmt: skip
        for remote in queen.fleet.hives():
            described = remote.describe()
            age = remote.lease_age
            described["lease_age"] = None if age is None else round(age, 1)
            described["facts"] = _facts_json(described.get("facts"))
            hives.append(described)
        hives.extend(queen.fleet.describe_unlaunchable())
        return hives

    async def _gpu_memory(self, hives: list[dict[str, Any]]) -> dict[str, dict[int, int]]:
        """Hive → pid → bytes of GPU memory, on the running hives with NVIDIA GPUs (this
        machine's from nvidia-smi, a remote one's from its /health), read every
        GPU_MEMORY_MAX_AGE; a hive that does not answer in 5 s is left out."""
        now = time.monotonic()
        if self._gpu is not None and now - self._gpu[0] < GPU_MEMORY_MAX_AGE:
            return self._gpu[1]
        found: dict[str, dict[int, int]] = {}

        async def one(name: str) -> None:
            used: dict[int, int] | None
            try:
                if name == LOCAL_HIVE:
                    used = await asyncio.to_thread(read_gpu_apps)
                else:
                    health = await asyncio.wait_for(self.queen.fleet.get(name).health(), 5.0)
                    raw = health.get("gpu_processes")
                    used = (
                        {int(k): int(v) for k, v in raw.items()} if isinstance(raw, dict) else None
                    )
            except (RbeeError, OSError, TimeoutError, httpx.HTTPError, ValueError, TypeError):
                used = None
            if used is not None:
                found[name] = used

        with_gpus = [
            h["name"]
            for h in hives
            if h.get("state") == "running" and (h.get("facts") or {}).get("gpus")
        ]
        await asyncio.gather(*(one(name) for name in with_gpus))
        self._gpu = (now, found)
        return found

    async def _workers(self, gpu: Mapping[str, Mapping[int, int]]) -> list[dict[str, Any]]:
        queen = self.queen
        endpoints = {(e.hive, e.info.id): e for e in queen.registry.endpoints()}
        at = round(time.time(), 3)
        running = queen.workers()
        rss = await asyncio.to_thread(
            lambda: {(h, w.id): _rss(w.pid) for h, w in running if h == LOCAL_HIVE}
        )
        listed: list[dict[str, Any]] = []
        present = set()
        for hive, info in running:
            present.add((hive, info.id))
            endpoint = endpoints.get((hive, info.id))
            wanted = queen.desired.get(hive, info.id)
            qid = info.id if hive == LOCAL_HIVE else f"{info.id}@{hive}"
            listed.append(
                _worker_json(
                    info,
                    hive,
                    qid,
                    outstanding=endpoint.outstanding if endpoint else 0,
                    dispatched=endpoint.dispatched if endpoint else 0,
                    idle_s=round(endpoint.idle_for, 1) if endpoint else None,
                    parked=bool(wanted and wanted.parked),
                    stats=_live_stats(endpoint, at) if endpoint is not None else None,
                    rss=rss.get((hive, info.id)),
                    vram=gpu.get(hive, {}).get(info.pid) if info.pid else None,
                )
            )
        for d in queen.desired.workers():
            if d.parked and d.key not in present:
                spec = d.spec
                info = WorkerInfo(id=d.id, model=spec.model, engine=spec.engine,
                                  device=spec.device, state="exited")  # fmt: skip
                qid = d.id if d.hive == LOCAL_HIVE else f"{d.id}@{d.hive}"
                parked = _worker_json(info, d.hive, qid, outstanding=0, dispatched=0,
                                      idle_s=None, parked=True, stats=None, rss=None,
                                      vram=None)  # fmt: skip
                listed.append({**parked, "state": "parked"})
        return listed

    async def _models_of(self, hives: list[str]) -> list[dict[str, Any]]:
        """Each stored model per hive (a remote hive's list reused for MODELS_MAX_AGE)."""
        queen = self.queen
        out: list[dict[str, Any]] = []
        now = time.monotonic()
        cached_local = self._models.get(LOCAL_HIVE)
        if cached_local is None or now - cached_local[0] >= MODELS_MAX_AGE:
            local = await asyncio.to_thread(lambda: [m.describe() for m in queen.hive.models()])
            cached_local = (now, local, None)
            self._models[LOCAL_HIVE] = cached_local
        out.extend({**m, "hive": LOCAL_HIVE} for m in cached_local[1])

        async def remote(alias: str) -> None:
            cached = self._models.get(alias)
            if cached is not None and now - cached[0] < MODELS_MAX_AGE:
                return
            try:
                found, error = await asyncio.wait_for(queen.fleet.get(alias).models(), 5.0), None
            except (RbeeError, OSError, TimeoutError, httpx.HTTPError) as err:
                found, error = (cached[1] if cached else []), str(err) or type(err).__name__
            self._models[alias] = (now, found, error)

        remotes = [a for a in hives if a != LOCAL_HIVE]
        await asyncio.gather(*(remote(a) for a in remotes))
        for alias in remotes:
            _, found, _error = self._models[alias]
            out.extend({**m, "hive": alias} for m in found)
        for alias in list(self._models):
            if alias not in remotes and alias != LOCAL_HIVE:
                del self._models[alias]
        return [{k: m.get(k) for k in ("id", "hive", "formats", "size")} for m in out]

    async def log(self, *, worker: str | None, hive: str | None, lines: int) -> dict[str, Any]:
        """The tail of a worker's log (a remote one's read by its hive), or of a hive's own
        (`localhost`: the queen's log; a remote hive's: its output on its SSH session)."""
        queen = self.queen
        if worker is not None:
            local_id, _, where = worker.partition("@")
            where = where or LOCAL_HIVE
            validate_worker_id(local_id)
            info = next((w for h, w in queen.workers() if (h, w.id) == (where, local_id)), None)
            if info is None:
                raise ApiError(404, f"no worker {worker[:100]!r}", param="worker",
                               code="worker_not_found")  # fmt: skip
            if where != LOCAL_HIVE:
                try:
                    answer = await queen.fleet.get(where).worker_log(local_id, lines)
                except RbeeError as err:
                    raise spawn_error(err) from None
                return {"object": "log", "path": f"{where}:{answer.get('path')}",
                        "lines": list(answer.get("lines") or [])}  # fmt: skip
            path = Path(info.log_path)
        elif hive in (None, LOCAL_HIVE):
            path = queen.paths.logs_dir / "queen.log"
        else:
            if not ALIAS.fullmatch(hive):
                raise ApiError(400, f"hive must be a hive's alias, got {hive[:40]!r}",
                               param="hive")  # fmt: skip
            try:
                remote = queen.fleet.get(hive)
            except RbeeError as err:
                raise spawn_error(err) from None
            return {"object": "log", "path": f"{hive}: the hive's output on its SSH session",
                    "lines": remote.output(lines)}  # fmt: skip
        try:
            found = await asyncio.to_thread(read_tail, path, lines)
        except OSError as err:
            raise ApiError(404, f"the log {path} cannot be read: {err.strerror}",
                           code="log_not_found") from None  # fmt: skip
        return {"object": "log", "path": str(path), "lines": found}


def _worker_json(
    info: WorkerInfo,
    hive: str,
    qid: str,
    *,
    outstanding: int,
    dispatched: int,
    idle_s: float | None,
    parked: bool,
    stats: Mapping[str, Any] | None,
    rss: int | None,
    vram: int | None,
) -> dict[str, Any]:
    """One worker as the dashboard shows it (the fields of `GET /v1/workers`, then its live
    counters: None where the queen cannot route to it)."""
    # WorkerInfo.to_json's shape, without dataclasses.asdict's deep copies (its fields are
    # plain values): fifty workers a second add up.
    out = {f.name: getattr(info, f.name) for f in dataclasses.fields(info)}
    out.update(hive=hive, url=info.url)
    out.update(id=qid, outstanding=outstanding, dispatched=dispatched, idle_s=idle_s,
               parked=parked, rss=rss, vram=vram)  # fmt: skip
    out["stats"] = dict(stats) if stats is not None else None
    return out


def _live_stats(e: Endpoint, at: float) -> dict[str, Any] | None:
    """A worker's live figures as the queen counts them (None while it cannot be routed to):
    its requests in flight (one generates, the rest wait in its queue), those it answered in
    full, and the tokens relayed from it; `at`: when they were read."""
    if not e.routable:
        return None
    return {
        "queued": max(0, e.outstanding - 1),
        "active": min(1, e.outstanding),
        "served": e.served,
        "generated_tokens": e.tokens_out,
        "at": at,
    }


def _sweep_json(memory: Memory) -> dict[str, Any]:
    """The last sweep as the dashboard shows it: when, its status, and each check not OK."""
    problems = [
        {"target": key.partition("/")[0], "check": key.partition("/")[2], "status": status,
         "detail": memory.details.get(key, "")}
        for key, status in sorted(memory.checks.items())
        if status != "OK"
    ]  # fmt: skip
    return {"at": memory.at, "status": memory.status, "problems": problems}


def _dashboard(request: Request) -> Dashboard:
    dashboard: Dashboard | None = getattr(request.app.state, "dashboard", None)
    if dashboard is None:
        dashboard = Dashboard(request.app.state.queen)
        request.app.state.dashboard = dashboard
    return dashboard


async def snapshot(request: Request) -> Response:
    return JSONResponse(await _dashboard(request).snapshot())


async def log_tail(request: Request) -> Response:
    params = request.query_params
    answer = await _dashboard(request).log(
        worker=params.get("worker"), hive=params.get("hive"), lines=tail_lines(request)
    )
    return JSONResponse(answer)


def dashboard_routes() -> list[Route]:
    """The dashboard's routes over `app.state.queen` (its Dashboard made on first use)."""
    return [
        Route("/v1/dashboard", snapshot, methods=["GET"]),
        Route("/v1/dashboard/log", log_tail, methods=["GET"]),
    ]
