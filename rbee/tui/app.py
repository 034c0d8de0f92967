"""`rbee tui`: the fleet on one screen, refreshed every second, driven with nvitop/k9s keys.

The app polls one snapshot of the whole fleet (`GET /v1/dashboard`) per refresh and copies the
rows rbee.tui.view decides into its tables in place (rows keep their keys, so the cursor stays
on its worker and nothing flickers). Every network call runs in a Textual worker, never on the
event loop's path; an action that fails shows the queen's message and the app carries on. A
queen that is not there is retried every refresh while the screen says how to start one.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import Any, ClassVar, Protocol

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.css.query import NoMatches
from textual.widgets import (
    DataTable,
    Footer,
    Input,
    Label,
    RichLog,
    Sparkline,
    Static,
    TabbedContent,
    TabPane,
)
from textual.widgets.data_table import CellDoesNotExist

from rbee.api.jobs import JobEvent
from rbee.errors import QueenNotRunningError, RbeeError
from rbee.models.catalog import DEFAULT_MODEL_ID
from rbee.tui import view
from rbee.tui.screens import ConfirmScreen, HelpScreen, SpawnScreen
from rbee.tui.view import Rates, Row

__all__ = ["QueenSource", "RbeeApp"]

log = logging.getLogger(__name__)

REFRESH = 1.0
"""Seconds between snapshots (the issue asks for at least one a second)."""

STYLES = {"ok": "green", "warning": "dark_orange", "error": "bold red", "": ""}
"""Row hints as colours that read on light and dark terminals alike."""


class QueenSource(Protocol):
    """What the dashboard needs of a queen (rbee.tui.client.AsyncQueenClient)."""

    url: str

    async def snapshot(self) -> dict[str, Any]: ...
    async def log(
        self, *, worker: str | None = None, hive: str | None = None
    ) -> dict[str, Any]: ...
    async def submit_job(self, operation: dict[str, Any]) -> str: ...
    async def stop_worker(self, worker_id: str) -> dict[str, Any]: ...
    async def restart_worker(self, worker_id: str) -> dict[str, Any]: ...
    def stream_job(self, job_id: str) -> AsyncIterator[JobEvent]: ...


class Trust(Protocol):
    """Fetches a hive's host key and records it (rbee.tui.trust.HostKeys)."""

    async def offered(self, alias: str) -> tuple[str, str]: ...
    async def record(self, alias: str) -> str: ...


TABS = ("fleet", "models", "requests", "jobs", "log")


