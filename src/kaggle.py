"""Kaggle integration: download a competition's files, submit a CSV, list submissions and scores.

    python -m src.kaggle download dataset=dogs_vs_cats      # -> data/raw/dogs_vs_cats/ in the layout prepare reads
    python -m src.kaggle submit dataset=dogs_vs_cats submit.dry_run=true
    python -m src.kaggle submit dataset=cifar10 submit.file=submissions/cifar10-resnet_cifar.csv
    python -m src.kaggle status dataset=cifar10

The first argument is the action; everything after it is a Hydra override, as for every other stage.

Credentials are read where the Kaggle CLI reads them: KAGGLE_USERNAME + KAGGLE_KEY (environment), else
kaggle.json in $KAGGLE_CONFIG_DIR or ~/.kaggle (~/.config/kaggle when ~/.kaggle does not exist); the file
must be private (chmod 600). KAGGLE_API_TOKEN (a new-style access token) is honoured too. Credentials are
passed to the API client only: they are never printed, logged, put in MLflow, or quoted in an error.

Download: Kaggle serves one competition zip (<slug>.zip holding train.zip, test.zip, the sample submission...).
It streams into <slug>.zip.part beside a small marker (total size + the server's ETag); an interrupted
transfer resumes from where it stopped (HTTP Range) when the remote file is unchanged, and starts over
otherwise. Only a complete file (size checked) is renamed to <slug>.zip. Unpacking skips every file already
present with the right size, then unpacks train.zip/test.7z... into train/ and test/ (src.prepare._extract).

The network side sits behind a small interface (`Backend`: open_download, submit, submissions); the real
one wraps the official `kaggle` package. Tests swap in a stand-in with KAGGLEPIPE_KAGGLE_API=tests.<module>:<factory>
(only modules under tests/ are accepted).
"""
from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import shutil
import sys
import time
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol

from omegaconf import DictConfig, OmegaConf

from .common import UserError, atomic_path, project_path, read_json, write_json

ACTIONS = ("download", "submit", "status")
API_ENV = "KAGGLEPIPE_KAGGLE_API"
STATE_FILE = ".kagglepipe-download.json"
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
def _api_error(e: BaseException, competition: str, cfg: DictConfig, doing: str, creds: Credentials | None) -> UserError:
    """One line that says what went wrong and what to do, with no secret in it."""
    src = creds.source if creds else "your credentials"
    conf = f"conf/dataset/{cfg.dataset.name}.yaml"
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


def competition_of(cfg: DictConfig) -> str:
    slug = (cfg.dataset.get("kaggle") or {}).get("competition")
    if not slug:
        raise UserError(f"dataset {cfg.dataset.name!r} has no Kaggle competition (dataset.kaggle.competition is "
                        "empty); use dataset=dogs_vs_cats or dataset=cifar10, or set dataset.kaggle.competition=<slug>")
    return str(slug)


# ------------------------------------------------------------------ download
def _state(raw: Path) -> dict[str, Any]:
    try:
        s = read_json(raw / STATE_FILE)
        return s if isinstance(s, dict) else {}
    except (OSError, ValueError):
        return {}


def _mb(n: int | None) -> str:
    return "unknown size" if n is None else f"{n / 1e6:.1f} MB"


