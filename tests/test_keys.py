"""API keys: the keys file, `rbee key add|list|revoke`, and a real queen that asks for them
(revocation without a restart, loopback and off-loopback rules, the `--api-key` flag beside)."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path

import openai
import pytest

from rbee.config.keys import (
    KEY_PREFIX,
    KeyLimits,
    add_key,
    keys_path,
    load_keys,
    parse_key_id,
    revoke_key,
)
from rbee.config.settings import Paths
from rbee.errors import ConfigError
from rbee.queen.audit import audit_path
from rbee.queen.auth import KeyRing
from tests import http
from tests.conftest import free_port, make_paths, rbee, running_queen
from tests.test_cli import one_line_error


def test_a_key_is_stored_only_as_a_salted_hash(tmp_path: Path) -> None:
    path = tmp_path / "config" / "keys.json"
    key, entry = add_key(path, "ci", ["inference", "metrics"], KeyLimits(60, 2))
    other, _ = add_key(path, "ops", ["admin"], KeyLimits())
    assert key.startswith(f"{KEY_PREFIX}{entry.id}_")
    assert parse_key_id(key.encode()) == entry.id
    text = path.read_text()
    assert key not in text
    assert key.split("_", 2)[2] not in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    (loaded, _) = load_keys(path).entries
    assert loaded == entry
    assert loaded.scopes == {"inference", "metrics"}
    assert loaded.limits == KeyLimits(requests_per_minute=60, concurrent=2)
    assert loaded.matches(key.encode())
    assert not loaded.matches(other.encode())
    assert not loaded.matches(key[:-1].encode() + b"x")
    salts = [e["salt"] for e in json.loads(text)["keys"]]
    assert len(set(salts)) == 2


@pytest.mark.parametrize(
    "text",
    ["rbee_1234abcd", "rbee_1234ABCD_" + "a" * 43, "sk-" + "a" * 40, "rbee_1234abcd_short", "é"],
)
def test_keys_in_other_forms_have_no_id(text: str) -> None:
    assert parse_key_id(text.encode()) is None


def test_mistakes_in_the_keys_file_name_the_file_and_entry(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    add_key(path, "ci", ["inference"], KeyLimits())
    good = json.loads(path.read_text())
    cases = [
        ({**good, "keys": [{**good["keys"][0], "scopes": ["root"]}]}, r"keys\[0\]: unknown scope"),
        ({**good, "keys": [{**good["keys"][0], "limits": {"concurrent": 0}}]}, "concurrent"),
        ({**good, "keys": [good["keys"][0], good["keys"][0]]}, "two keys have the id"),
        ({"keys": "x"}, "expected"),
    ]
    for body, words in cases:
        path.write_text(json.dumps(body))
        with pytest.raises(ConfigError, match=words) as caught:
            load_keys(path)
        assert str(path) in str(caught.value)
    path.write_text("{\n  nope")
    with pytest.raises(ConfigError, match=r"keys.json:2: not valid JSON"):
        load_keys(path)


def test_names_and_scopes_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    with pytest.raises(ConfigError, match="key name"):
        add_key(path, "has space", ["inference"], KeyLimits())
    with pytest.raises(ConfigError, match="unknown scope 'root'"):
        add_key(path, "ci", ["root"], KeyLimits())
    add_key(path, "ci", ["inference"], KeyLimits())
    with pytest.raises(ConfigError, match="exists already"):
        add_key(path, "ci", ["admin"], KeyLimits())
    with pytest.raises(ConfigError, match="no key named 'cd'"):
        revoke_key(path, "cd")
    assert revoke_key(path, "ci").name == "ci"
    assert load_keys(path).entries == ()


def test_rbee_key_add_list_revoke(paths: Paths) -> None:
    added = rbee(paths, "key", "add", "ci-bot", "--scope", "inference", "--scope", "metrics",
                 "--rpm", "30", "--concurrent", "2")  # fmt: skip
    assert added.returncode == 0, added.stderr
    key = added.stdout.strip()
    assert parse_key_id(key.encode()) is not None
    assert key not in added.stderr
    assert "only time" in added.stderr
    listed = rbee(paths, "key", "list")
    assert listed.returncode == 0, listed.stderr
    assert "ci-bot" in listed.stdout
    assert "inference,metrics" in listed.stdout
    assert "30/min, 2 at once" in listed.stdout
    assert key.split("_", 2)[2] not in listed.stdout
    default = rbee(paths, "key", "add", "reader")
    assert default.returncode == 0, default.stderr
    reader = load_keys(keys_path(paths)).find("reader")
    assert reader is not None
    assert reader.scopes == {"inference"}

    one_line_error(rbee(paths, "key", "add", "ci-bot"), "exists already")
    one_line_error(rbee(paths, "key", "add", "bad name"), "key name")
    one_line_error(rbee(paths, "key", "revoke", "nobody"), "no key named", "ci-bot")
    bad_scope = rbee(paths, "key", "add", "x", "--scope", "root")
    assert bad_scope.returncode == 2
    assert "invalid choice" in bad_scope.stderr
    assert rbee(paths, "key", "revoke", "ci-bot").returncode == 0
    assert "ci-bot" not in rbee(paths, "key", "list").stdout
    keys_path(paths).write_text("{")
    one_line_error(rbee(paths, "key", "list"), "keys.json:1")


@pytest.mark.slow
def test_a_revoked_key_is_refused_at_once_without_a_restart(tmp_path: Path) -> None:
    paths = make_paths(tmp_path, None)
    with running_queen(paths, models=()) as q:
        # No keys yet: loopback asks for none.
        assert http.get(f"{q.base_url}/models").status_code == 200
        assert http.delete(f"{q.url}/v1/workers/nope").status_code == 404
        (action,) = (json.loads(line) for line in audit_path(paths).read_text().splitlines())
        assert (action["who"], action["path"]) == ("loopback (no key)", "/v1/workers/nope")
        added = rbee(paths, "key", "add", "app")
        assert added.returncode == 0, added.stderr
        key = added.stdout.strip()
        # Keys exist now: loopback asks for one too, read from the file the CLI just wrote.
        assert http.get(f"{q.base_url}/models").status_code == 401
        with openai.OpenAI(base_url=q.base_url, api_key=key, max_retries=0) as client:
            assert client.models.list().object == "list"
            assert client.models.list().object == "list"  # again: the remembered hash
            assert rbee(paths, "key", "revoke", "app").returncode == 0
            with pytest.raises(openai.AuthenticationError) as refused:
                client.models.list()
        assert refused.value.status_code == 401
        body = refused.value.body
        assert isinstance(body, dict)
        assert body["code"] == "invalid_api_key"
        assert key not in json.dumps(body)
        # The last key revoked does not open the queen: the keys file still exists.
        assert http.get(f"{q.base_url}/models").status_code == 401
        # A new key works at once too; a broken keys file refuses every file key.
        again = rbee(paths, "key", "add", "app2").stdout.strip()
        headers = {"x-api-key": again}
        assert http.get(f"{q.base_url}/models", headers=headers).status_code == 200
        keys_path(paths).write_text("{ broken")
        assert http.get(f"{q.base_url}/models", headers=headers).status_code == 401
        assert http.get(f"{q.base_url}/models").status_code == 401
        # /health answers without a key whatever happens.
        assert http.get(f"{q.url}/health").status_code == 200
        # Without the keys file, loopback asks for no key again.
        keys_path(paths).unlink()
        assert http.get(f"{q.base_url}/models").status_code == 200


@pytest.mark.slow
def test_the_flag_key_has_every_scope_beside_file_keys(tmp_path: Path) -> None:
    paths = make_paths(tmp_path, None)
    metrics_key, _ = add_key(keys_path(paths), "prom", ["metrics"], KeyLimits())
    with running_queen(paths, models=(), global_args=("--api-key", "s3cret")) as q:
        flag = {"authorization": "Bearer s3cret"}
        for url in (f"{q.url}/metrics", f"{q.url}/v1/workers", f"{q.base_url}/models"):
            assert http.get(url, headers=flag).status_code == 200, url
        prom = {"x-api-key": metrics_key}
        assert http.get(f"{q.url}/metrics", headers=prom).status_code == 200
        assert http.get(f"{q.url}/v1/workers", headers=prom).status_code == 403
        assert http.get(f"{q.base_url}/models", headers={"x-api-key": "s3cre"}).status_code == 401
        listed = rbee(paths, "--queen", q.url, "--api-key", "s3cret", "worker", "list")
        assert listed.returncode == 0, listed.stderr
        assert http.delete(f"{q.url}/v1/workers/nope", headers=flag).status_code == 404
    (*_, action) = (json.loads(line) for line in audit_path(paths).read_text().splitlines())
    assert (action["who"], action["method"], action["status"]) == ("api-key flag", "DELETE", 404)


@pytest.mark.slow
def test_off_loopback_a_key_in_the_file_is_enough_and_required(tmp_path: Path) -> None:
    paths = make_paths(tmp_path, None)
    one_line_error(
        rbee(paths, "queen", "run", "--host", "0.0.0.0", "--port", str(free_port())),
        "API key",
        "rbee key add",
    )
    key, _ = add_key(keys_path(paths), "remote", ["inference"], KeyLimits())
    with running_queen(paths, "--host", "0.0.0.0", models=()) as q:
        assert http.get(f"{q.base_url}/models").status_code == 401
        ok = http.get(f"{q.base_url}/models", headers={"authorization": f"Bearer {key}"})
        assert ok.status_code == 200
    keys_path(paths).write_text('{"keys": [{"id": "zz"}]}')
    one_line_error(rbee(paths, "queen", "run", "--port", str(free_port())), "keys.json", "keys[0]")


def test_the_key_ring_follows_the_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    ring = KeyRing(path)
    assert not ring.in_use()
    key, entry = add_key(path, "ci", ["inference"], KeyLimits())

    def check(presented: str) -> tuple[object, str]:
        return asyncio.run(ring.check(presented.encode()))

    assert ring.in_use()
    assert check(key) == (entry, "")
    assert check(key) == (entry, "")  # the remembered hash
    assert check(key[:-2] + "xx") == (None, f"wrong secret for key id {entry.id}")
    assert check("sk-elsewhere") == (None, "not an rbee key")
    revoke_key(path, "ci")
    assert check(key) == (None, f"no key with id {entry.id} (revoked, or never added)")
    assert ring.in_use()  # no keys left, but the file is there: keys are still asked for
    path.write_text("{")
    assert check(key) == (None, "the keys file cannot be used")
    path.unlink()
    assert not ring.in_use()
