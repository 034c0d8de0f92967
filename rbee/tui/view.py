"""What the dashboard shows, decided from the queen's snapshots: pure functions of JSON.

Every table is a list of `Row`s (a stable key, then the cells as text); the app only copies them
into its widgets, and `rbee tui --once` prints the same rows. Rates (requests/s, tokens/s) come
from the difference between snapshots, which carry totals since the queen started (`Rates`).
"""

from __future__ import annotations

import itertools
import re
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = [
    "HIVE_COLUMNS",
    "JOB_COLUMNS",
    "MODEL_COLUMNS",
    "RECENT_COLUMNS",
    "REQUEST_COLUMNS",
    "WORKER_COLUMNS",
    "Rates",
    "Row",
    "age",
    "bar",
    "filtered",
    "hive_rows",
    "job_rows",
    "model_rows",
    "recent_rows",
    "request_rows",
    "size",
    "sorted_rows",
    "sweep_line",
    "worker_rows",
    "worker_state",
]

HIVE_COLUMNS = ("HIVE", "STATE", "LEASE", "WRK", "CPU", "RAM", "GPU VRAM", "ENGINES", "OS/ARCH")
WORKER_COLUMNS = ("WORKER", "STATE", "HIVE", "MODEL", "TOK/S", "QUEUE", "SERVED", "RESTARTS",
                  "LAST EXIT", "ENGINE", "DEVICE", "RSS", "VRAM")  # fmt: skip
"""Most telling first (k9s and nvitop habits): what fits in 80 columns is what matters."""
MODEL_COLUMNS = ("MODEL", "HIVE", "FORMATS", "SIZE", "LOADED ON")
REQUEST_COLUMNS = ("MODEL", "WORKER", "REQ/MIN", "ERRORS", "TTFT", "TOK/S", "TOTAL")
JOB_COLUMNS = ("JOB", "KIND", "TARGET", "STATE", "AGE", "LAST")
RECENT_COLUMNS = ("AGO", "MODEL", "WORKER", "STATUS", "TTFT", "TIME", "TOKENS")

WINDOW = 60.0
"""Seconds the rates and sparklines look back over."""


@dataclass(frozen=True)
class Row:
    """One line of a table: `key` stays the same across refreshes (the cursor follows it)."""

    key: str
    cells: tuple[str, ...]
    style: str = ""
    """A hint for the app: "error", "warning", "ok" or "" (the cell text says it too)."""


def size(value: float | None) -> str:
    """Bytes as a short human figure: 98M, 15.6G."""
    if value is None:
        return "-"
    for unit, scale in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if value >= scale * 1000 / 1024:  # 1000M reads 1.0G: four digits do not fit
            figure = value / scale
            return f"{figure:.1f}{unit}" if figure < 10 else f"{figure:.0f}{unit}"
    return f"{value:.0f}B"


def age(seconds: float | None) -> str:
    """A duration as k9s shows ages: 42s, 3m, 2h, 5d."""
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


def bar(used: float, total: float, width: int = 8) -> str:
    """A text bar of `used` out of `total` (nvitop's memory bars): `███▌    `."""
    if total <= 0:
        return " " * width
    eighths = round(max(0.0, min(1.0, used / total)) * width * 8)
    full, part = divmod(eighths, 8)
    partial = " ▏▎▍▌▋▊▉"[part] if part else ""
    return ("█" * full + partial).ljust(width)


def _hive_state(hive: Mapping[str, Any]) -> tuple[str, str]:
    state = str(hive.get("state") or "-")
    shown = {"running": "connected", "stopped": "stopped", "lost": "connecting"}.get(state, state)
    error = hive.get("last_error")
    if state in ("error", "lost") and error:
        return f"{shown}: {error}", "error"
    return shown, {"connected": "ok", "connecting": "warning", "stopped": ""}.get(shown, "warning")


