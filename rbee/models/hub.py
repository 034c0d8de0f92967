"""The Hugging Face hub's HTTP protocol, as much as rbee uses: a listing and the files' bytes.

Two endpoints, the same that huggingface-hub's `model_info(files_metadata=True)` and
`hf_hub_download` use:

    GET {endpoint}/api/models/{repo}/revision/{revision}?blobs=true
        {"sha": "<commit>", "siblings": [{"rfilename", "size", "blobId", "lfs": {"sha256"}}]}
    GET {endpoint}/{repo}/resolve/{commit}/{file}        (redirects followed; Range resumes)

Every name in a listing is validated before anything else looks at it. Refusals become errors
that name the endpoint and say what to do (a missing repo, file or revision; a token to set or
fix; an unreachable endpoint). rbee.models.download puts the bytes into the store.

Why a small httpx client rather than huggingface-hub: rbee needs the bytes in its own store
(staging, atomic listing, its own manifest), not in the hub's cache; the resume and checksum rules
are then rbee's and hold whatever version of huggingface-hub is installed (its download path
changed with the Xet storage backend); errors can name the endpoint and say what to do; and the
protocol is two GET requests, which a test serves from a local server. httpx is already a
dependency, so nothing is added.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from rbee import __version__
from rbee.errors import ModelError, ModelFetchError
from rbee.models.catalog import (
    validate_relpath,
    validate_repo,
)
from rbee.models.transfer import CHUNK
from rbee.net import is_loopback

__all__ = [
    "ALLOW_HTTP_VAR",
    "DEFAULT_ENDPOINT",
    "REVISION",
    "HubClient",
    "HubFile",
    "HubListing",
    "hub_error",
    "hub_settings",
    "parse_listing",
    "parse_spec",
]

DEFAULT_ENDPOINT = "https://huggingface.co"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SHA1 = re.compile(r"[0-9a-f]{40}")
REVISION = re.compile(r"[^\x00-\x1f\x7f]{1,256}")
"""A revision rbee accepts: a branch, tag or commit without control characters."""
_TIMEOUT = httpx.Timeout(60, connect=15)


@dataclass(frozen=True)
class HubFile:
    """One file of a hub repo as its listing gives it."""

    path: str
    size: int
    sha256: str | None
    """The LFS sha256 (weights and other large files); None for a file kept in git."""
    blob_id: str | None
    """The git blob sha1; it checks a small file that has no LFS sha256."""


@dataclass(frozen=True)
class HubListing:
    """A repo's files at one commit."""

    repo: str
    revision: str
    commit: str
    files: tuple[HubFile, ...]

    def file(self, path: str) -> HubFile | None:
        """The listed file `path`, if there is one."""
        return next((f for f in self.files if f.path == path), None)


def parse_spec(spec: str) -> tuple[str, str | None]:
    """`REPO[:FILE]` as (repo, file or None), both validated."""
    repo, sep, file = spec.partition(":")
    validate_repo(repo)
    if not sep:
        return repo, None
    return repo, validate_relpath(file, where=f"hub repo {repo}")


ALLOW_HTTP_VAR = "RBEE_HUB_ALLOW_HTTP"
"""Set to 1 to download from a plain-http $HF_ENDPOINT that is not on this machine."""


