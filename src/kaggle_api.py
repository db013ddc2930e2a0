"""The Kaggle API behind the `kaggle` commands: credentials, and a small interface to the official client.

Credentials are read where the Kaggle CLI reads them: KAGGLE_USERNAME + KAGGLE_KEY (environment), else
kaggle.json in $KAGGLE_CONFIG_DIR or ~/.kaggle (~/.config/kaggle when ~/.kaggle does not exist); the file
must be private (chmod 600). KAGGLE_API_TOKEN (a new-style access token) is honoured too. Credentials are
passed to the API client only: they are never printed, logged, put in MLflow, or quoted in an error (redact).

The network side sits behind `Backend` (open_download, submit, submissions); the real one wraps the official
`kaggle` package. Tests swap in a stand-in with KAGGLEPIPE_KAGGLE_API=tests.<module>:<factory> (only modules
under tests/ are accepted).
"""
from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol

from .errors import UserError

API_ENV = "KAGGLEPIPE_KAGGLE_API"
TOKEN_URL = "https://www.kaggle.com/settings/api"
CHUNK = 1 << 20


# ------------------------------------------------------------------ credentials
_SECRETS: set[str] = set()


def redact(text: object) -> str:
    """Replace every known secret in text with ***."""
    s = str(text)
    for secret in sorted(_SECRETS, key=len, reverse=True):
        s = s.replace(secret, "***")
    return s


@dataclass(frozen=True)
class Credentials:
    username: str | None
    key: str | None = field(repr=False, default=None)
    token: str | None = field(repr=False, default=None)
    source: str = ""

    def __repr__(self) -> str:  # never shows the key or token
        return f"Credentials(username={self.username!r}, source={self.source!r})"

    __str__ = __repr__


