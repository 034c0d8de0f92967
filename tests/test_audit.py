"""The audit log: its hash chain (pure rules and the real file), `rbee audit verify|tail`, and what
a real queen writes there for admin actions and refused callers."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest

from rbee.config.keys import KeyLimits, add_key, keys_path
from rbee.config.settings import Paths
from rbee.queen.audit import (
    GENESIS,
    AuditBrokenError,
    append_entry,
    audit_path,
    canonical,
    seal,
    verify,
)
from tests import http
from tests.conftest import make_paths, rbee, running_queen
from tests.test_cli import one_line_error


def _log(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "audit.jsonl"
    for i in range(n):
        append_entry(path, {"event": "admin", "who": f"ops-{i}", "path": "/v1/workers"})
    return path


def test_seal_chains_each_entry_to_the_one_before() -> None:
    first = seal({"event": "x"}, prev=GENESIS, seq=1, ts=0.0)
    second = seal({"event": "y"}, prev=first["hash"], seq=2, ts=1.5)
    assert first["prev"] == GENESIS
    assert second["prev"] == first["hash"]
    assert second["ts"] == "1970-01-01T00:00:01.500Z"
    # The hash covers every field: the same entry with another `who` hashes differently.
    other = seal({"event": "x", "who": "b"}, prev=GENESIS, seq=1, ts=0.0)
    assert other["hash"] != first["hash"]
    # Fields the chain owns cannot be forged through the caller's fields.
    forged = seal({"event": "x", "prev": "f" * 64, "seq": 9}, prev=GENESIS, seq=1, ts=0.0)
    assert forged == first


def test_an_intact_log_verifies_and_is_private(tmp_path: Path) -> None:
    path = _log(tmp_path, 3)
    checked = verify(path)
    assert checked.entries == 3
    lines = path.read_text().splitlines()
    assert checked.last_hash == json.loads(lines[-1])["hash"]
    assert [json.loads(line)["seq"] for line in lines] == [1, 2, 3]
    assert all(line == canonical(json.loads(line)) for line in lines)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert verify(path, expect=json.loads(lines[1])["hash"]).found_expected


@pytest.mark.parametrize(
    ("damage", "line", "words"),
    [
        # An edited field: that line's own hash no longer matches.
        (lambda ls: ls.__setitem__(1, ls[1].replace("ops-1", "ops-X")), 2, "edited"),
        # A deleted line: the next line's `prev` names an entry that is gone.
        (lambda ls: ls.pop(1), 2, "deleted"),
        # A line whose fields were re-hashed after editing still breaks the next line's prev.
        (None, 3, "prev"),
        # Reformatted JSON with the same content is an edit too.
        (
            lambda ls: ls.__setitem__(2, json.dumps(json.loads(ls[2]), indent=1).replace("\n", "")),
            3,
            "rewritten",
        ),
        # Two lines swapped.
        (lambda ls: ls.insert(0, ls.pop(1)), 1, "prev"),
    ],
)
def test_an_edited_or_deleted_line_is_found_by_its_number(
    tmp_path: Path, damage: object, line: int, words: str
) -> None:
    path = _log(tmp_path, 4)
    lines = path.read_text().splitlines()
    if damage is None:
        entry = json.loads(lines[1])
        entry["who"] = "someone-else"
        lines[1] = canonical(seal(entry, prev=entry["prev"], seq=entry["seq"], ts=0.0))
    else:
        assert callable(damage)
        damage(lines)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(AuditBrokenError) as caught:
        verify(path)
    assert caught.value.line == line
    assert words in caught.value.reason
    assert str(caught.value).startswith(f"{path}:{line}: ")


def test_lines_cut_off_the_end_are_found_with_a_recorded_hash(tmp_path: Path) -> None:
    path = _log(tmp_path, 3)
    recorded = verify(path).last_hash
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:2]))
    assert verify(path).entries == 2  # a shorter chain is still a chain...
    with pytest.raises(AuditBrokenError, match="cut off the end"):
        verify(path, expect=recorded)  # ...but not the one recorded


def test_a_torn_last_line_is_reported_and_later_entries_still_append(tmp_path: Path) -> None:
    path = _log(tmp_path, 2)
    with path.open("ab") as f:
        f.write(b'{"event":"adm')  # a crash in the middle of a write
    append_entry(path, {"event": "admin", "who": "after"})
    with pytest.raises(AuditBrokenError) as caught:
        verify(path)
    assert caught.value.line == 3
    assert json.loads(path.read_text().splitlines()[-1])["who"] == "after"


def test_writers_at_once_keep_one_chain(tmp_path: Path) -> None:
    # The queen and `rbee key` append from different processes; threads with their own file
    # descriptors take the same flock, so this is the same race.
    path = tmp_path / "audit.jsonl"

    def write(name: str) -> None:
        for i in range(25):
            append_entry(path, {"event": "admin", "who": f"{name}-{i}"})

    threads = [threading.Thread(target=write, args=(f"t{n}",)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert verify(path).entries == 100


def test_rbee_audit_verify_and_tail(tmp_path: Path) -> None:
    paths = make_paths(tmp_path, None)
    path = audit_path(paths)
    for i in range(3):
        append_entry(path, {"event": "admin", "who": f"ops-{i}"})
    ok = rbee(paths, "audit", "verify")
    assert ok.returncode == 0, ok.stderr
    assert "3 entries, chain intact" in ok.stdout
    tail = rbee(paths, "audit", "tail", "-n", "2")
    assert tail.returncode == 0, tail.stderr
    assert [json.loads(line)["who"] for line in tail.stdout.splitlines()] == ["ops-1", "ops-2"]

    lines = path.read_text().splitlines()
    del lines[0]
    path.write_text("\n".join(lines) + "\n")
    one_line_error(rbee(paths, "audit", "verify"), f"{path}:1:")

    one_line_error(rbee(paths, "audit", "verify", "--file", str(tmp_path / "none")), "no audit")
    one_line_error(rbee(paths, "audit", "tail", "--file", str(tmp_path / "none")), "no audit")


def test_rbee_key_commands_are_audited_by_name_never_by_key(tmp_path: Path) -> None:
    paths = make_paths(tmp_path, None)
    added = rbee(paths, "key", "add", "ci-bot", "--scope", "inference")
    assert added.returncode == 0, added.stderr
    key = added.stdout.strip()
    revoked = rbee(paths, "key", "revoke", "ci-bot")
    assert revoked.returncode == 0, revoked.stderr
    assert "no keys left" in revoked.stderr
    text = audit_path(paths).read_text()
    assert key not in text
    assert key.split("_")[-1] not in text
    events = [json.loads(line) for line in text.splitlines()]
    assert [e["event"] for e in events] == ["key_added", "key_revoked"]
    assert all(e["key"] == "ci-bot" and e["who"].startswith("local user") for e in events)
    assert rbee(paths, "audit", "verify").returncode == 0


def _entries(paths: Paths) -> list[dict[str, object]]:
    return [json.loads(line) for line in audit_path(paths).read_text().splitlines()]


@pytest.mark.slow
def test_a_real_queen_audits_admin_actions_and_refusals(tmp_path: Path) -> None:
    paths = make_paths(tmp_path, None)
    admin_key, _ = add_key(keys_path(paths), "ops", ["admin"], KeyLimits())
    chat_key, _ = add_key(keys_path(paths), "app", ["inference"], KeyLimits())
    with running_queen(paths, models=()) as q:
        ops = {"authorization": f"Bearer {admin_key}"}
        # An admin action: a job that fails (no such hive), recorded with its kind and target.
        submitted = http.post(
            f"{q.url}/v1/jobs",
            headers=ops,
            json={"operation": {"kind": "hive.start", "alias": "nowhere"}},
        )
        # A read is not an action: not recorded.
        assert http.get(f"{q.url}/v1/workers", headers=ops).status_code == 200
        # Refusals: no key, a wrong key (rbee's form and another), a key lacking the scope.
        assert http.get(f"{q.base_url}/models").status_code == 401
        wrong = admin_key[:-4] + "AAAA"
        assert http.get(f"{q.base_url}/models", headers={"x-api-key": wrong}).status_code == 401
        bogus = {"authorization": "Bearer not-a-key"}
        assert http.get(f"{q.base_url}/models", headers=bogus).status_code == 401
        chat = {"authorization": f"Bearer {chat_key}"}
        assert http.delete(f"{q.url}/v1/workers/w1", headers=chat).status_code == 403
        # /health needs no key and is not audited.
        assert http.get(f"{q.url}/health").status_code == 200

        entries = _entries(paths)
    text = audit_path(paths).read_text()
    for secret in (admin_key, chat_key, wrong, "not-a-key"):
        assert secret not in text
    admin, *refusals = entries
    assert admin["event"] == "admin"
    assert admin["who"] == "ops"
    assert admin["method"] == "POST"
    assert admin["path"] == "/v1/jobs"
    assert admin["kind"] == "hive.start"
    assert admin["target"] == "nowhere"
    assert admin["status"] == submitted.status_code
    assert admin["remote"] == "127.0.0.1"
    reasons = [(e["event"], e.get("reason"), e["status"]) for e in refusals]
    assert reasons == [
        ("auth_failure", "no API key", 401),
        ("auth_failure", f"wrong secret for key id {admin_key.split('_')[1]}", 401),
        ("auth_failure", "not an rbee key", 401),
        ("forbidden", "needs scope admin", 403),
    ]
    assert refusals[-1]["who"] == "app"
    assert verify(audit_path(paths)).entries == 5
    assert stat.S_IMODE(os.stat(audit_path(paths)).st_mode) == 0o600
