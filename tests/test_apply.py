"""`rbee apply` against a real queen on this machine, with the real default model."""

from __future__ import annotations

import textwrap
from pathlib import Path

import httpx
import pytest

from rbee.config.settings import Paths
from rbee.queen.policy_store import load_policies, policies_path
from tests import http
from tests.conftest import MODEL, make_paths, rbee, running_queen


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def workers(url: str) -> list[dict[str, object]]:
    data: list[dict[str, object]] = http.get(f"{url}/v1/workers").json()["data"]
    return data


def test_apply_plans_converges_says_no_changes_and_stops_at_a_failure(
    tmp_path: Path, model_cache: Path
) -> None:
    paths: Paths = make_paths(tmp_path, model_cache)
    # No hives.conf: one machine needs none for a playbook that names localhost alone.
    play = tmp_path / "play.yaml"

    def playbook(replicas: int, *, prune: bool = False, extra: str = "") -> None:
        entry = f"  - model: {MODEL}\n    hives: localhost\n    replicas: {replicas}\n"
        write(play, f"models:\n{entry}    idle_ttl: 0\n{extra}prune: {str(prune).lower()}\n")

    with running_queen(paths, models=()) as queen:

        def apply(*args: str) -> tuple[int, str, str]:
            done = rbee(paths, "--queen", queen.url, "apply", str(play), *args, timeout=300)
            assert "Traceback" not in done.stderr
            return done.returncode, done.stdout, done.stderr

        playbook(1)
        status, out, _ = apply("--check", "--diff")
        assert status == 2, out
        assert "localhost (running):" in out
        assert f"  {MODEL}: want 1 (auto, auto), have 0" in out
        assert f"  ~ set {MODEL}'s policy on the queen to idle_ttl 0s: now idle_ttl is 900s" in out
        assert f"  + spawn {MODEL} on localhost (auto, auto)" in out
        assert "plan: 1 to add, 1 to change, 0 to remove" in out
        assert workers(queen.url) == []  # --check changes nothing

        status, out, err = apply()
        assert status == 0, out + err
        assert f"[2/2] + spawn {MODEL} on localhost (auto, auto)" in out
        assert "applied: 1 to add, 1 to change, 0 to remove" in out
        (worker,) = workers(queen.url)
        assert worker["state"] == "ready"
        policy = http.get(f"{queen.url}/v1/policies/{MODEL}").json()
        assert policy["idle_ttl"] == 0
        assert policy["own"] is True

        status, out, _ = apply()
        assert (status, out) == (0, f"no changes: 1 hive(s) and 1 worker(s) match {play}\n")
        assert apply("--check")[0] == 0

        # A worker nobody asked for by playbook: left alone, until the playbook prunes.
        spawned = rbee(paths, "--queen", queen.url, "worker", "spawn", "--model", MODEL,
                       "--embeddings", timeout=300)  # fmt: skip
        assert spawned.returncode == 0, spawned.stderr
        assert apply("--check")[0] == 0
        playbook(2, prune=True)
        status, out, err = apply()
        assert status == 0, out + err
        assert f"+ spawn {MODEL} on localhost (auto, auto): 2 of 2" in out
        assert "prune: the playbook places no such worker here" in out
        now = workers(queen.url)
        assert [w["embeddings"] for w in now] == [False, False]
        assert all(w["state"] == "ready" for w in now)

        # Settings the playbook states: workers started with others are replaced, then match.
        playbook(2, extra="    ctx_size: 2048\n    max_queued: 3\n    cpu_repack: off\n")
        status, out, err = apply()
        assert status == 0, out + err
        spawn = f"+ spawn {MODEL} on localhost (auto, auto, ctx_size 2048, max_queued 3, "
        for n in (1, 2):  # the replacements first, then the stops (the plan, then the run)
            assert f"[{n}/4] {spawn}cpu_repack off): {n} of 2" in out, out
            assert f"[{n + 2}/4] - stop {MODEL}-" in out, out
        assert out.count("ctx_size 4096, the playbook wants 2048") == 4, out
        now = workers(queen.url)
        assert [(w["context_length"], w["max_queued"], w["cpu_repack"]) for w in now] == [
            (2048, 3, "off"),
            (2048, 3, "off"),
        ]
        assert all(w["state"] == "ready" for w in now)
        status, out, _ = apply()
        assert (status, out) == (0, f"no changes: 1 hive(s) and 2 worker(s) match {play}\n")

        # The first step that fails ends the apply; what was done and what was not is said.
        broken = f"  - model: {MODEL}\n    hives: localhost\n    embeddings: true\n"
        playbook(1, extra=broken + "    engine: exllamav2\n")
        status, out, err = apply()
        assert status == 1
        assert out.index("failed:") < out.index("not done:")
        assert f"failed:\n  + spawn {MODEL} on localhost (exllamav2, auto, embeddings)\n" in out
        assert f"not done:\n  - stop {MODEL}-" in out
        assert err.startswith(f"rbee: error: spawn {MODEL} on localhost (exllamav2, auto, ")
        assert len(workers(queen.url)) == 2  # the stop after the failure did not run

        # An unknown model is refused at its line before anything runs.
        write(play, "models:\n  - model: no-such-model\n    hives: localhost\n")
        status, out, err = apply()
        assert status == 1
        assert out == ""
        assert err.startswith(f"rbee: error: {play}:2: unknown model 'no-such-model'")
        assert len(workers(queen.url)) == 2


