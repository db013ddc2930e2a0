"""Kaggle: download a competition's files, submit a CSV, list submissions and scores.

    python -m src.kaggle download dataset=dogs_vs_cats      # -> data/raw/dogs_vs_cats/ in the layout prepare reads
    python -m src.kaggle submit dataset=dogs_vs_cats --dry-run
    python -m src.kaggle submit dataset=cifar10 submit.file=submissions/cifar10-resnet_cifar.csv
    python -m src.kaggle status dataset=cifar10

The first argument is the action; everything after it is a Hydra override, as for every other stage.
Credentials and the API client: src/kaggle_api.py.

Download: Kaggle serves one competition zip (<slug>.zip holding train.zip, test.zip, the sample submission...).
It streams into <slug>.zip.part beside a small marker (total size + the server's ETag); an interrupted
transfer resumes from where it stopped (HTTP Range) when the remote file is unchanged, and starts over
otherwise; broken transfers are retried in process (kaggle.retries, with exponential backoff). Only a complete
file (size checked) is renamed to <slug>.zip. Unpacking skips every file already present with the right size,
then unpacks train.zip/test.7z... into train/ and test/.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sys
import time
import zipfile
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Callable

from omegaconf import DictConfig

from .errors import UserError
from .files import atomic_path, file_sha256, read_json, write_json
from .kaggle_api import (API_ENV, CHUNK, Backend, Credentials, Download, KaggleHTTPError,  # noqa: F401 (re-exported)
                         OfficialBackend, api_error, config_dir, load_credentials, make_backend, redact)
from .paths import Layout, project_path

ACTIONS = ("download", "submit", "status")
USAGE = ("usage: python -m src.kaggle download|submit|status [overrides], e.g. python -m src.kaggle download "
         "dataset=cifar10")


class Session:
    """One command's connection to Kaggle: the competition, and the credentials and client, made once and only when
    first needed (a dry run needs neither). Every API failure becomes one line (kaggle_api.api_error)."""

    def __init__(self, cfg: DictConfig, backend: Backend | None = None):
        slug = (cfg.dataset.get("kaggle") or {}).get("competition")
        if not slug:
            raise UserError(f"dataset {cfg.dataset.name!r} has no Kaggle competition (dataset.kaggle.competition is "
                            "empty); use dataset=dogs_vs_cats or dataset=cifar10, or set dataset.kaggle.competition=<slug>")
        self.competition, self.dataset = str(slug), str(cfg.dataset.name)
        self._backend, self.creds = backend, None

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self.creds = load_credentials()
            self._backend = make_backend(self.creds)
        return self._backend

    def error(self, e: BaseException, doing: str) -> UserError:
        return api_error(e, self.competition, self.dataset, doing, self.creds)

    def call(self, doing: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except UserError:
            raise
        except Exception as e:
            raise self.error(e, doing) from None


def run(action: str, cfg: DictConfig, backend: Backend | None = None) -> Any:
    if action not in ACTIONS:
        raise UserError(f"unknown action {action!r}; {USAGE}")
    return {"download": download, "submit": submit, "status": status}[action](cfg, Session(cfg, backend))


# ------------------------------------------------------------------ download
def download(cfg: DictConfig, kaggle: Session) -> Path:
    lay = Layout(cfg)
    lay.raw.mkdir(parents=True, exist_ok=True)
    zip_path = fetch(kaggle, lay, retries=int(cfg.kaggle.retries), force=bool(cfg.kaggle.force))
    unpack(zip_path, lay, list(cfg.dataset.kaggle.get("archives") or []))
    counts = check_layout(cfg, lay, kaggle.competition)
    print(f"kaggle: {lay.raw} is ready: train/ {counts['train']} files, test/ {counts['test']} files, "
          f"{lay.sample_submission.name}; next: python -m src.prepare dataset={lay.dataset}")
    return lay.raw


class _BrokenTransfer(Exception):
    """A transfer that stopped short: worth another try, which resumes where it stopped."""


def fetch(kaggle: Session, lay: Layout, retries: int = 3, force: bool = False) -> Path:
    """Make raw/<competition>.zip complete: skip it when complete, resume a partial transfer, redo a stale one."""
    import tenacity

    target, part, marker = lay.download(kaggle.competition)
    recorded = _state(lay).get("zip") or {}
    if force:
        for p in (target, part, marker):
            p.unlink(missing_ok=True)
    elif target.is_file() and recorded.get("size") == target.stat().st_size:
        print(f"kaggle: {target.name} already downloaded ({_mb(recorded['size'])}, size checked); skipping")
        return target
    attempts = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(retries + 1), wait=tenacity.wait_exponential(multiplier=2, max=30),
        retry=tenacity.retry_if_exception_type(_BrokenTransfer), reraise=True, sleep=lambda s: time.sleep(s),
        before_sleep=lambda state: print(f"kaggle: {state.outcome.exception()}; retrying "
                                         f"({state.attempt_number}/{retries})"))
    try:
        for attempt in attempts:
            with attempt:
                _transfer(kaggle, lay, target, part, marker)
    except _BrokenTransfer as e:
        raise UserError(f"{e}; run the same command again to resume") from None
    return target


def _transfer(kaggle: Session, lay: Layout, target: Path, part: Path, marker: Path) -> None:
    """One try: open the download (resuming the partial file if it belongs to the remote file), write it, rename."""
    saved = _read_marker(part, marker)
    offset = part.stat().st_size if saved else 0
    try:
        dl = kaggle.backend.open_download(kaggle.competition, offset, saved.get("validator"))
    except KaggleHTTPError as e:
        raise kaggle.error(e, "downloading") from None
    except OSError as e:
        raise _BrokenTransfer(f"could not reach Kaggle ({redact(type(e).__name__)})") from e
    try:
        if target.is_file() and dl.size is not None and target.stat().st_size == dl.size:
            print(f"kaggle: {target.name} already present with the expected size ({_mb(dl.size)}); skipping")
        else:
            _write_body(dl, offset, target, part, marker, lay)
    finally:
        dl.close()
    _record(lay, "zip", {"name": target.name, "size": target.stat().st_size, "validator": dl.validator})


def _write_body(dl: Download, offset: int, target: Path, part: Path, marker: Path, lay: Layout) -> None:
    if dl.start == 0:
        if offset:
            print(f"kaggle: the partial {part.name} does not match the remote file; downloading it again")
        write_json(marker, {"validator": dl.validator, "size": dl.size})
        print(f"kaggle: downloading {target.name} ({_mb(dl.size)}) into {lay.raw}")
    elif dl.start == offset:
        print(f"kaggle: resuming {target.name} at {_mb(offset)} of {_mb(dl.size)}")
    else:
        raise UserError(f"{part}: the server resumed at byte {dl.start}, not {offset}; delete it and run again")
    try:
        with open(part, "wb" if dl.start == 0 else "ab") as f:
            _copy_chunks(dl, f, dl.start)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UserError(f"{part}: no space left on device; free some disk space and run again (the download "
                            "resumes where it stopped)") from None
        raise _BrokenTransfer(f"download of {target.name} interrupted at {_mb(part.stat().st_size)} of "
                              f"{_mb(dl.size)} ({redact(type(e).__name__)})") from e
    got = part.stat().st_size
    if dl.size is not None and got != dl.size:
        if got > dl.size:  # cannot be a prefix of the remote file: start over
            part.unlink(missing_ok=True)
            marker.unlink(missing_ok=True)
        raise _BrokenTransfer(f"download of {target.name} ended at {_mb(got)} of {_mb(dl.size)}")
    os.replace(part, target)
    marker.unlink(missing_ok=True)
    print(f"kaggle: downloaded {target.name} ({_mb(got)})")


def _copy_chunks(dl: Download, f, have: int) -> None:
    step = max((dl.size or 0) // 10, 50 * CHUNK)  # a progress line every 10% (at least every 50 MB)
    next_report = have + step
    for chunk in dl.chunks:
        f.write(chunk)
        have += len(chunk)
        if dl.size and have >= next_report:
            print(f"kaggle: {have / dl.size:.0%} of {_mb(dl.size)}", flush=True)
            next_report = have + step


def _read_marker(part: Path, marker: Path) -> dict[str, Any]:
    """The partial file's marker (remote size and validator), or {} when there is no usable partial."""
    if not (part.is_file() and marker.is_file()):
        return {}
    try:
        return read_json(marker)
    except (OSError, ValueError):
        return {}