def config_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where the Kaggle CLI looks for kaggle.json."""
    env = os.environ if env is None else env
    if env.get("KAGGLE_CONFIG_DIR"):
        return Path(os.path.expanduser(env["KAGGLE_CONFIG_DIR"]))
    home = Path(os.path.expanduser("~")) / ".kaggle"
    if not home.exists() and sys.platform.startswith("linux"):
        xdg = Path(env.get("XDG_CONFIG_HOME") or Path(os.path.expanduser("~")) / ".config") / "kaggle"
        if xdg.exists():
            return xdg
    return home


def load_credentials(env: Mapping[str, str] | None = None) -> Credentials:
    """Kaggle credentials from the environment or kaggle.json; a one-line UserError when missing or unsafe."""
    env = os.environ if env is None else env
    user, key = env.get("KAGGLE_USERNAME") or None, env.get("KAGGLE_KEY") or None
    token = env.get("KAGGLE_API_TOKEN") or None
    if token:
        _SECRETS.add(token)
    if key:
        _SECRETS.add(key)
    if user and key:
        return Credentials(user, key, token, "the environment (KAGGLE_USERNAME, KAGGLE_KEY)")
    path = config_dir(env) / "kaggle.json"
    if not path.is_file():
        if token:
            return Credentials(user, None, token, "the environment (KAGGLE_API_TOKEN)")
        half = " (KAGGLE_USERNAME is set but KAGGLE_KEY is not)" if user else (
            " (KAGGLE_KEY is set but KAGGLE_USERNAME is not)" if key else "")
        raise UserError(f"no Kaggle credentials: {path} not found{half}; create an API token at {TOKEN_URL} "
                        f"('Create New Token'), save the downloaded kaggle.json as {path} and run: chmod 600 {path} "
                        "(or set KAGGLE_USERNAME and KAGGLE_KEY)")
    mode = path.stat().st_mode & 0o777
    if os.name != "nt" and mode & 0o077:
        raise UserError(f"{path} can be read by other users (mode {mode:03o}); it holds your Kaggle key: "
                        f"run chmod 600 {path} and try again")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # the message never quotes the content
        raise UserError(f"{path} is not readable JSON ({type(e).__name__}); expected "
                        f'{{"username": "...", "key": "..."}} as downloaded from {TOKEN_URL}') from None
    if not isinstance(data, dict):
        raise UserError(f'{path} is not a JSON object; expected {{"username": "...", "key": "..."}} from {TOKEN_URL}')
    fkey = data.get("key") if isinstance(data.get("key"), str) else None
    if fkey:
        _SECRETS.add(fkey)
    user = user or (data.get("username") if isinstance(data.get("username"), str) else None)
    key = key or fkey
    for name, value in (("username", user), ("key", key)):
        if not value and not token:
            raise UserError(f'{path}: "{name}" is missing or empty; download a fresh kaggle.json from {TOKEN_URL}')
    return Credentials(user, key, token, str(path))


# ------------------------------------------------------------------ the network interface
class KaggleHTTPError(Exception):
    """The Kaggle API answered with an HTTP error status."""

    def __init__(self, status: int, reason: str = ""):
        super().__init__(f"HTTP {status}")
        self.status = int(status)
        self.reason = reason


@dataclass
class Download:
    """One HTTP answer for the competition zip: the body starts at byte `start` of a `size`-byte file."""
    size: int | None
    validator: str | None   # ETag (or Last-Modified): tells whether a partial file belongs to this remote file
    start: int
    chunks: Iterable[bytes]
    close: Callable[[], None] = lambda: None


class Backend(Protocol):
    def open_download(self, competition: str, offset: int, validator: str | None) -> Download: ...

    def submit(self, competition: str, path: Path, message: str) -> dict[str, Any]: ...

    def submissions(self, competition: str) -> list[dict[str, Any]]: ...


def _import_kaggle_api():
    """The official client class, imported without its import-time side output.

    `import kaggle` (2.2.x) builds a KaggleApi and calls authenticate() at import; without credentials
    that prints a help text and calls exit(1), which the package catches. We construct our own client
    with the credentials we loaded, so that output is noise: swallow it.
    """
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        from kaggle.api.kaggle_api_extended import KaggleApi
    return KaggleApi


@contextlib.contextmanager
def _captured() -> Iterator[io.StringIO]:
    """The kaggle package prints (progress, errors): keep it off the terminal; callers may show it redacted."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        yield buf


def _http_status(e: BaseException) -> int | None:
    resp = getattr(e, "response", None)
    return getattr(resp, "status_code", None)