def hub_settings(env: Mapping[str, str] | None = None) -> tuple[str, str | None]:
    """The hub endpoint ($HF_ENDPOINT, default huggingface.co) and token ($HF_TOKEN, if set).

    A plain-http endpoint is refused unless it is on this machine or $RBEE_HUB_ALLOW_HTTP=1: the
    checksums rbee verifies come in the listing from that same endpoint, so whoever can alter the
    files in transit can alter their checksums to match (and read the token)."""
    env = os.environ if env is None else env
    endpoint = (env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    shown = endpoint[:80] + ("..." if len(endpoint) > 80 else "")
    if not endpoint.startswith(("http://", "https://")):
        raise ModelError(f"$HF_ENDPOINT must be an http(s) URL, got {shown!r}")
    host = urlsplit(endpoint).hostname or ""
    if endpoint.startswith("http://") and not is_loopback(host) and env.get(ALLOW_HTTP_VAR) != "1":
        raise ModelError(
            f"$HF_ENDPOINT is plain http ({shown}): the checksums come from the same endpoint "
            "as the files, so anyone on the way could change both; use https, or set "
            f"${ALLOW_HTTP_VAR}=1 for a mirror on a network you trust"
        )
    return endpoint, env.get("HF_TOKEN") or None


def parse_listing(repo: str, revision: str, data: Any) -> HubListing:
    """The hub's answer to /api/models/{repo}/revision/{rev}?blobs=true, every name validated.

    A listing with an unsafe file name (absolute, '..', backslash, NUL) is refused as a whole.
    """
    where = f"hub listing of {repo}@{revision}"
    if not isinstance(data, dict) or not isinstance(data.get("siblings"), list):
        raise ModelFetchError(f"{where}: not a model listing (no siblings); is this a hub?")
    commit = data.get("sha") or revision
    if not isinstance(commit, str) or "/" in commit or not REVISION.fullmatch(commit):
        raise ModelFetchError(f"{where}: bad commit {commit!r}")
    files = []
    for raw in data["siblings"]:
        if not isinstance(raw, dict):
            raise ModelFetchError(f"{where}: a sibling is not an object: {raw!r}")
        name = validate_relpath(raw.get("rfilename"), where=where)
        lfs = raw.get("lfs") if isinstance(raw.get("lfs"), dict) else None
        size = raw.get("size", lfs.get("size") if lfs else None)
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ModelFetchError(
                f"{where}: no size for {name!r} (the listing needs ?blobs=true file metadata)"
            )
        sha256 = lfs.get("sha256") if lfs else None
        if sha256 is not None and (not isinstance(sha256, str) or not _SHA256.fullmatch(sha256)):
            raise ModelFetchError(f"{where}: bad lfs sha256 for {name!r}: {sha256!r}")
        blob = raw.get("blobId")
        blob_id = blob if isinstance(blob, str) and _SHA1.fullmatch(blob) else None
        files.append(HubFile(name, size, sha256, blob_id))
    return HubListing(repo, revision, commit, tuple(files))


def hub_error(
    response: httpx.Response, *, endpoint: str, repo: str, revision: str, file: str | None = None
) -> ModelFetchError:
    """The error to show for a refused hub request: what was missing or refused, and what to do."""
    status = response.status_code
    code = response.headers.get("x-error-code", "")
    message = response.headers.get("x-error-message", "")
    detail = f" ({status}{': ' + message if message else ''})"
    token = "authorization" in response.request.headers
    at = f"at {endpoint}"
    if code == "GatedRepo":
        return ModelFetchError(
            f"{repo} {at} is gated{detail}: accept its terms on the hub with your account, then "
            "set $HF_TOKEN to a token of that account"
        )
    if status == 401 and token:
        return ModelFetchError(
            f"the hub {at} refused the token in $HF_TOKEN for {repo}{detail}: check that the "
            "token is valid and may read this repo"
        )
    if status == 401 or code == "RepoNotFound":
        hint = (
            "check the name"
            if token
            else "check the name; if it is private or gated, set "
            "$HF_TOKEN to a token that can read it"
        )
        return ModelFetchError(f"repo {repo} not found {at}{detail}: {hint}")
    if code == "RevisionNotFound":
        return ModelFetchError(f"repo {repo} {at} has no revision {revision!r}{detail}")
    if status == 404:
        what = f"no file {file!r}" if file else "nothing"
        return ModelFetchError(f"repo {repo}@{revision} {at} has {what}{detail}")
    if status == 403:
        return ModelFetchError(f"the hub {at} refused access to {repo}{detail}")
    if status == 429:
        return ModelFetchError(f"the hub {at} is rate-limiting requests{detail}; try again later")
    if status >= 500:
        return ModelFetchError(f"the hub {at} failed{detail}; try again later")
    return ModelFetchError(f"the hub {at} answered {repo}: unexpected HTTP status{detail}")


class HubClient:
    """An HTTP client of one hub endpoint; use as a context manager."""

    def __init__(self, endpoint: str, token: str | None = None) -> None:
        self.endpoint = endpoint.rstrip("/")
        headers = {"user-agent": f"rbee/{__version__}"}
        if token:
            headers["authorization"] = f"Bearer {token}"
        # httpx drops the authorization header when a redirect leaves the endpoint's origin (the
        # hub sends LFS downloads to a CDN with signed URLs), so the token goes nowhere else.
        self._http = httpx.Client(
            headers=headers,
            follow_redirects=True,
            timeout=_TIMEOUT,
            event_hooks={"response": [self._no_downgrade]},
        )

    def _no_downgrade(self, response: httpx.Response) -> None:
        """Refuse a redirect from an https endpoint to plain http (a CDN URL the hub hands
        out, or one an attacker does): the bytes would then come unauthenticated."""
        if self.endpoint.startswith("https://") and response.request.url.scheme != "https":
            raise ModelFetchError(
                f"the hub at {self.endpoint} redirected to plain http "
                f"({str(response.request.url.copy_with(query=None))[:80]}); refusing to download "
                "over an unauthenticated connection"
            )

    def __enter__(self) -> HubClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._http.close()

    def _unreachable(self, err: httpx.TransportError) -> ModelFetchError:
        return ModelFetchError(
            f"cannot reach the model hub at {self.endpoint}: {err or type(err).__name__}; "
            "check the network, or set $HF_ENDPOINT to a reachable hub or mirror"
        )

    def listing(self, repo: str, revision: str = "main") -> HubListing:
        """The files of `repo` at `revision`, with sizes and checksums."""
        url = f"{self.endpoint}/api/models/{repo}/revision/{quote(revision, safe='')}"
        try:
            response = self._http.get(url, params={"blobs": "true"})
        except httpx.TransportError as err:
            raise self._unreachable(err) from err
        if response.status_code != 200:
            raise hub_error(response, endpoint=self.endpoint, repo=repo, revision=revision)
        try:
            data = response.json()
        except ValueError as err:
            raise ModelFetchError(
                f"{url}: the answer is not JSON; is {self.endpoint} a Hugging Face hub?"
            ) from err
        return parse_listing(repo, revision, data)

    def fetch(
        self, listing: HubListing, file: HubFile, part: Path, on_size: Callable[[int], None]
    ) -> None:
        """Bring `part` up to `file`'s full size, resuming from the bytes it already has.

        Raises httpx.TransportError when the transfer breaks off (the part keeps what came).
        """
        have = part.stat().st_size if part.exists() else 0
        if have > file.size:
            have = 0
        if have == file.size:
            on_size(have)
            return
        url = (
            f"{self.endpoint}/{listing.repo}/resolve/{quote(listing.commit, safe='')}/"
            f"{quote(file.path)}"
        )
        headers = {"range": f"bytes={have}-"} if have else {}
        with self._http.stream("GET", url, headers=headers) as response:
            if response.status_code == 416:
                part.unlink(missing_ok=True)  # the part is not a prefix of this file: start over
                raise httpx.RemoteProtocolError("range not satisfiable", request=response.request)
            if response.status_code not in (200, 206):
                response.read()
                raise hub_error(
                    response,
                    endpoint=self.endpoint,
                    repo=listing.repo,
                    revision=listing.revision,
                    file=file.path,
                )
            resumed = response.status_code == 206 and response.headers.get(
                "content-range", ""
            ).startswith(f"bytes {have}-")
            if not resumed:
                have = 0
            on_size(have)
            flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if resumed else os.O_TRUNC)
            with os.fdopen(os.open(part, flags, 0o600), "ab" if resumed else "wb") as out:
                for chunk in response.iter_bytes(CHUNK):
                    out.write(chunk)
                    have += len(chunk)
                    on_size(have)