def _state(lay: Layout) -> dict[str, Any]:
    try:
        s = read_json(lay.download_state)
        return s if isinstance(s, dict) else {}
    except (OSError, ValueError):
        return {}


def _record(lay: Layout, key: str, value: Any) -> None:
    write_json(lay.download_state, {**_state(lay), key: value})


def _mb(n: int | None) -> str:
    return "unknown size" if n is None else f"{n / 1e6:.1f} MB"


def unpack(zip_path: Path, lay: Layout, archives: list[str]) -> None:
    """Unpack the competition zip into the raw folder (skipping files already there with the right size), then
    the inner train/test archives into train/ and test/."""
    written, skipped = _unpack_members(zip_path, lay.raw)
    print(f"kaggle: unpacked {zip_path.name}: {written} file(s) written, {skipped} already present")
    unpacked = _state(lay).get("unpacked") or {}
    for archive in (lay.raw / name for name in archives):
        if not archive.is_file():
            continue
        folder, size = lay.raw / archive.stem, archive.stat().st_size
        if folder.is_dir() and unpacked.get(archive.name) in (None, size):
            print(f"kaggle: {folder.name}/ already unpacked; skipping {archive.name}")
        else:
            if folder.is_dir():
                print(f"kaggle: {archive.name} changed since {folder.name}/ was unpacked; unpacking it again")
                shutil.rmtree(folder)
            print(f"kaggle: unpacking {archive.name} into {folder}")
            from .rawdata import extract

            extract(archive, lay.raw)
        unpacked[archive.name] = size
        _record(lay, "unpacked", unpacked)