class OfficialBackend:
    """The real thing: the official `kaggle` package (KaggleApi + kagglesdk) with our credentials."""

    def __init__(self, creds: Credentials, endpoint: str | None = None):
        self.creds = creds
        self.endpoint = endpoint  # tests only: point the client at a local server

    def _api(self):
        KaggleApi = _import_kaggle_api()
        api = KaggleApi()
        values = {"username": self.creds.username or "", "key": self.creds.key or ""}
        if self.creds.token:
            values["token"] = self.creds.token
        api.config_values = {k: v for k, v in values.items() if v}
        api._authenticated = True
        return api

    def _client(self, api):
        client = api.build_kaggle_client()
        if self.endpoint:
            client.http_client()._endpoint = self.endpoint.rstrip("/")
        return client

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        import requests

        try:
            yield
        except requests.HTTPError as e:
            status = _http_status(e)
            if status is None:
                raise
            raise KaggleHTTPError(status, str(e)) from None

    def open_download(self, competition: str, offset: int, validator: str | None) -> Download:
        import requests
        from kagglesdk.competitions.types.competition_api_service import ApiDownloadDataFilesRequest

        api = self._api()
        client = self._client(api)
        client.__enter__()
        try:
            with self._errors():
                request = ApiDownloadDataFilesRequest()
                request.competition_name = competition
                response = client.competitions.competition_api_client.download_data_files(request)
            size = int(response.headers["Content-Length"]) if response.headers.get("Content-Length") else None
            remote = response.headers.get("ETag") or response.headers.get("Last-Modified")
            ranges = response.headers.get("Accept-Ranges") == "bytes"
            start = 0
            if offset > 0 and ranges and remote and remote == validator:
                headers = dict(response.request.headers) if getattr(response, "request", None) is not None else {}
                headers.update({"Range": f"bytes={offset}-", "If-Range": remote})
                response.close()
                with self._errors():
                    response = requests.get(response.url, headers=headers, stream=True, timeout=300)
                    if response.status_code not in (200, 206):
                        response.raise_for_status()
                start = offset if response.status_code == 206 else 0
        except BaseException:
            client.__exit__(None, None, None)
            raise
        resp = response

        def close() -> None:
            resp.close()
            client.__exit__(None, None, None)

        return Download(size, remote, start, resp.iter_content(CHUNK), close)

    def submit(self, competition: str, path: Path, message: str) -> dict[str, Any]:
        api = self._api()
        with _captured() as out, self._errors():
            result = api.competition_submit(str(path), message, competition, quiet=True)
        if getattr(result, "message", "") == api.COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE:
            detail = (out.getvalue().strip().splitlines() or ["no detail"])[-1]
            raise RuntimeError(f"the upload failed ({detail})")
        return {"ref": getattr(result, "ref", None), "message": getattr(result, "message", "")}

    def submissions(self, competition: str) -> list[dict[str, Any]]:
        api = self._api()
        with _captured(), self._errors():
            subs = api.competition_submissions(competition) or []
        rows = []
        for s in subs:
            if s is None:
                continue
            status = getattr(s.status, "name", str(s.status or ""))
            rows.append({"ref": s.ref, "date": str(s.date or ""), "file_name": s.file_name or "",
                         "description": s.description or "", "status": status.replace("SUBMISSION_STATUS_", "").lower(),
                         "public_score": s.public_score or "", "private_score": s.private_score or ""})
        return rows


def make_backend(creds: Credentials) -> Backend:
    """The official client, or (tests only) the stand-in named by KAGGLEPIPE_KAGGLE_API=tests.<module>:<factory>."""
    spec = os.environ.get(API_ENV)
    if spec:
        module, _, attr = spec.partition(":")
        if not module.startswith("tests.") or not attr:
            raise UserError(f"{API_ENV}={spec!r} is for the test suite only (tests.<module>:<factory>); unset it")
        return getattr(importlib.import_module(module), attr)(creds)
    return OfficialBackend(creds)


# ------------------------------------------------------------------ errors
def api_error(e: BaseException, competition: str, dataset: str, doing: str, creds: Credentials | None) -> UserError:
    """One line that says what went wrong and what to do, with no secret in it."""
    src = creds.source if creds else "your credentials"
    conf = f"conf/dataset/{dataset}.yaml"
    if isinstance(e, KaggleHTTPError):
        if e.status == 401:
            return UserError(f"Kaggle rejected the credentials from {src} (HTTP 401) while {doing}; create a new API "
                             f"token at {TOKEN_URL} and save it there (chmod 600)")
        if e.status == 403:
            return UserError(f"Kaggle refused access to competition {competition!r} (HTTP 403) while {doing}; accept "
                             f"its rules at https://www.kaggle.com/competitions/{competition}/rules with the account "
                             f"of {src}, then run this again")
        if e.status == 404:
            return UserError(f"Kaggle has no competition {competition!r} (HTTP 404) while {doing}; check "
                             f"dataset.kaggle.competition in {conf}")
        if e.status == 429:
            return UserError(f"Kaggle is rate-limiting these requests (HTTP 429) while {doing}; wait a few minutes and run again")
        reason = redact(e.reason).splitlines()[0][:300] if e.reason else ""
        return UserError(f"Kaggle answered HTTP {e.status} while {doing}{': ' + reason if reason else ''}")
    text = redact(f"{type(e).__name__}: {e}").splitlines()
    return UserError(f"Kaggle API call failed while {doing} ({text[0][:300] if text else type(e).__name__}); "
                     "check the network connection and run again")
