"""The CLI as a person uses it: friendly one-line errors, non-zero exits, streamed answers."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import openai
import pytest

from rbee.config.settings import Paths
from rbee.models.store import ModelStore
from tests import http
from tests.conftest import (
    MODEL,
    RunningQueen,
    free_port,
    make_paths,
    rbee,
    running_queen,
    worker_pids,
)

pytestmark = pytest.mark.slow


def one_line_error(result: object, *words: str) -> None:
    """The command failed with exit 1 and one `rbee: error:` line containing `words`."""
    assert getattr(result, "returncode") == 1  # noqa: B009
    stderr: str = getattr(result, "stderr")  # noqa: B009
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.startswith("rbee: error:")]
    assert len(lines) == 1, stderr
    for word in words:
        assert word in lines[0], stderr


def test_commands_without_a_queen_say_it_is_not_running(paths: Paths) -> None:
    port = str(free_port())
    for args in (
        ["worker", "list"],
        ["worker", "spawn", "--model", MODEL],
        ["infer", "--prompt", "hi"],
        ["worker", "stop", "x"],
    ):
        one_line_error(rbee(paths, "--queen", f"http://127.0.0.1:{port}", *args), "not running")
    one_line_error(rbee(paths, "queen", "stop"), "not running")
    one_line_error(rbee(paths, "queen", "status"), "not running")


def test_port_in_use_is_said_before_anything_loads(paths: Paths) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        one_line_error(rbee(paths, "up", "--port", port, timeout=30), "port", port, "in use")
        one_line_error(rbee(paths, "queen", "start", "--port", port, timeout=30), "in use")


def test_listening_off_loopback_needs_an_api_key(paths: Paths) -> None:
    one_line_error(rbee(paths, "up", "--host", "0.0.0.0", "--port", str(free_port())), "API key")


def test_bad_arguments_exit_2_with_usage(paths: Paths) -> None:
    result = rbee(paths, "up", "--port", "99999")
    assert result.returncode == 2
    assert "port must be 0-65535" in result.stderr
    assert "Traceback" not in result.stderr


def test_model_list_shows_the_default_model(paths: Paths) -> None:
    result = rbee(paths, "model", "list")
    assert result.returncode == 0
    assert MODEL in result.stdout
    assert "stored" in result.stdout


def test_infer_and_errors_against_a_running_queen(queen: RunningQueen) -> None:
    paths, url = queen.paths, queen.url
    answer = rbee(
        paths,
        "--queen",
        url,
        "infer",
        "--prompt",
        "Say hello.",
        "--max-tokens",
        "12",
        "--temperature",
        "0",
        "--seed",
        "3",
    )
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.strip()
    again = rbee(
        paths,
        "--queen",
        url,
        "infer",
        "--prompt",
        "Say hello.",
        "--max-tokens",
        "12",
        "--temperature",
        "0",
        "--seed",
        "3",
    )
    assert again.stdout == answer.stdout
    one_line_error(
        rbee(paths, "--queen", url, "infer", "--model", "nope", "--prompt", "x"), "nope", MODEL
    )
    one_line_error(
        rbee(paths, "--queen", url, "worker", "spawn", "--model", "nope"), "unknown model", MODEL
    )
    one_line_error(
        rbee(paths, "--queen", url, "worker", "spawn", "--model", "../../etc"), "invalid model id"
    )
    one_line_error(
        rbee(paths, "--queen", url, "worker", "spawn", "--model", MODEL, "--device", "cuda:0"),
        "cuda:0",
    )
    one_line_error(
        rbee(paths, "--queen", url, "infer", "--prompt", "x", "--temperature", "5"), "temperature"
    )


def test_api_key_is_required_when_set(paths: Paths) -> None:
    with running_queen(paths, models=(), global_args=("--api-key", "s3cret")) as q:
        assert http.get(f"{q.url}/health").status_code == 200
        r = http.get(f"{q.base_url}/models")
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_api_key"
        wrong = http.get(f"{q.base_url}/models", headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401
        with openai.OpenAI(base_url=q.base_url, api_key="s3cret", max_retries=0) as client:
            # No worker: the stored default model is listed as one a request would load.
            (listed_model,) = client.models.list().data
            assert listed_model.id == MODEL
            assert listed_model.model_extra == {"context_length": 4096, "loaded": False}
        with (
            openai.OpenAI(base_url=q.base_url, api_key="bad", max_retries=0) as bad,
            pytest.raises(openai.AuthenticationError),
        ):
            bad.models.list()
        listed = rbee(paths, "--queen", q.url, "--api-key", "s3cret", "worker", "list")
        assert listed.returncode == 0, listed.stderr
        one_line_error(rbee(paths, "--queen", q.url, "worker", "list"), "API key")


def test_a_corrupted_model_stops_rbee_up_with_one_line(tmp_path: Path, model_cache: Path) -> None:
    paths = make_paths(tmp_path, None)
    folder = paths.models_dir / MODEL
    folder.mkdir()
    stored = ModelStore(model_cache).get(MODEL)
    assert stored is not None
    gguf = stored.artifact("gguf")
    assert gguf is not None
    (folder / gguf.path.name).symlink_to(gguf.path)
    # A manifest in the old single-file layout, with a wrong checksum.
    manifest = {"id": MODEL, "format": "gguf", "filename": gguf.path.name, "size": gguf.size,
                "sha256": "0" * 64, "source": ""}  # fmt: skip
    (folder / "manifest.json").write_text(json.dumps(manifest))
    result = rbee(paths, "up", "--port", str(free_port()))
    one_line_error(result, "exited with status 1 before it was ready", "sha256")
    assert worker_pids(paths, standby=True) == []