def _unpack_members(zip_path: Path, raw: Path) -> tuple[int, int]:
    try:
        z = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as e:
        zip_path.unlink(missing_ok=True)
        raise UserError(f"{zip_path} is not a readable zip ({type(e).__name__}); it was deleted: run the same "
                        "command again to download it afresh") from None
    written = skipped = 0
    with z:
        for info in z.infolist():
            rel = None if info.is_dir() else _safe_member(info.filename)
            if rel is None:
                if not info.is_dir():
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
    return written, skipped


def _safe_member(name: str) -> PurePosixPath | None:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or not p.parts or p.parts[0] == "__MACOSX" or p.name.startswith("._"):
        return None
    return p


def check_layout(cfg: DictConfig, lay: Layout, competition: str) -> dict[str, int]:
    """The files prepare needs must be there now; count the images."""
    for p in (lay.raw_train, lay.raw_test, lay.sample_submission, lay.labels_csv):
        if p is not None and not p.exists():
            raise UserError(f"{p} is missing after downloading {competition!r}; check dataset.kaggle.competition and "
                            f"dataset.kaggle.archives in conf/dataset/{lay.dataset}.yaml")
    return {d.name: sum(1 for e in os.scandir(d) if e.is_file()) for d in (lay.raw_train, lay.raw_test)}