def hive_rows(snapshot: Mapping[str, Any], configured: Sequence[str] = ()) -> list[Row]:
    """The hives the queen runs, then those in hives.conf it does not (shown stopped)."""
    rows = []
    seen = set()
    for hive in snapshot.get("hives") or ():
        name = str(hive.get("name"))
        seen.add(name)
        facts = hive.get("facts") or {}
        state, style = _hive_state(hive)
        mem_total, mem_free = facts.get("mem_total"), facts.get("mem_available")
        ram = "-"
        if mem_total:
            used = mem_total - (mem_free or 0)
            ram = f"{bar(used, mem_total, 5)} {size(used)}/{size(mem_total)}"
        gpus = [
            f"{bar(g['vram_total'] - g['vram_free'], g['vram_total'], 5)} "
            f"{size(g['vram_total'] - g['vram_free'])}/{size(g['vram_total'])}"
            for g in facts.get("gpus") or ()
            if g.get("vram_total")
        ]
        osarch = f"{facts['os']}/{facts['arch']}" if facts.get("os") else "-"
        rows.append(
            Row(
                name,
                (
                    name,
                    state,
                    age(hive.get("lease_age")) if hive.get("lease_age") is not None else "-",
                    str(hive.get("workers", 0)),
                    str(facts.get("cpu_count") or "-"),
                    ram,
                    ", ".join(gpus) or "-",
                    ",".join(facts.get("engines") or ()) or "-",
                    osarch,
                ),
                style,
            )
        )
    for name in configured:
        if name not in seen:
            rows.append(Row(name, (name, "stopped", "-", "0", "-", "-", "-", "-", "-")))
    return rows


def worker_state(worker: Mapping[str, Any]) -> tuple[str, str]:
    """What a worker is doing, as an operator reads it: loading, ready, busy (n), idle 3m,
    restarting, crash-loop, parked; with a style hint."""
    state = str(worker.get("state"))
    if state == "starting":
        return "loading", "warning"
    if state == "ready":
        outstanding = int(worker.get("outstanding") or 0)
        if outstanding:
            return f"busy ({outstanding})", "ok"
        idle = worker.get("idle_s")
        if isinstance(idle, int | float) and idle >= 60:
            return f"idle {age(idle)}", "ok"
        return "ready", "ok"
    if state == "restarting":
        return "restarting", "warning"
    if state == "crash-loop":
        return "crash-loop", "error"
    return state, ""


def worker_rows(snapshot: Mapping[str, Any], rates: Rates | None = None) -> list[Row]:
    """One row per worker, with its live counters (tokens/s from `rates`)."""
    rows = []
    for w in snapshot.get("workers") or ():
        stats = w.get("stats") or {}
        state, style = worker_state(w)
        queue = stats.get("queued")
        tps = rates.worker_tokens(str(w["id"])) if rates is not None else None
        rows.append(
            Row(
                str(w["id"]),
                (
                    str(w["id"]),
                    state,
                    str(w.get("hive")),
                    str(w.get("model")),
                    f"{tps:.1f}" if tps is not None else "-",
                    str(queue) if queue is not None else "-",
                    str(w.get("dispatched") or 0),
                    str(w.get("restarts") or 0),
                    str(w.get("last_exit") or "-"),
                    str(w.get("engine")),
                    str(w.get("device")),
                    size(w.get("rss")),
                    size(w.get("vram")),
                ),
                style,
            )
        )
    return rows


def model_rows(snapshot: Mapping[str, Any]) -> list[Row]:
    """Each model in each hive's store, with the workers that have it loaded."""
    loaded: dict[tuple[str, str], list[str]] = {}
    for w in snapshot.get("workers") or ():
        if w.get("state") not in ("exited", "parked"):
            loaded.setdefault((str(w.get("model")), str(w.get("hive"))), []).append(str(w["id"]))
    rows = []
    for m in snapshot.get("models") or ():
        model, hive = str(m.get("id")), str(m.get("hive"))
        where = loaded.get((model, hive), [])
        rows.append(
            Row(
                f"{model}@{hive}",
                (model, hive, ",".join(m.get("formats") or ()), size(m.get("size")),
                 ", ".join(where) or "-"),
                "ok" if where else "",
            )
        )  # fmt: skip
    return rows


def _target(operation: Mapping[str, Any]) -> str:
    if operation.get("model"):
        return f"{operation['model']}@{operation.get('hive') or 'localhost'}"
    return str(operation.get("alias") or "-")


def job_rows(snapshot: Mapping[str, Any], now: float | None = None) -> list[Row]:
    """Running jobs first, then the recent ones, newest first."""
    now = time.time() if now is None else now
    jobs = sorted(
        snapshot.get("jobs") or (),
        key=lambda j: (j.get("state") not in ("queued", "running"), -float(j["created_at"])),
    )
    styles = {"failed": "error", "cancelled": "warning", "succeeded": "ok"}
    return [
        Row(
            str(j["job_id"]),
            (
                str(j["job_id"]),
                str(j.get("kind")),
                _target(j.get("operation") or {}),
                str(j.get("state")),
                age(now - float(j["created_at"])),
                str(j.get("error") or j.get("last_message") or ""),
            ),
            styles.get(str(j.get("state")), ""),
        )
        for j in jobs
    ]


