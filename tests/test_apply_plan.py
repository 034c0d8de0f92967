"""The plan of `rbee apply`, a pure function of a playbook and the fleet as it is: table tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from rbee.apply.plan import Fleet, HiveNow, WorkerNow, make_plan, summary, unsettled
from rbee.apply.playbook import Playbook, Policy, Want
from rbee.cli.apply import render_diff

M = "smollm2-135m"
BOOK = Path("play.yaml")


def book(*wants: Want, prune: bool = False, policies: tuple[Policy, ...] = ()) -> Playbook:
    return Playbook(BOOK, wants, policies, prune)


def ready(worker_id: str, model: str = M, engine: str = "llamacpp", device: str = "cpu",
          state: str = "ready", repack: str = "auto", threads: int = 0) -> WorkerNow:  # fmt: skip
    return WorkerNow(worker_id, model, engine, device, state, context_length=4096,
                     threads=threads, cpu_repack=repack)  # fmt: skip


def running(alias: str, *workers: WorkerNow, models: tuple[str, ...] = (M,)) -> HiveNow:
    return HiveNow(alias, True, "running", models=frozenset(models), workers=workers)


def lines(playbook: Playbook, fleet: Fleet) -> list[str]:
    return [a.describe() for a in make_plan(playbook, fleet)]


def test_a_fresh_hive_is_installed_started_given_the_model_and_its_workers() -> None:
    fresh = HiveNow("h1", False, installed=False, install_note="rbee is not installed in /x")
    old = HiveNow("h2", False, installed=True)
    plan = lines(
        book(Want("h1", M, 2), Want("h2", M, 1, "llamacpp", "cpu")),
        Fleet({"h1": fresh, "h2": old}),
    )
    assert plan == [
        "+ install rbee on h1: rbee is not installed in /x",
        "+ start hive h1",
        "+ start hive h2",
        f"+ upload model {M} to h1: if its store lacks it",
        f"+ spawn {M} on h1 (auto, auto): 1 of 2",
        f"+ spawn {M} on h1 (auto, auto): 2 of 2",
        f"+ upload model {M} to h2: if its store lacks it",
        f"+ spawn {M} on h2 (llamacpp, cpu)",
    ]


def test_a_fleet_that_matches_needs_nothing() -> None:
    fleet = Fleet(
        {"h1": running("h1", ready(f"{M}-1@h1")), "localhost": running("localhost", ready("w-1"))},
        {M: Policy(M, 900.0, True)},
    )
    playbook = book(
        Want("localhost", M), Want("h1", M, 1, "llamacpp"), policies=(Policy(M, 900.0, True),)
    )
    assert make_plan(playbook, fleet) == []


@pytest.mark.parametrize(
    ("want", "workers", "expected"),
    [
        # more replicas: the hive has the model, so no upload
        (Want("h1", M, 2), [ready(f"{M}-1@h1")], [f"+ spawn {M} on h1 (auto, auto): 2 of 2"]),
        # fewer: a worker that does not serve goes first, then the newest
        (Want("h1", M, 1), [ready(f"{M}-1@h1"), ready(f"{M}-2@h1", state="crash-loop")],
         [f"- stop {M}-2@h1 ({M} on h1): 1 replica(s) wanted, it is crash-loop"]),
        (Want("h1", M, 1), [ready(f"{M}-3@h1"), ready(f"{M}-10@h1")],
         [f"- stop {M}-10@h1 ({M} on h1): 1 replica(s) wanted"]),
        # parked workers count: a request brings them back
        (Want("h1", M, 1), [ready(f"{M}-1@h1", state="parked")], []),
        (Want("h1", M, 0), [ready(f"{M}-1@h1")],
         [f"- stop {M}-1@h1 ({M} on h1): 0 replica(s) wanted"]),
        # a constraint the worker breaks: its successor first, the stop last
        (Want("h1", M, 1, "mlx"), [ready(f"{M}-1@h1")],
         [f"+ spawn {M} on h1 (mlx, auto)",
          f"- stop {M}-1@h1 ({M} on h1): engine llamacpp, the playbook wants mlx"]),
        (Want("h1", M, 1, "auto", "cuda:1"), [ready(f"{M}-1@h1", device="cuda:0")],
         [f"+ spawn {M} on h1 (auto, cuda:1)",
          f"- stop {M}-1@h1 ({M} on h1): device cuda:0, the playbook wants cuda:1"]),

        # settings the playbook states: a worker started with others is replaced
        (Want("h1", M, 1, settings=(("ctx_size", 8192),)), [ready(f"{M}-1@h1")],
         [f"+ spawn {M} on h1 (auto, auto, ctx_size 8192)",
          f"- stop {M}-1@h1 ({M} on h1): ctx_size 4096, the playbook wants 8192"]),
        (Want("h1", M, 1, settings=(("ctx_size", 4096), ("max_queued", 8))),
         [ready(f"{M}-1@h1")], []),
        (Want("h1", M, 1, settings=(("max_queued", 2), ("threads", 4))), [ready(f"{M}-1@h1")],
         [f"+ spawn {M} on h1 (auto, auto, max_queued 2, threads 4)",
          f"- stop {M}-1@h1 ({M} on h1): max_queued 8, the playbook wants 2"]),
        (Want("h1", M, 1, settings=(("cpu_repack", "off"),)), [ready(f"{M}-1@h1")],
         [f"+ spawn {M} on h1 (auto, auto, cpu_repack off)",
          f"- stop {M}-1@h1 ({M} on h1): cpu_repack auto, the playbook wants off"]),
        # auto repacking and 0 threads leave the choice to rbee: any worker fits
        (Want("h1", M, 1, settings=(("cpu_repack", "auto"), ("threads", 0))),
         [ready(f"{M}-1@h1", repack="on", threads=2)], []),
    ],
)  # fmt: skip
def test_replicas_and_constraints(
    want: Want, workers: list[WorkerNow], expected: list[str]
) -> None:
    assert lines(book(want), Fleet({"h1": running("h1", *workers)})) == expected


def test_a_running_hive_without_the_model_gets_it_uploaded_first() -> None:
    fleet = Fleet({"h1": running("h1", models=())})
    assert lines(book(Want("h1", M)), fleet) == [
        f"+ upload model {M} to h1",
        f"+ spawn {M} on h1 (auto, auto)",
    ]


def test_the_queens_machine_is_never_installed_started_or_uploaded_to() -> None:
    local = HiveNow("localhost", True, "running", models=frozenset())
    assert lines(book(Want("localhost", M)), Fleet({"localhost": local})) == [
        f"+ spawn {M} on localhost (auto, auto)"
    ]


def test_other_workers_are_left_alone_unless_the_playbook_prunes() -> None:
    other = ready("qwen-1@h1", model="qwen")
    embed = WorkerNow(f"{M}-2@h1", M, "llamacpp", "cpu", "ready", embeddings=True)
    fleet = Fleet({"h1": running("h1", ready(f"{M}-1@h1"), other, embed)})
    assert make_plan(book(Want("h1", M)), fleet) == []
    assert lines(book(Want("h1", M), prune=True), fleet) == [
        "- stop qwen-1@h1 (qwen on h1): prune: the playbook places no such worker here",
        f"- stop {M}-2@h1 ({M} on h1): prune: the playbook places no such worker here",
    ]


def test_hives_the_playbook_does_not_name_are_not_touched() -> None:
    fleet = Fleet({"h1": running("h1", ready(f"{M}-1@h1"))})
    # h2 runs workers too, but the playbook does not name it: it is not even looked at.
    assert make_plan(book(Want("h1", M), prune=True), fleet) == []


def test_policies_change_only_where_they_differ() -> None:
    fleet = Fleet({"h1": running("h1", ready(f"{M}-1@h1"))}, {M: Policy(M, 900.0, True)})
    same = book(Want("h1", M), policies=(Policy(M, 900.0, None),))
    assert make_plan(same, fleet) == []
    other = book(Want("h1", M), policies=(Policy(M, 0.0, False),))
    assert lines(other, fleet) == [
        f"~ set {M}'s policy on the queen to idle_ttl 0s, autoload off: now idle_ttl is 900s, now "
        "autoload is on"
    ]


def test_steps_run_installs_then_starts_then_policies_then_workers_then_stops() -> None:
    fleet = Fleet(
        {
            "h1": running("h1", ready("old-1@h1", model="old")),
            "h2": HiveNow("h2", False, installed=False, install_note="not installed"),
        },
        {M: Policy(M, 900.0, True)},
    )
    plan = make_plan(
        book(Want("h1", M), Want("h2", M), prune=True, policies=(Policy(M, 60.0, None),)), fleet
    )
    assert [(a.verb, a.hive) for a in plan] == [
        ("install", "h2"),
        ("start", "h2"),
        ("policy", "localhost"),
        ("spawn", "h1"),
        ("upload", "h2"),
        ("spawn", "h2"),
        ("stop", "h1"),
    ]
    assert summary(plan) == "5 to add, 1 to change, 1 to remove"


def test_the_diff_shows_wanted_against_running_per_hive() -> None:
    fleet = Fleet(
        {"h1": running("h1", ready(f"{M}-1@h1"), ready("qwen-1@h1", model="qwen"))},
        {M: Policy(M, 900.0, True)},
    )
    playbook = book(Want("h1", M, 2), policies=(Policy(M, 0.0, None),))
    assert render_diff(playbook, fleet) == [
        "h1 (running):",
        f"  {M}: want 2 (auto, auto), have 1",
        f"    {M}-1@h1 llamacpp cpu ready",
        "  qwen: not in the playbook, qwen-1@h1 ready: left alone",
        f"policy {M}: want idle_ttl 0s, have idle_ttl 900s, autoload on",
    ]


def test_a_started_hive_that_does_not_run_now_is_left_out() -> None:
    lost = HiveNow("h2", True, "lost", workers=())
    fleet = Fleet({"h1": running("h1"), "h2": lost})
    playbook = book(Want("h1", M), Want("h2", M), prune=True)
    # h2's workers cannot be read: no spawn there (the queen brings back what it wants).
    assert lines(playbook, fleet) == [f"+ spawn {M} on h1 (auto, auto)"]
    assert unsettled(playbook, fleet) == [lost]
    assert unsettled(book(Want("h1", M)), fleet) == []