BAD_POLICIES = [
    ({"idle_ttl": -1}, "idle_ttl must be a number of seconds"),
    ({"autoload": "yes"}, "autoload must be true or false"),
    ({"idle": 5}, "idle is not a policy field"),
]


def test_the_policy_endpoint_refuses_bad_fields_and_ids(tmp_path: Path) -> None:
    with running_queen(make_paths(tmp_path, None), models=()) as queen:
        for body, message in BAD_POLICIES:
            answer = httpx.put(f"{queen.url}/v1/policies/{MODEL}", json=body, timeout=http.TIMEOUT)
            assert answer.status_code == 400, body
            assert message in answer.json()["error"]["message"]
        bad = http.get(f"{queen.url}/v1/policies/Bad..Id")
        assert bad.status_code == 400
        assert "invalid model id" in bad.json()["error"]["message"]
        fine = http.get(f"{queen.url}/v1/policies/{MODEL}").json()
        assert fine == {"model": MODEL, "autoload": True, "idle_ttl": 900.0, "remote": False,
                        "own": False}  # fmt: skip


def test_a_policy_set_through_the_api_survives_a_queen_restart(tmp_path: Path) -> None:
    paths = make_paths(tmp_path, None)
    with running_queen(paths, models=()) as queen:
        answer = httpx.put(f"{queen.url}/v1/policies/{MODEL}", json={"idle_ttl": 60,
                           "autoload": False}, timeout=http.TIMEOUT)  # fmt: skip
        assert answer.status_code == 200, answer.text
    kept = policies_path(paths.data_dir)
    assert kept.stat().st_mode & 0o777 == 0o600
    with running_queen(paths, models=()) as queen:
        again = http.get(f"{queen.url}/v1/policies/{MODEL}").json()
        assert again == {"model": MODEL, "autoload": False, "idle_ttl": 60.0, "remote": False,
                         "own": True}  # fmt: skip
    # A file that is not the queen's policies is set aside, and the queen starts on rbee.toml's.
    kept.write_text('{"smollm2-135m": {"idle_ttl": -5, "autoload": true, "remote": false}}')
    with running_queen(paths, models=()) as queen:
        fresh = http.get(f"{queen.url}/v1/policies/{MODEL}").json()
        assert (fresh["idle_ttl"], fresh["own"]) == (900.0, False)
    assert not kept.exists()
    assert kept.with_suffix(".unreadable").exists()


@pytest.mark.parametrize(
    "text",
    ["[]", "{", '{"../x": {"idle_ttl": 1, "autoload": true, "remote": false}}',
     '{"m": {"idle_ttl": 1, "autoload": "yes", "remote": false}}', '{"m": {"idle_ttl": 1}}'],
)  # fmt: skip
def test_unreadable_policies_are_none(tmp_path: Path, text: str) -> None:
    path = tmp_path / "policies.json"
    path.write_text(text)
    assert load_policies(path) == {}
    assert path.with_suffix(".unreadable").read_text() == text