@dataclass
class _Sample:
    at: float
    requests: dict[str, int]
    tokens: dict[str, int]
    ttft: dict[str, tuple[float, int]]
    errors: dict[str, int]


@dataclass
class Rates:
    """Request and token rates over the last minute, from the totals in successive snapshots."""

    window: float = WINDOW
    _samples: deque[_Sample] = field(default_factory=deque)
    models: dict[str, str] = field(default_factory=dict)
    """Worker id → its model (for the per-worker request rows)."""

    _points: dict[str, tuple[tuple[float, int], ...]] = field(default_factory=dict)
    """Worker id → its last two (read at, generated tokens) readings (the queen reuses a
    reading for a while and says when it was read: rates come from the readings' own times)."""

    def add(self, snapshot: Mapping[str, Any]) -> None:
        """Record one snapshot's totals (at its own `at` time)."""
        at = float(snapshot.get("at") or time.time())
        requests: dict[str, int] = {}
        errors: dict[str, int] = {}
        ttft: dict[str, tuple[float, int]] = {}
        for r in snapshot.get("requests") or ():
            key = f"{r.get('model')}|{r.get('worker') or '-'}"
            requests[key] = requests.get(key, 0) + int(r.get("requests") or 0)
            errors[key] = errors.get(key, 0) + int(r.get("errors") or 0)
            s, n = ttft.get(key, (0.0, 0))
            ttft[key] = (s + float(r.get("ttft_sum") or 0.0), n + int(r.get("ttft_count") or 0))
        tokens = {}
        for w in snapshot.get("workers") or ():
            self.models[str(w["id"])] = str(w.get("model"))
            stats = w.get("stats") or {}
            generated = stats.get("generated_tokens")
            if isinstance(generated, int):
                wid = str(w["id"])
                tokens[wid] = generated
                read = float(stats.get("at") or at)
                points = self._points.get(wid, ())
                if not points or read > points[-1][0]:
                    self._points[wid] = (*points[-1:], (read, generated))
        self._samples.append(_Sample(at, requests, tokens, ttft, errors))
        while len(self._samples) > 2 and at - self._samples[0].at > self.window:
            self._samples.popleft()

    def _pairs(self) -> Iterable[tuple[_Sample, _Sample]]:
        return itertools.pairwise(self._samples)

    def series(self) -> tuple[list[float], list[float]]:
        """Requests/s and tokens/s between each two snapshots of the window (the sparklines)."""
        requests, tokens = [], []
        for a, b in self._pairs():
            span = max(b.at - a.at, 1e-6)
            requests.append(_growth(a.requests, b.requests) / span)
            tokens.append(_growth(a.tokens, b.tokens) / span)
        return requests, tokens

    def worker_tokens(self, worker: str) -> float | None:
        """A worker's tokens/s between its last two readings (None before two)."""
        if not self._samples or worker not in self._samples[-1].tokens:
            return None  # gone, or not ready now
        points = self._points.get(worker, ())
        if len(points) < 2:
            return None
        (a_at, a), (b_at, b) = points
        return max(0, b - a) / max(b_at - a_at, 1e-6)

    def summary(self) -> dict[str, float]:
        """Requests/min and tokens/s over the window, and tokens/s now (the workers' own)."""
        if len(self._samples) < 2:
            return {"req_per_min": 0.0, "tok_per_s": 0.0, "tok_per_s_now": 0.0}
        first, last = self._samples[0], self._samples[-1]
        span = max(last.at - first.at, 1e-6)
        now = [self.worker_tokens(w) for w in last.tokens]
        return {
            "req_per_min": _growth(first.requests, last.requests) * 60 / span,
            "tok_per_s": _growth(first.tokens, last.tokens) / span,
            "tok_per_s_now": sum(r for r in now if r is not None),
        }

    def rows(self) -> list[Row]:
        """Per model and worker: requests/min, errors, mean TTFT and tokens/s over the window."""
        if not self._samples:
            return []
        first, last = self._samples[0], self._samples[-1]
        span = max(last.at - first.at, 1e-6)
        rows = []
        for key in sorted(last.requests):
            model, worker = key.split("|", 1)
            done = last.requests[key] - first.requests.get(key, 0)
            s1, n1 = last.ttft.get(key, (0.0, 0))
            s0, n0 = first.ttft.get(key, (0.0, 0))
            ttft = f"{(s1 - s0) / (n1 - n0) * 1000:.0f}ms" if n1 > n0 else "-"
            tokens = last.tokens.get(worker, 0) - first.tokens.get(worker, 0)
            errors = last.errors.get(key, 0) - first.errors.get(key, 0)
            rows.append(
                Row(
                    key,
                    (model, worker, f"{done * 60 / span:.1f}" if len(self._samples) > 1 else "-",
                     str(errors), ttft, f"{tokens / span:.1f}" if worker != "-" else "-",
                     str(last.requests[key])),
                    "error" if errors else "",
                )
            )  # fmt: skip
        return rows