class RbeeApp(App[None]):
    """The dashboard of one queen."""

    TITLE = "rbee"
    CSS = """
    #status { height: 1; padding: 0 1; background: $boost; }
    #tabs { height: 1fr; }
    #status.down { background: $error 30%; }
    #hives { height: auto; max-height: 40%; }
    #workers { height: 1fr; }
    #sweep-line { height: 1; padding: 0 1; }
    #requests-table { height: auto; max-height: 40%; }
    #recent-table { height: 1fr; }
    DataTable { scrollbar-size-vertical: 1; }
    .caption { height: 1; padding: 0 1; color: $text-muted; }
    Sparkline { height: 3; margin: 0 1; }
    #jobs { height: 1fr; }
    #narration { height: 1fr; border-top: solid $primary; }
    #filter { dock: bottom; display: none; }
    #filter.shown { display: block; }
    #dialog { width: 64; height: auto; max-height: 90%; padding: 1 2; border: thick $primary;
              background: $surface; }
    ModalScreen { align: center middle; }
    #form { grid-size: 2; grid-columns: 8 1fr; grid-rows: 3; height: auto; }
    #form Label { padding: 1 0; }
    .buttons { height: auto; align-horizontal: right; margin-top: 1; }
    .buttons Button { margin-left: 1; }
    .title { text-style: bold; margin-bottom: 1; }
    .hint { color: $text-muted; }
    #keys { height: auto; }
    HelpScreen #dialog { width: 60; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("question_mark", "help", "Help"),
        Binding("q", "quit", "Quit"),
        Binding("n", "spawn", "Spawn"),
        Binding("K", "stop", "Stop"),
        Binding("r", "restart", "Restart"),
        Binding("s", "start_hive", "Start hive"),
        Binding("i", "install_hive", "Install", show=False),
        Binding("t", "trust", "Trust", show=False),
        Binding("l", "logs", "Logs"),
        Binding("slash", "filter", "Filter"),
        Binding("comma", "sort", "Sort", show=False),
        Binding("full_stop", "sort_reverse", "Reverse sort", show=False),
        Binding("escape", "clear_filter", "Clear filter", show=False),
        *(Binding(str(i + 1), f"tab('{t}')", t.title(), show=False) for i, t in enumerate(TABS)),
    ]
    KEYS_HELP: ClassVar[list[tuple[str, str]]] = [
        ("?", "this help"),
        ("q", "quit"),
        ("Tab", "next pane (Shift+Tab: previous)"),
        ("1-5", "fleet, models, requests, jobs, log"),
        ("↑↓", "move in a table"),
        ("n", "spawn a worker (model, hive, engine, device)"),
        ("K", "stop the selected worker or hive (asks)"),
        ("r", "restart the selected worker"),
        ("s", "start the selected hive"),
        ("i", "install rbee on the selected hive"),
        ("t", "trust the selected hive's host key (asks)"),
        ("l", "follow the selected worker's or hive's log"),
        ("/", "filter the tables (Escape clears)"),
        (",", "sort the focused table by its next column"),
        (".", "reverse the sort"),
    ]

    def __init__(
        self,
        source: QueenSource,
        *,
        configured_hives: Sequence[str] = (),
        trust: Trust | None = None,
        refresh: float = REFRESH,
        poll: bool = True,
    ) -> None:
        """`poll` False takes one snapshot only (snapshot tests: a frozen screen)."""
        super().__init__()
        self.source = source
        self.configured_hives = list(configured_hives)
        self.trust = trust
        self.refresh_every = refresh
        self.poll = poll
        self.snapshot: dict[str, Any] = {}
        self.connected: bool | None = None
        self.problem = ""
        self.rates = Rates()
        self.filter_text = ""
        self.sorting: dict[str, tuple[int | None, bool]] = {}
        self.log_target: tuple[str, str] | None = None
        self.narration: dict[str, list[str]] = {}
        """The progress lines of the jobs this dashboard started."""
        self.narrated: str | None = None
        """The job the jobs pane narrates."""
        self.refreshes = 0
        """Snapshots applied so far (tests wait on it)."""
        self._last_log: list[str] = []
        self._polling = False
        self.said: deque[str] = deque(maxlen=100)
        """What the app told the operator (notifications), newest last."""

    def notify(self, message: str, **kwargs: Any) -> None:
        """Show a notification, and keep its text (the operator's and the tests' record)."""
        self.said.append(message)
        kwargs.setdefault("markup", False)  # the queen's messages are text, brackets and all
        super().notify(message, **kwargs)

    # -- layout --------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Static("rbee: connecting…", id="status", markup=False)
        with TabbedContent(id="tabs", initial="fleet"):
            with TabPane("1 Fleet", id="fleet"), Vertical():
                yield DataTable(id="hives", cursor_type="row", zebra_stripes=True)
                yield DataTable(id="workers", cursor_type="row", zebra_stripes=True)
                yield Static("", id="sweep-line", markup=False)
            with TabPane("2 Models", id="models"):
                yield DataTable(id="models-table", cursor_type="row", zebra_stripes=True)
            with TabPane("3 Requests", id="requests"), Vertical():
                yield Label("requests/s, last minute", id="req-caption", classes="caption")
                yield Sparkline([], id="req-spark")
                yield Label("tokens/s, last minute", id="tok-caption", classes="caption")
                yield Sparkline([], id="tok-spark")
                yield DataTable(id="requests-table", cursor_type="row", zebra_stripes=True)
                yield Label("recent requests", classes="caption")
                yield DataTable(id="recent-table", cursor_type="row", zebra_stripes=True)
            with TabPane("4 Jobs", id="jobs"), Vertical():
                yield DataTable(id="jobs-table", cursor_type="row", zebra_stripes=True)
                yield RichLog(id="narration", wrap=True, max_lines=500)
            with TabPane("5 Log", id="log"), Vertical():
                yield Label("select a worker or hive and press l", id="log-caption",
                            classes="caption", markup=False)  # fmt: skip
                yield RichLog(id="log-view", max_lines=2000)
        yield Input(placeholder="filter (Enter keeps it, Escape clears)", id="filter")
        yield Footer()

    def on_mount(self) -> None:
        for table_id, columns in (
            ("hives", view.HIVE_COLUMNS),
            ("workers", view.WORKER_COLUMNS),
            ("models-table", view.MODEL_COLUMNS),
            ("requests-table", view.REQUEST_COLUMNS),
            ("recent-table", view.RECENT_COLUMNS),
            ("jobs-table", view.JOB_COLUMNS),
        ):
            table = self.query_one(f"#{table_id}", DataTable)
            for i, column in enumerate(columns):
                table.add_column(column, key=str(i))
        self.query_one("#workers", DataTable).focus()
        self.tick()
        if self.poll:
            self.set_interval(self.refresh_every, self.tick)

    # -- polling -------------------------------------------------------------------------------

    def tick(self) -> None:
        """Ask for the next snapshot unless the last one is still coming (a slow queen is
        never asked twice at once, and an answer on its way is never thrown away)."""
        if not self._polling:
            self._polling = True
            self.poll_queen()

    @work(group="poll")
    async def poll_queen(self) -> None:
        """Take one snapshot (a worker: the UI never waits for the queen)."""
        try:
            await self._poll()
        finally:
            self._polling = False

    async def _poll(self) -> None:
        try:
            snapshot = await self.source.snapshot()
        except QueenNotRunningError as err:
            self._down(f"{err}; retrying every {self.refresh_every:.0f}s")
            return
        except RbeeError as err:
            self._down(f"the queen at {self.source.url} does not answer: {err}; retrying")
            return
        self.connected, self.problem = True, ""
        self.snapshot = snapshot
        self.rates.add(snapshot)
        try:
            self.show_snapshot()
            if (
                self.log_target is not None
                and self.query_one("#tabs", TabbedContent).active == "log"
            ):
                await self._tail_log()
        except NoMatches:  # the app is closing: its widgets are going
            return
        self.refreshes += 1

    def _down(self, message: str) -> None:
        self.connected, self.problem = False, message
        try:
            self._status()
        except NoMatches:  # the app is closing
            return
        self.refreshes += 1

    def _status(self) -> None:
        status = self.query_one("#status", Static)
        if not self.connected:
            status.set_class(True, "down")
            status.update(self.problem or f"rbee: connecting to {self.source.url}…")
            return
        status.set_class(False, "down")
        snap = self.snapshot
        workers = snap.get("workers") or []
        ready = sum(1 for w in workers if w.get("state") == "ready")
        hives = [h for h in snap.get("hives") or () if h.get("state") == "running"]
        rates = self.rates.summary()
        problems = (snap.get("queen") or {}).get("problems") or []
        running = sum(1 for j in snap.get("jobs") or () if j.get("state") in ("queued", "running"))
        parts = [
            f"queen {self.source.url.removeprefix('http://')}",
            f"{len(hives)} hive(s)",
            f"{ready}/{len(workers)} ready",
        ]
        if problems:
            parts.append(f"{len(problems)} problem(s)")
        parts += [f"{rates['req_per_min']:.1f} req/min", f"{rates['tok_per_s_now']:.0f} tok/s"]
        if running:
            parts.append(f"{running} job(s) running")
        if self.filter_text:
            parts.append(f"filter /{self.filter_text}")
        status.update(" │ ".join(parts))

    def show_snapshot(self) -> None:
        """Copy the current snapshot into every table (in place) and the status line."""
        snap = self.snapshot
        self._status()
        self._fill("hives", view.hive_rows(snap, self.configured_hives), 1)
        self._fill("workers", view.worker_rows(snap, self.rates), 1)
        self._fill("models-table", view.model_rows(snap), 4)
        self._fill("requests-table", view.request_rows(self.rates), 3)
        now = float(snap.get("at") or 0) or None
        self._fill("recent-table", view.recent_rows(snap, now=now), 3)
        line, style = view.sweep_line(snap, now=now)
        self.query_one("#sweep-line", Static).update(_styled(line, style, True))
        self._fill("jobs-table", view.job_rows(snap, now=float(snap.get("at") or 0) or None), 3)
        requests, tokens = self.rates.series()
        self.query_one("#req-spark", Sparkline).data = requests or [0.0]
        self.query_one("#tok-spark", Sparkline).data = tokens or [0.0]
        summary = self.rates.summary()
        self.query_one("#req-caption", Label).update(
            f"requests/s, last minute ({summary['req_per_min']:.1f}/min)"
        )
        self.query_one("#tok-caption", Label).update(
            f"tokens/s, last minute ({summary['tok_per_s']:.1f} mean, "
            f"{summary['tok_per_s_now']:.1f} now)"
        )

    def _fill(self, table_id: str, rows: list[Row], state: int) -> None:
        """Show `rows` in a table: filtered and sorted, changed cells only, cursor kept; the
        cells of column `state` coloured by their row's hint."""
        table = self.query_one(f"#{table_id}", DataTable)
        column, reverse = self.sorting.get(table_id, (None, False))
        rows = view.sorted_rows(view.filtered(rows, self.filter_text), column, reverse)
        keys = [r.key for r in rows]
        current = [str(k.value) for k in table.rows]
        if keys == current:
            for row in rows:
                for i, cell in enumerate(row.cells):
                    styled = _styled(cell, row.style, i == state)
                    shown = table.get_cell(row.key, str(i))
                    # Text's == compares the characters only, not the colour.
                    if not isinstance(shown, Text) or (shown.plain, shown.style) != (
                        styled.plain,
                        styled.style,
                    ):
                        table.update_cell(row.key, str(i), styled)
            return
        selected = self._selected_key(table)
        table.clear()
        for row in rows:
            table.add_row(*(_styled(c, row.style, i == state) for i, c in enumerate(row.cells)),
                          key=row.key)  # fmt: skip
        if selected in keys:
            table.move_cursor(row=keys.index(selected), animate=False)

    @staticmethod
    def _selected_key(table: DataTable[Any]) -> str | None:
        if not table.row_count:
            return None
        try:
            key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
        except CellDoesNotExist:  # the cursor is past a row just removed
            return None
        return None if key.value is None else str(key.value)

    def selected(self, table_id: str) -> str | None:
        """The key of the row under a table's cursor (a worker id, a hive alias, a job id)."""
        return self._selected_key(self.query_one(f"#{table_id}", DataTable))

    def _focused_table(self) -> DataTable[Any] | None:
        focused = self.focused
        return focused if isinstance(focused, DataTable) else None

    # -- actions -------------------------------------------------------------------------------

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.KEYS_HELP))

    def action_tab(self, tab: str) -> None:
        self.query_one("#tabs", TabbedContent).active = tab
        table = {"fleet": "#workers", "models": "#models-table", "requests": "#requests-table",
                 "jobs": "#jobs-table"}.get(tab)  # fmt: skip
        if table:
            self.query_one(table, DataTable).focus()
        if tab == "log":
            self.query_one("#log-view", RichLog).focus()
            self._refresh_log()

    def _hive_names(self) -> list[str]:
        running = [str(h["name"]) for h in self.snapshot.get("hives") or ()
                   if h.get("state") == "running"]  # fmt: skip
        return running or ["localhost"]

    def action_spawn(self) -> None:
        hive = self.selected("hives") or "localhost"
        models = [str(w.get("model")) for w in self.snapshot.get("workers") or ()]
        screen = SpawnScreen(
            model=models[0] if models else DEFAULT_MODEL_ID, hives=self._hive_names(), hive=hive
        )
        self.push_screen(screen, self._spawn_answered)

    def _spawn_answered(self, operation: dict[str, Any] | None) -> None:
        if operation is not None:
            self.run_job(operation, f"spawn {operation['model']} on {operation['hive']}")

    def _target(self) -> tuple[str, str] | None:
        """("worker", id) or ("hive", alias): what the focused table's cursor is on."""
        table = self._focused_table()
        if table is None:
            return None
        if table.id == "workers":
            key = self.selected("workers")
            return ("worker", key) if key else None
        if table.id == "hives":
            key = self.selected("hives")
            return ("hive", key) if key else None
        return None

    def action_stop(self) -> None:
        target = self._target()
        if target is None:
            self.notify("select a worker or a hive first", severity="warning")
            return
        kind, name = target
        if kind == "hive" and name == "localhost":
            self.notify("localhost is the queen's own hive: stop the queen instead",
                        severity="warning")  # fmt: skip
            return
        what = f"worker {name}" if kind == "worker" else f"hive {name} and all its workers"
        self.push_screen(
            ConfirmScreen(f"Stop {what}?"),
            lambda yes: self._stop(kind, name) if yes else None,
        )

    def _stop(self, kind: str, name: str) -> None:
        if kind == "worker":
            self.call_action(f"worker {name} stopped", self.source.stop_worker(name))
        else:
            self.run_job({"kind": "hive.stop", "alias": name}, f"stop hive {name}")

    def action_restart(self) -> None:
        key = self.selected("workers")
        if key is None:
            self.notify("select a worker first", severity="warning")
            return
        self.notify(f"restarting {key}…")
        self.call_action(f"worker {key} ready again", self.source.restart_worker(key))

    def _selected_hive(self, verb: str) -> str | None:
        key = self.selected("hives")
        if key is None or key == "localhost":
            self.notify(f"select a remote hive to {verb} (Tab to the hives table)",
                        severity="warning")  # fmt: skip
            return None
        return key

    def action_start_hive(self) -> None:
        alias = self._selected_hive("start")
        if alias:
            self.run_job({"kind": "hive.start", "alias": alias}, f"start hive {alias}")

    def action_install_hive(self) -> None:
        alias = self._selected_hive("install")
        if alias:
            self.run_job({"kind": "hive.install", "alias": alias}, f"install hive {alias}")

    def action_trust(self) -> None:
        alias = self._selected_hive("trust")
        if alias is None:
            return
        if self.trust is None:
            self.notify("no hives.conf to trust hives from (pass --hives)", severity="error")
            return
        self._ask_trust(alias)

    @work(group="actions")
    async def _ask_trust(self, alias: str) -> None:
        assert self.trust is not None
        try:
            algorithm, fingerprint = await self.trust.offered(alias)
        except RbeeError as err:
            self.notify(str(err), title=f"trust {alias}", severity="error", timeout=15)
            return
        question = (
            f"{alias} offers this host key:\n\n  {algorithm} {fingerprint}\n\n"
            "Compare it with `ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub` on that machine.\n"
            "Trust it and record it in known_hosts?"
        )
        if await self.push_screen_wait(ConfirmScreen(question)):
            try:
                self.notify(await self.trust.record(alias), title=f"trust {alias}")
            except (RbeeError, OSError) as err:
                self.notify(str(err), title=f"trust {alias}", severity="error", timeout=15)

    def action_logs(self) -> None:
        target = self._target()
        if target is None:
            self.notify("select a worker or a hive first", severity="warning")
            return
        self.log_target = target
        self.query_one("#log-view", RichLog).clear()
        self._last_log = []
        self.action_tab("log")

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.add_class("shown")
        box.value = self.filter_text
        box.focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        if self.filter_text or box.has_class("shown"):
            self.filter_text = ""
            box.value = ""
            box.remove_class("shown")
            self.query_one("#workers", DataTable).focus()
            self.show_snapshot()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value
        self.show_snapshot()

    @on(Input.Submitted, "#filter")
    def _filter_kept(self, _: Input.Submitted) -> None:
        self.query_one("#filter", Input).remove_class("shown")
        self.query_one("#workers", DataTable).focus()

    def action_sort(self) -> None:
        table = self._focused_table()
        if table is None or table.id is None:
            return
        column, reverse = self.sorting.get(table.id, (None, False))
        count = len(table.columns)
        column = 0 if column is None else (column + 1) % count
        self.sorting[table.id] = (column, reverse)
        self.notify(f"sorted by {table.ordered_columns[column].label}", timeout=2)
        self.show_snapshot()

    def action_sort_reverse(self) -> None:
        table = self._focused_table()
        if table is None or table.id is None:
            return
        column, reverse = self.sorting.get(table.id, (0, False))
        self.sorting[table.id] = (column, not reverse)
        self.show_snapshot()

    # -- running things on the queen ------------------------------------------------------------

    @work(group="actions")
    async def call_action(self, done: str, call: Any) -> None:
        """Await one admin call; say it worked, or show the queen's error (never crash)."""
        try:
            await call
        except RbeeError as err:
            self.notify(str(err), title="failed", severity="error", timeout=15)
            return
        self.notify(done)
        self.tick()

    @work(group="actions")
    async def run_job(self, operation: dict[str, Any], title: str) -> None:
        """Submit a job and follow its progress narration in the jobs pane until it ends."""
        try:
            job_id = await self.source.submit_job(operation)
        except RbeeError as err:
            self.notify(str(err), title=f"{title}: refused", severity="error", timeout=15)
            return
        self.notify(f"{title}: job {job_id}", timeout=3)
        self.narrate(job_id)
        lines = self.narration.setdefault(job_id, [])
        failed: str | None = None
        try:
            async for event in self.source.stream_job(job_id):
                line = _narrate(event)
                if line:
                    lines.append(line)
                if event.type == "error":
                    failed = event.message
        except RbeeError as err:
            failed = str(err)
        self.tick()
        if failed:
            self.notify(failed, title=f"{title}: failed", severity="error", timeout=20)
        else:
            self.notify(f"{title}: done")

    @on(DataTable.RowHighlighted, "#jobs-table")
    def _job_selected(self, event: DataTable.RowHighlighted) -> None:
        job_id = None if event.row_key.value is None else str(event.row_key.value)
        if job_id is not None and job_id != self.narrated:
            self.narrate(job_id)

    @work(exclusive=True, group="narrate")
    async def narrate(self, job_id: str) -> None:
        """Show one job's narration in the jobs pane: its history, then live until it ends."""
        self.narrated = job_id
        out = self.query_one("#narration", RichLog)
        out.clear()
        out.write(f"{job_id}:")
        try:
            async for event in self.source.stream_job(job_id):
                line = _narrate(event)
                if line:
                    out.write(line)
        except RbeeError as err:
            out.write(f"(the narration stopped: {err})")

    # -- logs ----------------------------------------------------------------------------------

    @work(exclusive=True, group="log")
    async def _refresh_log(self) -> None:
        await self._tail_log()

    async def _tail_log(self) -> None:
        if self.log_target is None:
            return
        kind, name = self.log_target
        caption = self.query_one("#log-caption", Label)
        try:
            answer = await (
                self.source.log(worker=name) if kind == "worker" else self.source.log(hive=name)
            )
        except RbeeError as err:
            caption.update(f"{kind} {name}: {err}")
            return
        caption.update(f"{kind} {name}: {answer.get('path')} (follows)")
        lines = [str(x) for x in answer.get("lines") or ()]
        out = self.query_one("#log-view", RichLog)
        fresh = _new_lines(self._last_log, lines)
        if fresh is None:
            out.clear()
            fresh = lines
        for line in fresh:
            out.write(line)
        self._last_log = lines


def _new_lines(before: list[str], after: list[str]) -> list[str] | None:
    """The lines of `after` past what `before` showed; None if they do not follow on (rotated,
    or a different log): show it all again."""
    if not before:
        return None if after else []
    if after == before:
        return []
    tail = before[-1]
    for i in range(len(after) - 1, -1, -1):
        if after[i] == tail and after[: i + 1] == before[-(i + 1) :]:
            return after[i + 1 :]
    return None


def _narrate(event: JobEvent) -> str:
    if event.type == "step":
        return (f"[{event.step}/{event.steps}] " if event.step and event.steps else "") + (
            event.message
        )
    if event.type == "progress":
        if event.total:
            return f"{event.message}: {view.size(event.done or 0)}/{view.size(event.total)}"
        return f"{event.message}: {view.size(event.done or 0)}"
    if event.type == "error":
        return f"error: {event.message}"
    return f"  {event.message}" if event.type == "log" else event.message


def _styled(cell: str, style: str, colour: bool) -> Text:
    """A cell as text, never as markup (a worker's error may hold brackets); a state cell
    coloured by its row's hint."""
    return Text(cell, style=STYLES.get(style, "") if colour else "", end="")
