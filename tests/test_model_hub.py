"""`rbee model download` against a local hub (tests/fakehub.py, a real uvicorn on 127.0.0.1).

The GGUF repo serves the real default model; the folder repo is a small MLX model. Covered: one
file and a folder, resume in one run and across runs, checksums refused with nothing kept, the
hub's errors, a token, an unreachable endpoint, unsafe names in a listing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from rbee.config.settings import Paths
from rbee.errors import ChecksumError, ModelError, ModelFetchError
from rbee.models.catalog import CATALOG, DEFAULT_MODEL_ID, Artifact, HubSource, ModelSpec
from rbee.models.download import download
from rbee.models.hub import parse_listing, parse_spec
from rbee.models.sources import fetch_artifact
from rbee.models.store import ModelStore
from tests.conftest import free_port, make_paths, rbee
from tests.fakehub import COMMIT, FakeHub, FakeRepo, serve
from tests.test_model_import import cached_gguf, safetensors

GGUF_REPO = "TestOrg/SmolLM2-135M-Instruct-GGUF"
GGUF_NAME = CATALOG[DEFAULT_MODEL_ID].artifacts[0].filename
MLX_REPO = "mlx-community/Tiny-Llama-4bit"
MLX_FILES: dict[str, bytes | Path] = {
    ".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
    "README.md": b"---\nlibrary_name: mlx\n---\n",
    "config.json": json.dumps({"model_type": "llama", "quantization": {"bits": 4}}).encode(),
    "model.safetensors": safetensors({"format": "mlx"}) + bytes(4096),
    "tokenizer/tokenizer.json": b'{"version": "1.0"}',
}


@pytest.fixture
def gguf_file(model_cache: Path) -> Path:
    return cached_gguf(model_cache)


@pytest.fixture
def hub(gguf_file: Path) -> Iterator[FakeHub]:
    repos = {
        GGUF_REPO: FakeRepo({GGUF_NAME: gguf_file, "README.md": b"# GGUF\n"}),
        MLX_REPO: FakeRepo(dict(MLX_FILES)),
    }
    with serve(FakeHub(repos, token="hf_secret")) as running:
        yield running


@pytest.fixture
def env_hub(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    """The hub, as $HF_ENDPOINT for the CLI subprocesses (no token)."""
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return hub


def cli(paths: Paths, *args: str) -> tuple[int, str, str]:
    result = rbee(paths, *args, timeout=300)
    assert "Traceback" not in result.stderr
    return result.returncode, result.stdout, result.stderr


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


# --- pure parts ---------------------------------------------------------------------------------


def test_repo_and_file_specs() -> None:
    assert parse_spec("org/name") == ("org/name", None)
    assert parse_spec("org/name:sub/x.gguf") == ("org/name", "sub/x.gguf")
    for bad in ["org/../x", "/abs", "a/b/c", "org/name:../x.gguf", "org/name:/etc/x", "org/"]:
        with pytest.raises(ModelError):
            parse_spec(bad)


@pytest.mark.parametrize("name", ["../../evil.txt", "/etc/passwd", "a/../../b", "a\\..\\b", "x\0y"])
def test_a_listing_with_an_unsafe_name_is_refused_whole(name: str) -> None:
    data = {"sha": COMMIT, "siblings": [{"rfilename": "config.json", "size": 2},
                                        {"rfilename": name, "size": 1}]}  # fmt: skip
    with pytest.raises(ModelError, match="refusing file name"):
        parse_listing("o/r", "main", data)


def test_a_listing_needs_sizes_and_good_checksums() -> None:
    with pytest.raises(ModelFetchError, match=r"no size for 'a'.*blobs=true"):
        parse_listing("o/r", "main", {"sha": COMMIT, "siblings": [{"rfilename": "a"}]})
    bad_lfs = {"rfilename": "a", "size": 1, "lfs": {"sha256": "xyz"}}
    with pytest.raises(ModelFetchError, match="bad lfs sha256"):
        parse_listing("o/r", "main", {"sha": COMMIT, "siblings": [bad_lfs]})
    with pytest.raises(ModelFetchError, match="not a model listing"):
        parse_listing("o/r", "main", {"error": "nope"})
    weights = {"rfilename": "w.bin", "size": 5, "blobId": "a" * 40, "lfs": {"sha256": "b" * 64}}
    listing = parse_listing("o/r", "main", {"sha": COMMIT, "siblings": [weights]})
    assert listing.commit == COMMIT
    assert listing.files[0].sha256 == "b" * 64


# --- downloads through the CLI ------------------------------------------------------------------


def test_download_one_gguf_file_with_a_token(
    tmp_path: Path, hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.repos[GGUF_REPO].private = True
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    paths = make_paths(tmp_path, None)
    code, _, err = cli(paths, "model", "download", f"{GGUF_REPO}:{GGUF_NAME}")
    assert code == 1
    assert f"repo {GGUF_REPO} not found at {hub.url} (401)" in err
    assert "set $HF_TOKEN" in err

    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    code, _, err = cli(paths, "model", "download", f"{GGUF_REPO}:{GGUF_NAME}")
    assert code == 1
    assert f"the hub at {hub.url} refused the token in $HF_TOKEN" in err

    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    code, out, err = cli(paths, "model", "download", f"{GGUF_REPO}:{GGUF_NAME}")
    assert code == 0, err
    expected = CATALOG[DEFAULT_MODEL_ID].artifacts[0]
    assert (
        f"downloaded smollm2-135m-instruct-gguf (gguf, 98 MB, sha256 {expected.sha256[:12]})" in out
    )
    store = ModelStore(paths.models_dir)
    stored = store.get("smollm2-135m-instruct-gguf")
    assert stored is not None
    gguf = stored.artifact("gguf")
    assert gguf is not None
    assert gguf.sha256 == expected.sha256
    assert gguf.path.name == GGUF_NAME
    assert gguf.source == f"hf:{GGUF_REPO}@{COMMIT}#{GGUF_NAME}"
    store.verify(gguf)
    # The LFS file came through the CDN redirect, in one request from the start.
    assert [(s.path, s.range, s.status) for s in hub.served] == [(GGUF_NAME, None, 200)]
    assert files_under(paths.models_dir / "smollm2-135m-instruct-gguf") == [
        f"gguf/{GGUF_NAME}", "manifest.json"
    ]  # fmt: skip

    # Again: refused without --force; with --force and another id it is stored once more.
    code, _, err = cli(paths, "model", "download", f"{GGUF_REPO}:{GGUF_NAME}")
    assert code == 1
    assert "already has a gguf artifact" in err
    assert len(hub.served) == 1  # refused before any transfer
    code, out, _ = cli(paths, "model", "download", f"{GGUF_REPO}:{GGUF_NAME}", "--id", "smol")
    assert code == 0
    assert "downloaded smol (gguf" in out


def test_download_a_model_folder(tmp_path: Path, env_hub: FakeHub) -> None:
    paths = make_paths(tmp_path, None)
    code, out, err = cli(paths, "model", "download", MLX_REPO)
    assert code == 0, err
    assert "downloaded tiny-llama-4bit (mlx" in out
    assert "4 files" in out
    store = ModelStore(paths.models_dir)
    stored = store.get("tiny-llama-4bit")
    assert stored is not None
    mlx = stored.artifact("mlx")
    assert mlx is not None
    assert mlx.source == f"hf:{MLX_REPO}@{COMMIT}"
    assert sorted(p for p, _, _ in mlx.files) == [
        "README.md", "config.json", "model.safetensors", "tokenizer/tokenizer.json"
    ]  # fmt: skip
    for rel, _, sha in mlx.files:
        data = MLX_FILES[rel]
        assert isinstance(data, bytes)
        assert (mlx.path / rel).read_bytes() == data
        assert sha == hashlib.sha256(data).hexdigest()
    store.verify(mlx)
    assert ".gitattributes" not in {s.path for s in env_hub.served}
    code, out, _ = cli(paths, "model", "list")
    assert code == 0
    row = next(line.split() for line in out.splitlines() if line.startswith("tiny-llama-4bit"))
    assert row[1] == "mlx"
    assert row[4] == "stored"
    assert row[5] == f"hf:{MLX_REPO}@{COMMIT}"


def test_hub_errors_are_one_clear_line(tmp_path: Path, env_hub: FakeHub) -> None:
    paths = make_paths(tmp_path, None)
    cases = [
        (["TestOrg/nope"], f"repo TestOrg/nope not found at {env_hub.url} (401)"),
        ([f"{GGUF_REPO}:missing.gguf"],
         f"has no file 'missing.gguf' (GGUF files there: {GGUF_NAME})"),
        ([GGUF_REPO], f"holds GGUF files: download one as {GGUF_REPO}:FILE"),
        ([MLX_REPO, "--revision", "v9"], f"repo {MLX_REPO} at {env_hub.url} has no revision 'v9'"),
        ([f"{GGUF_REPO}:README.md"], "only a .gguf file downloads alone"),
        (["../etc/passwd"], "invalid hub repo"),
        ([MLX_REPO, "--id", "Bad/Id"], "invalid model id 'Bad/Id'"),
    ]  # fmt: skip
    for args, message in cases:
        code, _, err = cli(paths, "model", "download", *args)
        assert code == 1, args
        assert message in err, (args, err)
    assert env_hub.served == []
    assert files_under(paths.models_dir) == []


def test_an_unreachable_hub_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    code, _, err = cli(make_paths(tmp_path, None), "model", "download", MLX_REPO)
    assert code == 1
    assert f"cannot reach the model hub at {endpoint}" in err
    assert "$HF_ENDPOINT" in err


def test_traversal_names_in_a_listing_store_nothing(tmp_path: Path, env_hub: FakeHub) -> None:
    env_hub.repos[MLX_REPO].extra_names = ["../../../evil.txt"]
    paths = make_paths(tmp_path, None)
    code, _, err = cli(paths, "model", "download", MLX_REPO)
    assert code == 1
    assert "refusing file name '../../../evil.txt'" in err
    assert env_hub.served == []
    assert not list(tmp_path.rglob("evil.txt"))
    assert files_under(paths.models_dir) == []


# --- resume and checksums -----------------------------------------------------------------------


def test_a_broken_transfer_resumes_in_the_same_run(
    tmp_path: Path, hub: FakeHub, gguf_file: Path
) -> None:
    cut = 7_000_000
    hub.cut_after[GGUF_NAME] = cut
    store = ModelStore(tmp_path / "models")
    seen: list[int] = []
    stored = download(store, GGUF_REPO, file=GGUF_NAME, endpoint=hub.url, token="hf_secret",
                      progress=lambda s, d, t: seen.append(d))  # fmt: skip
    gguf = stored.artifact("gguf")
    assert gguf is not None
    assert gguf.sha256 == CATALOG[DEFAULT_MODEL_ID].artifacts[0].sha256
    first, second = hub.served
    assert (first.range, first.status, first.sent) == (None, 200, cut)
    assert second.status == 206
    assert second.range is not None
    resumed_at = int(second.range.removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= cut
    assert second.sent == gguf_file.stat().st_size - resumed_at
    assert seen[-1] == gguf_file.stat().st_size


def test_a_broken_transfer_resumes_in_the_next_run(tmp_path: Path, hub: FakeHub) -> None:
    store = ModelStore(tmp_path / "models")
    hub.cut_after[GGUF_NAME] = 5_000_000
    with pytest.raises(
        ModelFetchError, match=r"broke off after \d+ of 98362432 bytes.*again to resume"
    ):
        download(store, GGUF_REPO, file=GGUF_NAME, model_id="smol", endpoint=hub.url,
                 token="hf_secret", attempts=1)  # fmt: skip
    assert store.get("smol") is None
    parts = list((tmp_path / "models" / "smol" / ".incoming").rglob("*.part"))
    assert len(parts) == 1
    kept = parts[0].stat().st_size
    assert 0 < kept <= 5_000_000

    stored = download(store, GGUF_REPO, file=GGUF_NAME, model_id="smol", endpoint=hub.url,
                      token="hf_secret", attempts=1)  # fmt: skip
    assert hub.served[-1].range == f"bytes={kept}-"
    assert hub.served[-1].sent == 98_362_432 - kept
    gguf = stored.artifact("gguf")
    assert gguf is not None
    store.verify(gguf)
    assert files_under(tmp_path / "models" / "smol") == [f"gguf/{GGUF_NAME}", "manifest.json"]


@pytest.mark.parametrize("lie", ["lfs sha256", "git blob sha1"])
def test_a_checksum_mismatch_is_refused_and_nothing_kept(
    tmp_path: Path, env_hub: FakeHub, lie: str
) -> None:
    repo = env_hub.repos[MLX_REPO]
    if lie == "lfs sha256":
        repo.listed_sha256["model.safetensors"] = "f" * 64
    else:
        repo.listed_blob["config.json"] = "e" * 40
    paths = make_paths(tmp_path, None)
    code, _, err = cli(paths, "model", "download", MLX_REPO)
    assert code == 1
    assert lie in err
    assert "refused, nothing was stored" in err
    assert ModelStore(paths.models_dir).get("tiny-llama-4bit") is None
    assert files_under(paths.models_dir) == []


def test_an_undetected_folder_format_is_given_without_downloading_again(
    tmp_path: Path, hub: FakeHub
) -> None:
    repo = hub.repos[MLX_REPO]
    repo.files = {"config.json": b'{"model_type": "llama"}', "model.safetensors": safetensors()}
    store = ModelStore(tmp_path / "models")
    with pytest.raises(ModelError, match=r"cannot tell the model format.*--format"):
        download(store, MLX_REPO, endpoint=hub.url)
    served = len(hub.served)
    assert served == 2
    stored = download(store, MLX_REPO, endpoint=hub.url, fmt="gptq")
    assert stored.formats == ("gptq",)
    assert len(hub.served) == served  # the staged files were whole: only hashed again


def test_a_catalog_artifact_from_the_hub_must_match_the_catalog(
    tmp_path: Path, hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    known = CATALOG[DEFAULT_MODEL_ID].artifacts[0]
    source = HubSource(repo=GGUF_REPO, file=GGUF_NAME)
    right = Artifact("gguf", GGUF_NAME, known.size, known.sha256, source)
    store = ModelStore(tmp_path / "models")
    stored = fetch_artifact(store, ModelSpec("hub-smol", "test", "x", (right,)), "gguf")
    assert stored.formats == ("gguf",)
    wrong = Artifact("gguf", GGUF_NAME, known.size, "0" * 64, source)
    with pytest.raises(ChecksumError, match="does not match the expected"):
        fetch_artifact(store, ModelSpec("hub-wrong", "test", "x", (wrong,)), "gguf")
    assert store.get("hub-wrong") is None
    assert not (tmp_path / "models" / "hub-wrong").exists()
