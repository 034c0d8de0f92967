"""A local stand-in for the Hugging Face hub: a real uvicorn serving what rbee's hub client uses.

    GET /api/models/{repo}/revision/{rev}?blobs=true   listing: sha, siblings with size, blobId,
                                                       lfs.sha256 (files of lfs_min bytes or more)
    GET /{repo}/resolve/{rev}/{file}                   the bytes (small files), or a 302 to
    GET /cdn/{repo}/{file}                             the bytes of an LFS file, as the hub's CDN

Both byte routes honour `Range: bytes=N-` (206 with Content-Range). Errors carry the hub's
X-Error-Code header (RepoNotFound, RevisionNotFound, EntryNotFound). A private repo needs
`Authorization: Bearer <token>`. `cut_after[file] = N` makes the next transfer of that file stop
after N bytes of body, once, as a dropped connection would.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from rbee.net import bind_tcp
from rbee.serve import uvicorn_server

COMMIT = "0123456789abcdef0123456789abcdef01234567"
_CHUNK = 1 << 20


@dataclass
class FakeRepo:
    """One repo: its files (bytes, or a Path to serve from disk) at one commit."""

    files: dict[str, bytes | Path]
    commit: str = COMMIT
    private: bool = False
    lfs_min: int = 1024
    listed_sha256: dict[str, str] = field(default_factory=dict)
    """Override the lfs sha256 the listing gives for a file (a hub that lies, or a bad mirror)."""
    listed_blob: dict[str, str] = field(default_factory=dict)
    extra_names: list[str] = field(default_factory=list)
    """Names listed but not served (to list unsafe paths)."""


@dataclass
class Served:
    """One byte request as the hub saw it."""

    path: str
    range: str | None
    status: int
    sent: int = 0


class FakeHub:
    """The hub's state, and what it served."""

    def __init__(self, repos: dict[str, FakeRepo], token: str | None = None) -> None:
        self.repos = repos
        self.token = token
        self.cut_after: dict[str, int] = {}
        self.served: list[Served] = []
        self.listings = 0
        self.url = ""

    # -- helpers -------------------------------------------------------------------------------

    @staticmethod
    def size(data: bytes | Path) -> int:
        return data.stat().st_size if isinstance(data, Path) else len(data)

    @staticmethod
    def read(data: bytes | Path, start: int, end: int) -> Iterator[bytes]:
        if isinstance(data, bytes):
            for i in range(start, end, _CHUNK):
                yield data[i : min(end, i + _CHUNK)]
            return
        with data.open("rb") as f:
            f.seek(start)
            left = end - start
            while left > 0 and (chunk := f.read(min(_CHUNK, left))):
                left -= len(chunk)
                yield chunk

    @classmethod
    def hashes(cls, data: bytes | Path) -> tuple[str, str]:
        sha256 = hashlib.sha256()
        sha1 = hashlib.sha1(f"blob {cls.size(data)}\0".encode(), usedforsecurity=False)
        for chunk in cls.read(data, 0, cls.size(data)):
            sha256.update(chunk)
            sha1.update(chunk)
        return sha256.hexdigest(), sha1.hexdigest()

    def _refuse(self, request: Request, repo_id: str) -> Response | None:
        repo = self.repos.get(repo_id)
        auth = request.headers.get("authorization")
        if auth is not None and auth != f"Bearer {self.token}":
            return Response(status_code=401, headers={
                "x-error-message": "Invalid credentials in Authorization header"})  # fmt: skip
        if repo is None or (repo.private and auth is None):
            # As the hub: a repo you may not see does not exist.
            status = 401 if auth is None else 404
            return Response(status_code=status, headers={"x-error-code": "RepoNotFound"})
        return None

    # -- routes --------------------------------------------------------------------------------

    async def listing(self, request: Request) -> Response:
        repo_id, rev = request.path_params["repo"], request.path_params["rev"]
        self.listings += 1
        refused = self._refuse(request, repo_id)
        if refused is not None:
            return refused
        repo = self.repos[repo_id]
        if rev not in {"main", repo.commit}:
            return Response(status_code=404, headers={"x-error-code": "RevisionNotFound"})
        siblings = []
        for name, data in repo.files.items():
            sha256, sha1 = self.hashes(data)
            entry: dict[str, object] = {
                "rfilename": name,
                "size": self.size(data),
                "blobId": repo.listed_blob.get(name, sha1),
            }
            if self.size(data) >= repo.lfs_min:
                entry["lfs"] = {"sha256": repo.listed_sha256.get(name, sha256),
                                "size": self.size(data), "pointerSize": 134}  # fmt: skip
                entry["blobId"] = hashlib.sha1(name.encode(), usedforsecurity=False).hexdigest()
            siblings.append(entry)
        siblings += [{"rfilename": n, "size": 1, "blobId": "0" * 40} for n in repo.extra_names]
        return JSONResponse({"id": repo_id, "sha": repo.commit, "siblings": siblings})

    async def resolve(self, request: Request) -> Response:
        repo_id, rev = request.path_params["repo"], request.path_params["rev"]
        name = request.path_params["file"]
        refused = self._refuse(request, repo_id)
        if refused is not None:
            return refused
        repo = self.repos[repo_id]
        if rev not in {"main", repo.commit}:
            return Response(status_code=404, headers={"x-error-code": "RevisionNotFound"})
        if name not in repo.files:
            return Response(status_code=404, headers={"x-error-code": "EntryNotFound"})
        if self.size(repo.files[name]) >= repo.lfs_min:
            return RedirectResponse(f"{self.url}/cdn/{repo_id}/{name}", status_code=302)
        return self._bytes(request, repo.files[name], name)

    async def cdn(self, request: Request) -> Response:
        path = request.path_params["path"]
        for repo_id, repo in self.repos.items():
            prefix = f"{repo_id}/"
            if path.startswith(prefix) and path[len(prefix) :] in repo.files:
                name = path[len(prefix) :]
                return self._bytes(request, repo.files[name], name)
        return Response(status_code=404)

    def _bytes(self, request: Request, data: bytes | Path, name: str) -> Response:
        total = self.size(data)
        asked = request.headers.get("range")
        start = 0
        if asked is not None:
            start = int(asked.removeprefix("bytes=").split("-")[0])
            if start >= total:
                self.served.append(Served(name, asked, 416))
                return Response(status_code=416, headers={"content-range": f"bytes */{total}"})
        status = 206 if asked is not None else 200
        record = Served(name, asked, status)
        self.served.append(record)
        cut = self.cut_after.pop(name, None)

        async def body() -> AsyncIterator[bytes]:
            for chunk in self.read(data, start, total):
                if cut is not None and record.sent + len(chunk) > cut:
                    piece = chunk[: cut - record.sent]
                    record.sent += len(piece)
                    yield piece
                    raise ConnectionAbortedError(f"fake hub: cut {name} after {cut} bytes")
                record.sent += len(chunk)
                yield chunk
                await asyncio.sleep(0)

        headers = {"content-length": str(total - start), "accept-ranges": "bytes"}
        if status == 206:
            headers["content-range"] = f"bytes {start}-{total - 1}/{total}"
        return StreamingResponse(body(), status_code=status, headers=headers,
                                 media_type="application/octet-stream")  # fmt: skip

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/api/models/{repo:path}/revision/{rev}", self.listing),
                Route("/cdn/{path:path}", self.cdn),
                Route("/{repo:path}/resolve/{rev}/{file:path}", self.resolve),
            ]
        )


@contextmanager
def serve(hub: FakeHub) -> Iterator[FakeHub]:
    """Run `hub` on a free loopback port in a thread for the duration of the block."""
    sock = bind_tcp("127.0.0.1", 0)
    hub.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn_server(hub.app(), graceful=1)
    thread = threading.Thread(target=asyncio.run, args=(server.serve(sockets=[sock]),))
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.started, "the fake hub did not start"
        yield hub
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
    assert not thread.is_alive()