def fetch(backend: Backend, competition: str, raw: Path, retries: int = 3, force: bool = False,
          on_error: Callable[[BaseException, str], UserError] | None = None) -> Path:
    """Make raw/<competition>.zip complete: skip it when complete, resume a partial transfer, redo a stale one."""
    target = raw / f"{competition}.zip"
    part = raw / f"{competition}.zip.part"
    marker = raw / f"{competition}.zip.part.json"
    state = _state(raw)
    recorded = state.get("zip") or {}
    if force:
        for p in (target, part, marker):
            p.unlink(missing_ok=True)
    elif target.is_file() and recorded.get("size") == target.stat().st_size:
        print(f"kaggle: {target.name} already downloaded ({_mb(recorded['size'])}, size checked); skipping")
        return target
    raw.mkdir(parents=True, exist_ok=True)
    attempt = 0
    while True:
        saved = {}
        if part.is_file() and marker.is_file():
            try:
                saved = read_json(marker)
            except (OSError, ValueError):
                saved = {}
        offset = part.stat().st_size if saved else 0
        try:
            dl = backend.open_download(competition, offset, saved.get("validator") if saved else None)
        except KaggleHTTPError as e:
            raise (on_error(e, "downloading") if on_error else e) from None
        except OSError as e:
            attempt += 1
            if attempt > retries:
                raise (on_error(e, "downloading") if on_error else e) from None
            time.sleep(min(2 ** attempt, 30))
            continue
        try:
            if target.is_file() and dl.size is not None and target.stat().st_size == dl.size:
                print(f"kaggle: {target.name} already present with the expected size ({_mb(dl.size)}); skipping")
                _record_zip(raw, target, dl.validator)
                return target
            if dl.start == 0:
                if offset:
                    print(f"kaggle: the partial {part.name} does not match the remote file; downloading it again")
                write_json(marker, {"validator": dl.validator, "size": dl.size})
                mode, have = "wb", 0
            elif dl.start == offset:
                print(f"kaggle: resuming {target.name} at {_mb(offset)} of {_mb(dl.size)}")
                mode, have = "ab", offset
            else:
                raise UserError(f"{part}: the server resumed at byte {dl.start}, not {offset}; delete it and run again")
            if dl.start == 0:
                print(f"kaggle: downloading {target.name} ({_mb(dl.size)}) into {raw}")
            next_report = have + max((dl.size or 0) // 10, 50 * CHUNK)
            with open(part, mode) as f:
                for chunk in dl.chunks:
                    if not chunk:
                        continue
                    f.write(chunk)
                    have += len(chunk)
                    if have >= next_report and dl.size:
                        print(f"kaggle: {have / dl.size:.0%} of {_mb(dl.size)}", flush=True)
                        next_report = have + max(dl.size // 10, 50 * CHUNK)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            if e.errno == 28:
                raise UserError(f"{part}: no space left on device; free some disk space and run again (the download "
                                "resumes where it stopped)") from None
            attempt += 1
            if attempt > retries:
                have = part.stat().st_size if part.is_file() else 0
                raise UserError(f"download of {target.name} interrupted at {_mb(have)} of {_mb(dl.size)} "
                                f"({redact(type(e).__name__)}); run the same command again to resume") from None
            print(f"kaggle: transfer interrupted ({type(e).__name__}); retrying ({attempt}/{retries})")
            time.sleep(min(2 ** attempt, 30))
            continue
        finally:
            dl.close()
        got = part.stat().st_size
        if dl.size is not None and got != dl.size:
            if got > dl.size:  # cannot be a prefix of the remote file: start over
                part.unlink(missing_ok=True)
                marker.unlink(missing_ok=True)
            attempt += 1
            if attempt > retries:
                raise UserError(f"download of {target.name} ended at {_mb(got)} of {_mb(dl.size)}; "
                                "run the same command again to resume")
            continue
        os.replace(part, target)
        marker.unlink(missing_ok=True)
        _record_zip(raw, target, dl.validator)
        print(f"kaggle: downloaded {target.name} ({_mb(got)})")
        return target


def _record_zip(raw: Path, target: Path, validator: str | None) -> None:
    state = _state(raw)
    state["zip"] = {"name": target.name, "size": target.stat().st_size, "validator": validator}
    write_json(raw / STATE_FILE, state)


def _safe_member(name: str) -> PurePosixPath | None:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or not p.parts or p.parts[0] == "__MACOSX" or p.name.startswith("._"):
        return None
    return p


def unpack(zip_path: Path, raw: Path, archives: Iterable[str]) -> None:
    """Unpack the competition zip into raw (skipping files already there with the right size), then the inner
    train/test archives into train/ and test/."""
    from .prepare import _extract

    try:
        z = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as e:
        zip_path.unlink(missing_ok=True)
        raise UserError(f"{zip_path} is not a readable zip ({type(e).__name__}); it was deleted: run the same "
                        "command again to download it afresh") from None
    written = skipped = 0
    with z:
        for info in z.infolist():
            if info.is_dir():
                continue
            rel = _safe_member(info.filename)
            if rel is None:
                print(f"kaggle: ignoring archive member {info.filename!r} (unsafe or metadata path)")
                continue
            dest = raw.joinpath(*rel.parts)
            if dest.is_file() and dest.stat().st_size == info.file_size:
                skipped += 1
                continue
            try:
                with atomic_path(dest) as tmp, z.open(info) as src, open(tmp, "wb") as out:
                    shutil.copyfileobj(src, out, CHUNK)
            except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile) as e:
                raise UserError(f"{zip_path}: member {info.filename} is corrupt ({type(e).__name__}); delete "
                                f"{zip_path} and run the same command again") from None
            written += 1
    print(f"kaggle: unpacked {zip_path.name}: {written} file(s) written, {skipped} already present")
    state = _state(raw)
    unpacked = state.get("unpacked") or {}
    for name in archives:
        archive = raw / name
        if not archive.is_file():
            continue
        folder = raw / archive.stem
        size = archive.stat().st_size
        if folder.is_dir():
            if unpacked.get(name) in (None, size):
                print(f"kaggle: {folder.name}/ already unpacked; skipping {name}")
                unpacked[name] = size
                continue
            print(f"kaggle: {name} changed since {folder.name}/ was unpacked; unpacking it again")
            shutil.rmtree(folder)
        print(f"kaggle: unpacking {name} into {folder}")
        _extract(archive, raw)
        unpacked[name] = size
        state["unpacked"] = unpacked
        write_json(raw / STATE_FILE, state)
    state["unpacked"] = unpacked
    write_json(raw / STATE_FILE, state)


def check_layout(cfg: DictConfig, raw: Path, competition: str) -> dict[str, int]:
    """The files prepare needs must be there now; count the images."""
    needed = [raw / "train", raw / "test", raw / str(cfg.dataset.sample_submission)]
    if cfg.dataset.layout == "labels_csv":
        needed.append(raw / str(cfg.dataset.labels_csv))
    for p in needed:
        if not p.exists():
            raise UserError(f"{p} is missing after downloading {competition!r}; check dataset.kaggle.competition and "
                            f"dataset.kaggle.archives in conf/dataset/{cfg.dataset.name}.yaml")
    return {d: sum(1 for e in os.scandir(raw / d) if e.is_file()) for d in ("train", "test")}


def download(cfg: DictConfig, backend: Backend | None = None) -> Path:
    competition = competition_of(cfg)
    raw = project_path(cfg.dataset.raw_dir)
    creds = None
    if backend is None:
        creds = load_credentials()
        backend = make_backend(creds)
    raw.mkdir(parents=True, exist_ok=True)
    k = cfg.kaggle
    zip_path = fetch(backend, competition, raw, retries=int(k.retries), force=bool(k.force),
                     on_error=lambda e, doing: _api_error(e, competition, cfg, doing, creds))
    unpack(zip_path, raw, list(cfg.dataset.kaggle.get("archives") or []))
    counts = check_layout(cfg, raw, competition)
    print(f"kaggle: {raw} is ready: train/ {counts['train']} files, test/ {counts['test']} files, "
          f"{cfg.dataset.sample_submission}; next: python -m src.prepare dataset={cfg.dataset.name}")
    return raw


# ------------------------------------------------------------------ submit
def choose_csv(cfg: DictConfig) -> Path:
    chosen = cfg.submit.get("file")
    if chosen:
        path = project_path(str(chosen))
        if not path.is_file():
            raise UserError(f"submit.file={chosen}: {path} not found; name an existing CSV (e.g. one in "
                            f"{project_path(cfg.paths.submissions)})")
        return path
    folder = project_path(cfg.paths.submissions)
    found = sorted(folder.glob(f"{cfg.dataset.name}-*.csv"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    if not found:
        raise UserError(f"no {folder}/{cfg.dataset.name}-*.csv to submit; run python -m src.predict "
                        f"dataset={cfg.dataset.name} first, or choose one with submit.file=path/to.csv")
    return found[-1]


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def submission_message(csv: Path, meta: dict[str, Any]) -> str:
    if not meta.get("run_id"):
        return f"kagglepipe {csv.name} (no MLflow run recorded)"
    parts = [f"kagglepipe {meta.get('name') or csv.stem}", f"mlflow run {meta['run_id']}"]
    metrics = [f"{k}={_fmt(meta[k])}" for k in ("val_log_loss", "val_accuracy") if meta.get(k) is not None]
    if metrics:
        parts.append(" ".join(metrics))
    return "; ".join(parts)


def check_csv(cfg: DictConfig, csv: Path) -> int:
    """Validate against the sample submission; refuse (UserError) anything Kaggle would reject."""
    import pandas as pd

    from . import submission

    sample = project_path(cfg.dataset.raw_dir) / str(cfg.dataset.sample_submission)
    if not sample.is_file():
        raise UserError(f"{sample} not found, so {csv.name} cannot be checked before sending; run python -m "
                        f"src.kaggle download dataset={cfg.dataset.name} (or put Kaggle's sample submission there)")
    try:
        df = pd.read_csv(csv)
    except Exception as e:
        raise UserError(f"{csv}: cannot read it as CSV ({type(e).__name__}); not sent to Kaggle") from None
    try:
        submission.validate(df, str(cfg.dataset.submission), list(cfg.dataset.classes), sample=sample)
    except UserError as e:
        raise UserError(f"{csv}: refused, not sent to Kaggle: {e}") from None
    return len(df)


def submit(cfg: DictConfig, backend: Backend | None = None) -> dict[str, Any]:
    competition = competition_of(cfg)
    csv = choose_csv(cfg)
    meta_path = csv.with_suffix(".json")
    meta = read_json(meta_path) if meta_path.is_file() else {}
    rows = check_csv(cfg, csv)
    message = str(cfg.submit.get("message") or submission_message(csv, meta))
    record = {"competition": competition, "file": str(csv), "rows": rows, "message": message,
              "run_id": meta.get("run_id"), "model": meta.get("model")}
    if bool(cfg.submit.dry_run):
        print(f"kaggle: dry run: would submit {csv} ({rows} rows, checked against {cfg.dataset.sample_submission}) "
              f"to competition {competition!r} with the message: {message}")
        if backend is None:
            try:
                print(f"kaggle: dry run: credentials found in {load_credentials().source}")
            except UserError as e:
                print(f"kaggle: dry run: warning: {e}")
        print("kaggle: dry run: nothing was sent")
        return {**record, "sent": False}
    creds = None
    if backend is None:
        creds = load_credentials()
        backend = make_backend(creds)
    print(f"kaggle: submitting {csv} ({rows} rows) to {competition!r}: {message}")
    try:
        reply = backend.submit(competition, csv, message)
    except UserError:
        raise
    except Exception as e:
        raise _api_error(e, competition, cfg, f"submitting {csv.name}", creds) from None
    record.update({"sent": True, "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   "ref": (reply or {}).get("ref"), "reply": redact((reply or {}).get("message", ""))})
    print(f"kaggle: submitted ({record['reply'] or 'ok'}); see the score with: python -m src.kaggle status "
          f"dataset={cfg.dataset.name}")
    _record_on_run(cfg, record, meta)
    return record


def _record_on_run(cfg: DictConfig, record: dict[str, Any], meta: dict[str, Any]) -> None:
    from . import tracking

    if not record.get("run_id"):
        print(f"kaggle: note: no run recorded beside {Path(record['file']).name} (the .json predict writes); "
              "the submission is not linked to an MLflow run")
        return
    if not tracking.enabled(cfg):
        return
    try:
        with tracking.run(cfg, str(meta.get("name") or cfg.name), run_id=record["run_id"]) as mlflow:
            stamp = record["time"].replace(":", "").replace("-", "")
            mlflow.set_tags({"kaggle.competition": record["competition"], "kaggle.submission.file": record["file"],
                             "kaggle.submission.message": record["message"][:5000],
                             "kaggle.submission.time": record["time"], "kaggle.submission.ref": str(record.get("ref"))})
            mlflow.log_dict(record, f"kaggle/submission-{stamp}.json")
        print(f"kaggle: recorded on MLflow run {record['run_id']}")
    except Exception as e:  # the submission went through; a tracking problem must not hide that
        print(f"kaggle: warning: submitted, but could not record it on MLflow run {record['run_id']} "
              f"({redact(type(e).__name__)}: {redact(e).splitlines()[0][:200] if str(e) else ''})")


# ------------------------------------------------------------------ status
def status(cfg: DictConfig, backend: Backend | None = None) -> list[dict[str, Any]]:
    competition = competition_of(cfg)
    creds = None
    if backend is None:
        creds = load_credentials()
        backend = make_backend(creds)
    try:
        rows = backend.submissions(competition)
    except Exception as e:
        raise _api_error(e, competition, cfg, "listing submissions", creds) from None
    rows = rows[: int(cfg.kaggle.status_limit)]
    if not rows:
        print(f"kaggle: no submissions to {competition!r} yet")
        return rows
    print(f"kaggle: {len(rows)} most recent submission(s) to {competition!r}:")
    head = ("date", "status", "public", "private", "file", "description")
    table = [head] + [(str(r.get("date", ""))[:19], str(r.get("status", "")), str(r.get("public_score") or "-"),
                       str(r.get("private_score") or "-"), str(r.get("file_name", "")),
                       redact(r.get("description", ""))) for r in rows]
    widths = [max(len(t[i]) for t in table) for i in range(len(head) - 1)]
    for t in table:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(t, widths)) + "  " + t[-1])
    return rows


# ------------------------------------------------------------------ CLI
USAGE = ("usage: python -m src.kaggle download|submit|status [overrides], e.g. python -m src.kaggle download "
         "dataset=cifar10")


def _check_config(cfg: DictConfig) -> None:
    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    checks = [("kaggle.retries", lambda v: is_int(v) and v >= 0, "an integer >= 0"),
              ("kaggle.force", lambda v: isinstance(v, bool), "true or false"),
              ("kaggle.status_limit", lambda v: is_int(v) and v >= 1, "an integer >= 1"),
              ("submit.dry_run", lambda v: isinstance(v, bool), "true or false"),
              ("submit.file", lambda v: v is None or (isinstance(v, str) and v != ""), "null or a path to a CSV"),
              ("submit.message", lambda v: v is None or isinstance(v, str), "null or a text")]
    for key, ok, allowed in checks:
        value = OmegaConf.select(cfg, key, default="<missing>")
        if not ok(value):
            raise UserError(f"config error: {key}={value!r} is not allowed; expected {allowed} "
                            f"(see conf/kaggle/default.yaml, or override it: {key}=...)")


def run(action: str, cfg: DictConfig, backend: Backend | None = None) -> Any:
    if action not in ACTIONS:
        raise UserError(f"unknown action {action!r}; {USAGE}")
    _check_config(cfg)
    return {"download": download, "submit": submit, "status": status}[action](cfg, backend)


def main() -> None:
    import hydra

    from .common import CONF_DIR, cli

    args = sys.argv[1:]
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr if not args else sys.stdout)
        sys.exit(2 if not args else 0)
    action = args[0]
    if action not in ACTIONS:
        print(f"error: unknown action {action!r}; {USAGE}", file=sys.stderr)
        sys.exit(2)
    # --dry-run is the Kaggle-CLI-style spelling of submit.dry_run=true
    sys.argv = [sys.argv[0], *("submit.dry_run=true" if a == "--dry-run" else a for a in args[1:])]

    @hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
    @cli
    def _run(cfg: DictConfig) -> None:
        run(action, cfg)

    _run()


if __name__ == "__main__":
    # Run the importable src.kaggle, not this __main__ copy: one set of classes (KaggleHTTPError, Download)
    # for this module and for anything that imports it (a backend raising src.kaggle.KaggleHTTPError).
    importlib.import_module("src.kaggle").main()