# ------------------------------------------------------------------ submit
def submit(cfg: DictConfig, kaggle: Session) -> dict[str, Any]:
    lay = Layout(cfg)
    csv = choose_csv(cfg, lay)
    meta = read_json(csv.with_suffix(".json")) if csv.with_suffix(".json").is_file() else {}
    rows = check_csv(cfg, lay, csv)
    message = str(cfg.submit.message or submission_message(csv, meta))
    record = {"competition": kaggle.competition, "file": str(csv), "rows": rows, "message": message,
              "run_id": meta.get("run_id"), "model": meta.get("model")}
    if bool(cfg.submit.dry_run):
        _dry_run(kaggle, csv, rows, message, lay)
        return {**record, "sent": False}
    print(f"kaggle: submitting {csv} ({rows} rows) to {kaggle.competition!r}: {message}")
    reply = kaggle.call(f"submitting {csv.name}", kaggle.backend.submit, kaggle.competition, csv, message) or {}
    record.update({"sent": True, "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   "ref": reply.get("ref"), "reply": redact(reply.get("message", ""))})
    print(f"kaggle: submitted ({record['reply'] or 'ok'}); see the score with: python -m src.kaggle status "
          f"dataset={lay.dataset}")
    _record_on_run(cfg, record, csv)
    try:  # the scores Kaggle already has (this one's once scored; usually it is still pending)
        record_scores(cfg, lay, kaggle.call("listing submissions", kaggle.backend.submissions, kaggle.competition))
    except UserError as e:
        print(f"kaggle: note: the scores were not read back ({e})")
    return record


def _dry_run(kaggle: Session, csv: Path, rows: int, message: str, lay: Layout) -> None:
    print(f"kaggle: dry run: would submit {csv} ({rows} rows, checked against {lay.sample_submission.name}) "
          f"to competition {kaggle.competition!r} with the message: {message}")
    if kaggle._backend is None:  # say whether a real submit would find credentials
        try:
            print(f"kaggle: dry run: credentials found in {load_credentials().source}")
        except UserError as e:
            print(f"kaggle: dry run: warning: {e}")
    print("kaggle: dry run: nothing was sent")


def choose_csv(cfg: DictConfig, lay: Layout) -> Path:
    """submit.file, or the newest submissions/<dataset>-*.csv."""
    if cfg.submit.file:
        path = project_path(str(cfg.submit.file))
        if not path.is_file():
            raise UserError(f"submit.file={cfg.submit.file}: {path} not found; name an existing CSV (e.g. one in "
                            f"{lay.submissions})")
        return path
    found = lay.dataset_submissions()
    if not found:
        raise UserError(f"no {lay.submissions}/{lay.dataset}-*.csv to submit; run python -m src.predict "
                        f"dataset={lay.dataset} first, or choose one with submit.file=path/to.csv")
    return found[-1]


def submission_message(csv: Path, meta: dict[str, Any]) -> str:
    if not meta.get("run_id"):
        return f"kagglepipe {csv.name} (no MLflow run recorded)"
    parts = [f"kagglepipe {meta.get('name') or csv.stem}", f"mlflow run {meta['run_id']}"]
    scores = [f"{k}={meta[k]:.4f}" if isinstance(meta[k], float) else f"{k}={meta[k]}"
              for k in ("val_log_loss", "val_accuracy") if meta.get(k) is not None]
    return "; ".join(parts + ([" ".join(scores)] if scores else []))


def check_csv(cfg: DictConfig, lay: Layout, csv: Path) -> int:
    """Validate against the sample submission; refuse (UserError) anything Kaggle would reject."""
    import pandas as pd

    from . import submission

    if not lay.sample_submission.is_file():
        raise UserError(f"{lay.sample_submission} not found, so {csv.name} cannot be checked before sending; run "
                        f"python -m src.kaggle download dataset={lay.dataset} (or put Kaggle's sample submission there)")
    try:
        df = pd.read_csv(csv)
    except Exception as e:
        raise UserError(f"{csv}: cannot read it as CSV ({type(e).__name__}); not sent to Kaggle") from None
    try:
        submission.validate(df, str(cfg.dataset.submission), list(cfg.dataset.classes), sample=lay.sample_submission)
    except UserError as e:
        raise UserError(f"{csv}: refused, not sent to Kaggle: {e}") from None
    return len(df)


def _record_on_run(cfg: DictConfig, record: dict[str, Any], csv: Path) -> None:
    """The submission, as tags and a JSON artifact on the MLflow run that made the CSV (named in the .json predict
    writes beside it, else found by the CSV's sha256: a blend's run); the tag kaggle.ref.<ref>.sha256 lets status
    find that run from Kaggle's list of submissions."""
    from . import tracking

    if not record.get("run_id") and tracking.has_runs(cfg):
        with contextlib.suppress(UserError):
            record["run_id"] = tracking.run_for_file(cfg, csv).info.run_id
    if not record.get("run_id"):
        print(f"kaggle: note: no MLflow run made {csv.name} (no run in its .json, none with its sha256); the "
              "submission is not linked to an MLflow run")
        return
    stamp = record["time"].replace(":", "").replace("-", "")
    ref = {f"kaggle.ref.{record['ref']}.sha256": file_sha256(csv)} if record.get("ref") is not None else {}
    try:
        tracking.attach(cfg, record["run_id"], dicts={f"kaggle/submission-{stamp}.json": record}, tags={
            "kaggle.competition": record["competition"], "kaggle.submission.file": record["file"],
            "kaggle.submission.message": record["message"][:5000], "kaggle.submission.time": record["time"],
            "kaggle.submission.ref": str(record.get("ref")), **ref})
    except Exception as e:  # the submission went through; a tracking problem must not hide that
        print(f"kaggle: warning: submitted, but could not record it on MLflow run {record['run_id']} "
              f"({redact(type(e).__name__)}: {redact(e).splitlines()[0][:200] if str(e) else ''})")
        return
    if tracking.enabled(cfg):
        print(f"kaggle: recorded on MLflow run {record['run_id']}")


# ------------------------------------------------------------------ status
def status(cfg: DictConfig, kaggle: Session) -> list[dict[str, Any]]:
    rows = kaggle.call("listing submissions", kaggle.backend.submissions, kaggle.competition)
    rows = rows[: int(cfg.kaggle.status_limit)]
    if not rows:
        print(f"kaggle: no submissions to {kaggle.competition!r} yet")
        return rows
    print(f"kaggle: {len(rows)} most recent submission(s) to {kaggle.competition!r}:")
    head = ("date", "status", "public", "private", "file", "description")
    table = [head] + [(str(r.get("date", ""))[:19], str(r.get("status", "")), str(r.get("public_score") or "-"),
                       str(r.get("private_score") or "-"), str(r.get("file_name", "")),
                       redact(r.get("description", ""))) for r in rows]
    widths = [max(len(t[i]) for t in table) for i in range(len(head) - 1)]
    for t in table:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(t, widths)) + "  " + t[-1])
    record_scores(cfg, Layout(cfg), rows)
    return rows