def _growth(before: Mapping[str, int], after: Mapping[str, int]) -> int:
    """How much the totals grew (a counter that went down, a restarted worker, counts 0)."""
    return sum(max(0, v - before.get(k, v)) for k, v in after.items())


def request_rows(rates: Rates) -> list[Row]:
    """The request table: see `Rates.rows`."""
    return rates.rows()


def _millis(value: Any) -> str:
    if not isinstance(value, int | float):
        return "-"
    return f"{value:.0f}ms" if value < 1000 else f"{value / 1000:.1f}s"


def _status_style(status: int) -> str:
    if 200 <= status < 300:
        return "ok"
    return "error" if status >= 500 and status != 503 else "warning"


def recent_rows(snapshot: Mapping[str, Any], now: float | None = None) -> list[Row]:
    """The last requests the queen answered, newest first: when, model, worker, status, time to
    first token (streams), time in all and tokens generated."""
    at_now = now if now is not None else float(snapshot.get("at") or time.time())
    rows, seen = [], set()
    for r in snapshot.get("recent") or ():
        status = int(r.get("status") or 0)
        at = float(r.get("at") or at_now)
        key = f"{at:.3f}|{r.get('worker')}|{r.get('model')}|{status}|{r.get('duration_ms')}"
        while key in seen:  # two answers alike in the same millisecond: keys stay unique
            key += "+"
        seen.add(key)
        tokens = r.get("tokens")
        rows.append(
            Row(
                key,
                (
                    age(at_now - at),
                    str(r.get("model") or "-"),
                    str(r.get("worker") or "-"),
                    str(status),
                    _millis(r.get("ttft_ms")),
                    _millis(r.get("duration_ms")),
                    str(tokens) if isinstance(tokens, int) else "-",
                ),
                _status_style(status),
            )
        )
    return rows


def sweep_line(snapshot: Mapping[str, Any], now: float | None = None) -> tuple[str, str]:
    """The last sweep in one line (when, status, what was not OK) and its style hint."""
    sweep = snapshot.get("sweep")
    if not isinstance(sweep, Mapping):
        return "sweep: none has run on this machine (`rbee sweep`; --install-cron runs it)", ""
    status = str(sweep.get("status") or "UNKNOWN")
    try:
        when = datetime.fromisoformat(str(sweep.get("at"))).timestamp()
        ago = f" {age((now if now is not None else time.time()) - when)} ago"
    except ValueError:
        ago = ""
    problems = [p for p in sweep.get("problems") or () if isinstance(p, Mapping)]
    named = [f"{p.get('target')}/{p.get('check')} {p.get('status')}" for p in problems[:4]]
    if len(problems) > 4:
        named.append(f"+{len(problems) - 4} more")
    text = f"sweep{ago}: {status}" + (f" ({', '.join(named)})" if named else "")
    style = {"OK": "ok", "WARNING": "warning"}.get(status, "error")
    return text, style


def filtered(rows: Iterable[Row], text: str) -> list[Row]:
    """The rows with `text` in any cell (case-insensitive); all of them for ""."""
    needle = text.strip().lower()
    return [r for r in rows if not needle or any(needle in c.lower() for c in r.cells)]


_NUMBER = re.compile(r"^(\d+(?:\.\d+)?)([KMGT]?)")
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _sort_key(cell: str) -> tuple[int, float, str]:
    """Numbers (sizes with their unit) before words, each in their own order."""
    found = _NUMBER.match(cell)
    if found is None:
        return (1, 0.0, cell.lower())
    return (0, float(found.group(1)) * _UNITS[found.group(2)], cell)


def sorted_rows(rows: Iterable[Row], column: int | None, reverse: bool = False) -> list[Row]:
    """The rows by one column (numbers as numbers); as they came for None."""
    if column is None:
        return list(rows)
    return sorted(rows, key=lambda r: _sort_key(r.cells[column]), reverse=reverse)