# ------------------------------------------------------------------ leaderboard scores onto the runs
def record_scores(cfg: DictConfig, lay: Layout, rows: list[dict[str, Any]]) -> None:
    """Each scored submission's public and private score as the metrics kaggle.public_score and
    kaggle.private_score (and the tags kaggle.ref.<ref>.public_score, ...) on the MLflow run that made its CSV, so
    that MLflow can set validation against leaderboard scores. Recorded once per submission; a submission whose run
    cannot be told is left out with a note."""
    from . import tracking

    if not tracking.has_runs(cfg):
        return
    for row in rows:
        scores = {k: v for k in ("public_score", "private_score") if (v := _score(row.get(k))) is not None}
        if not scores:
            continue
        ref, name = row.get("ref"), str(row.get("file_name") or "")
        found = _run_of(cfg, lay, row)
        if isinstance(found, str):
            print(f"kaggle: note: the scores of {name or ref} are not on any MLflow run: {found}")
            continue
        tags = {f"kaggle.ref.{ref}.{k}": repr(v) for k, v in scores.items()}
        if all(found.data.tags.get(k) == v for k, v in tags.items()):
            continue  # recorded by an earlier status
        tracking.attach(cfg, found.info.run_id, metrics={f"kaggle.{k}": v for k, v in scores.items()}, tags=tags)
        shown = ", ".join(f"{k.split('_')[0]} {v:g}" for k, v in scores.items())
        print(f"kaggle: {name} ({shown}) recorded on MLflow run {found.info.run_id} ({found.info.run_name})")


def _score(value: Any) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _run_of(cfg: DictConfig, lay: Layout, row: dict[str, Any]) -> Any:
    """The run that made a submission's CSV: the run submit tagged with its ref, else (a file submitted some other
    way) the run behind submissions/<its file name> by content, if that file is older than the submission (a newer
    one is not what was sent). A string says why there is none."""
    from . import tracking

    if row.get("ref") is not None:
        run = tracking.run_with_tag(cfg, f"kaggle.ref.{row['ref']}.sha256")
        if run is not None:
            return run
    csv = lay.submissions / Path(str(row.get("file_name") or "")).name
    if not row.get("file_name") or not csv.is_file():
        return f"it was not sent by this project's submit and {csv} is not here"
    sent = _when(row.get("date"))
    if sent is None or csv.stat().st_mtime > sent.timestamp():
        return f"{csv} was written after the submission ({row.get('date')}), so it may not be what was sent"
    try:
        return tracking.run_for_file(cfg, csv)
    except UserError as e:
        return str(e)


def _when(date: Any) -> datetime | None:
    """Kaggle's submission time (UTC when it names no zone)."""
    try:
        t = datetime.fromisoformat(str(date).strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


# ------------------------------------------------------------------ CLI
def main() -> None:
    from .cli import main as stage_main

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
    stage_main("kaggle", lambda cfg: run(action, cfg))


if __name__ == "__main__":
    main()
