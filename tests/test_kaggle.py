"""Kaggle integration (issue 9): download + unpack, resume, HTTP errors, credentials, submit, dry run, status.

The network is replaced: a FakeKaggle object stands in for the API (in process via make_backend, in a
subprocess via KAGGLEPIPE_KAGGLE_API=tests.test_kaggle:subprocess_factory), and one test drives the real
kaggle/kagglesdk client against a local HTTP server on 127.0.0.1. No TensorFlow: fast.
"""
from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))  # conftest, also when imported as tests.test_kaggle

from conftest import compose, path_overrides, run_cli  # noqa: E402

from src import kaggle as kg  # noqa: E402
from src.errors import UserError  # noqa: E402

DOGS = "dogs-vs-cats-redux-kernels-edition"
CIFAR = "cifar-10"
USER = "kguser"
KEY = "kgSECRETkey0123456789abcdef"
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# ------------------------------------------------------------------ tiny competition zips
def _image_bytes(fmt: str, seed: int) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, size=(12, 12, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, fmt)
    return buf.getvalue()


def _zip_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def dogs_competition_zip(n_test: int = 4, padding: int = 0) -> bytes:
    """Kaggle's shape: <slug>.zip holding train.zip (train/cat.N.jpg...), test.zip (test/N.jpg), sample_submission.csv.

    padding: bytes of an extra member, to make the zip span several download chunks."""
    train = {f"train/{c}.{n}.jpg": _image_bytes("JPEG", 10 * k + n) for k, c in enumerate(("cat", "dog")) for n in range(3)}
    test = {f"test/{i}.jpg": _image_bytes("JPEG", 100 + i) for i in range(1, n_test + 1)}
    sample = "id,label\n" + "".join(f"{i},0.5\n" for i in range(1, n_test + 1))
    extra = {"padding.bin": np.random.default_rng(0).bytes(padding)} if padding else {}
    return _zip_bytes({"train.zip": _zip_bytes(train), "test.zip": _zip_bytes(test),
                       "sample_submission.csv": sample.encode(), **extra})


def cifar_competition_zip(tmp: Path) -> bytes:
    """<slug>.zip holding train.7z (train/N.png), test.7z, trainLabels.csv, sampleSubmission.csv."""
    import py7zr

    for part, n in (("train", 10), ("test", 3)):
        folder = tmp / "src" / part
        folder.mkdir(parents=True)
        for i in range(1, n + 1):
            (folder / f"{i}.png").write_bytes(_image_bytes("PNG", i))
        with py7zr.SevenZipFile(tmp / f"{part}.7z", "w") as z:
            z.writeall(folder, arcname=part)
    labels = "id,label\n" + "".join(f"{i},{c}\n" for i, c in enumerate(CIFAR_CLASSES, start=1))
    sample = "id,label\n" + "".join(f"{i},cat\n" for i in range(1, 4))
    return _zip_bytes({"train.7z": (tmp / "train.7z").read_bytes(), "test.7z": (tmp / "test.7z").read_bytes(),
                       "trainLabels.csv": labels.encode(), "sampleSubmission.csv": sample.encode()})


# ------------------------------------------------------------------ the stand-in
class FakeKaggle:
    """Speaks src.kaggle.Backend; records what it was asked. error: HTTP status to answer everything with."""

    def __init__(self, blobs: dict[str, bytes] | None = None, error: int | None = None, cut_after: int | None = None,
                 creds: kg.Credentials | None = None):
        self.blobs = blobs or {}
        self.error = error
        self.cut_after = cut_after  # the first transfer breaks after this many bytes
        self.creds = creds
        self.opens: list[dict] = []
        self.sent: list[dict] = []
        self.elsewhere: list[dict] = []  # submissions made some other way (Kaggle's web page, its CLI)

    def open_download(self, competition, offset, validator):
        if self.error:
            raise kg.KaggleHTTPError(self.error, "denied")
        data = self.blobs[competition]
        etag = hashlib.sha256(data).hexdigest()[:16]
        start = offset if offset and validator == etag else 0
        self.opens.append({"offset": offset, "start": start})
        body, cut, self.cut_after = data[start:], self.cut_after, None

        def chunks():
            for i in range(0, len(body), 997):
                if cut is not None and i >= cut:
                    raise ConnectionResetError("connection reset by peer")
                yield body[i:i + 997]

        return kg.Download(len(data), etag, start, chunks())

    def submit(self, competition, path, message):
        if self.error:
            raise kg.KaggleHTTPError(self.error, "denied")
        if self.creds and "leak" in message:  # a careless library quoting the key in its error
            raise RuntimeError(f"upload failed for {self.creds.username}:{self.creds.key}")
        self.sent.append({"competition": competition, "file": str(path), "message": message})
        return {"ref": 4242, "message": "Successfully submitted"}

    def submissions(self, competition):
        if self.error:
            raise kg.KaggleHTTPError(self.error, "denied")
        return [{"ref": 4242, "date": "2025-01-02 03:04:05", "file_name": "dogs_vs_cats-seed_cnn.csv",
                 "description": m["message"], "status": "complete", "public_score": "0.12345", "private_score": ""}
                for m in reversed(self.sent)] + self.elsewhere


def subprocess_factory(creds):
    """KAGGLEPIPE_KAGGLE_API=tests.test_kaggle:subprocess_factory; KAGGLEPIPE_FAKE_ERROR=403 etc."""
    return FakeKaggle(error=int(os.environ.get("KAGGLEPIPE_FAKE_ERROR") or 0) or None, creds=creds)


# ------------------------------------------------------------------ fixtures
@pytest.fixture
def creds_dir(tmp_path: Path, monkeypatch) -> Path:
    """A private kaggle.json in a tmp KAGGLE_CONFIG_DIR; nothing from the real environment leaks in."""
    d = tmp_path / "kaggle-config"
    d.mkdir()
    f = d / "kaggle.json"
    f.write_text(json.dumps({"username": USER, "key": KEY}))
    f.chmod(0o600)
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_API_ENVIRONMENT", kg.API_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(d))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(kg.time, "sleep", lambda s: None)
    return d


def use(monkeypatch, fake: FakeKaggle) -> FakeKaggle:
    def factory(creds):
        fake.creds = creds
        return fake

    monkeypatch.setattr(kg, "make_backend", factory)
    return fake


def cfg_for(base: Path, *extra: str):
    return compose(*path_overrides(base), "prepare.workers=1", *extra)


# ------------------------------------------------------------------ download
def _scan(cfg):
    from src.paths import Layout
    from src.rawdata import ensure_raw, scan

    lay = Layout(cfg)
    ensure_raw(cfg, lay)
    return scan(cfg, lay)


def test_download_dogs_vs_cats_unpacks_what_prepare_scans(tmp_path, creds_dir, monkeypatch, capsys):
    fake = use(monkeypatch, FakeKaggle({DOGS: dogs_competition_zip()}))
    cfg = cfg_for(tmp_path, "dataset=dogs_vs_cats")
    raw = kg.run("download", cfg)
    assert raw == tmp_path / "raw" / "dogs_vs_cats"
    assert sorted(p.name for p in (raw / "train").iterdir()) == sorted(f"{c}.{n}.jpg" for c in ("cat", "dog") for n in range(3))
    assert (raw / "sample_submission.csv").is_file() and (raw / f"{DOGS}.zip").is_file()
    assert not (raw / f"{DOGS}.zip.part").exists()
    s = _scan(cfg)
    assert len(s.train) == 6 and list(s.test["id"]) == [1, 2, 3, 4] and not s.skipped

    # a second run: everything complete (size checked) -> nothing fetched, nothing rewritten
    mtime = (raw / "train" / "cat.0.jpg").stat().st_mtime_ns
    kg.run("download", cfg)
    assert len(fake.opens) == 1
    assert (raw / "train" / "cat.0.jpg").stat().st_mtime_ns == mtime
    assert "already downloaded" in capsys.readouterr().out

    # a truncated unpacked file is redone from the zip
    (raw / "sample_submission.csv").write_text("id,la")
    kg.run("download", cfg)
    assert (raw / "sample_submission.csv").read_text().startswith("id,label\n1,0.5")


def test_download_cifar10_7z_layout(tmp_path, creds_dir, monkeypatch):
    use(monkeypatch, FakeKaggle({CIFAR: cifar_competition_zip(tmp_path / "build")}))
    cfg = cfg_for(tmp_path, "dataset=cifar10")
    raw = kg.run("download", cfg)
    assert (raw / "trainLabels.csv").is_file() and (raw / "sampleSubmission.csv").is_file()
    s = _scan(cfg)
    assert len(s.train) == 10 and sorted(s.train["class"]) == sorted(CIFAR_CLASSES) and len(s.test) == 3


def test_interrupted_download_resumes_where_it_stopped(tmp_path, creds_dir, monkeypatch):
    data = dogs_competition_zip()
    fake = use(monkeypatch, FakeKaggle({DOGS: data}, cut_after=3 * 997))
    cfg = cfg_for(tmp_path, "dataset=dogs_vs_cats", "kaggle.retries=0")
    with pytest.raises(UserError, match="interrupted .* run the same command again to resume") as e:
        kg.run("download", cfg)
    assert "\n" not in str(e.value)
    raw = tmp_path / "raw" / "dogs_vs_cats"
    part = raw / f"{DOGS}.zip.part"
    assert part.stat().st_size == 3 * 997 and not (raw / f"{DOGS}.zip").exists()

    kg.run("download", cfg)  # second run: asks for the rest only
    assert fake.opens[-1] == {"offset": 3 * 997, "start": 3 * 997}
    assert (raw / f"{DOGS}.zip").read_bytes() == data and not part.exists()
    assert (raw / "test" / "4.jpg").is_file()


def test_in_process_retry_and_stale_partial_is_redone(tmp_path, creds_dir, monkeypatch):
    data = dogs_competition_zip()
    raw = tmp_path / "raw" / "dogs_vs_cats"
    raw.mkdir(parents=True)
    # a partial from another version of the remote file (its marker names another ETag): start over
    (raw / f"{DOGS}.zip.part").write_bytes(b"x" * 500)
    (raw / f"{DOGS}.zip.part.json").write_text(json.dumps({"validator": "old", "size": 123}))
    fake = use(monkeypatch, FakeKaggle({DOGS: data}, cut_after=2 * 997))
    kg.run("download", cfg_for(tmp_path, "dataset=dogs_vs_cats", "kaggle.retries=2"))
    assert fake.opens[0] == {"offset": 500, "start": 0}           # stale partial: whole file again
    assert fake.opens[1] == {"offset": 2 * 997, "start": 2 * 997}  # broken transfer: resumed in process
    assert (raw / f"{DOGS}.zip").read_bytes() == data


@pytest.mark.parametrize("status, words", [
    (401, ["HTTP 401", "credentials", "kaggle.json", "https://www.kaggle.com/settings/api"]),
    (403, ["HTTP 403", f"https://www.kaggle.com/competitions/{DOGS}/rules"]),
    (404, ["HTTP 404", DOGS, "dataset.kaggle.competition", "conf/dataset/dogs_vs_cats.yaml"]),
])
def test_http_errors_are_one_line(tmp_path, creds_dir, monkeypatch, status, words):
    use(monkeypatch, FakeKaggle(error=status))
    for action in ("download", "status"):
        with pytest.raises(UserError) as e:
            kg.run(action, cfg_for(tmp_path, "dataset=dogs_vs_cats"))
        msg = str(e.value)
        assert "\n" not in msg and all(w in msg for w in words), msg
        assert KEY not in msg


def test_demo_has_no_competition(tmp_path, creds_dir):
    with pytest.raises(UserError, match="dataset 'demo' has no Kaggle competition"):
        kg.run("download", cfg_for(tmp_path, "dataset=demo"))


# ------------------------------------------------------------------ credentials
def test_credentials_sources_and_refusals(tmp_path, creds_dir, monkeypatch):
    c = kg.load_credentials()
    assert (c.username, c.key, c.source) == (USER, KEY, str(creds_dir / "kaggle.json"))
    assert KEY not in repr(c) and KEY not in str(c)

    (creds_dir / "kaggle.json").chmod(0o644)
    with pytest.raises(UserError, match=r"mode 644.*chmod 600") as e:
        kg.load_credentials()
    assert KEY not in str(e.value)

    monkeypatch.setenv("KAGGLE_USERNAME", "envuser")
    monkeypatch.setenv("KAGGLE_KEY", "envkey123456")
    c = kg.load_credentials()  # the environment wins and needs no file
    assert (c.username, c.key) == ("envuser", "envkey123456") and "environment" in c.source
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")

    (creds_dir / "kaggle.json").write_text("{not json " + KEY)
    (creds_dir / "kaggle.json").chmod(0o600)
    with pytest.raises(UserError, match="not readable JSON") as e:
        kg.load_credentials()
    assert KEY not in str(e.value)

    (creds_dir / "kaggle.json").unlink()
    with pytest.raises(UserError, match=r"no Kaggle credentials: .*kaggle.json not found.*chmod 600"):
        kg.load_credentials()
    monkeypatch.delenv("KAGGLE_CONFIG_DIR")
    assert kg.config_dir() in (tmp_path / "home" / ".kaggle", tmp_path / "home" / ".config" / "kaggle")


def test_real_client_against_local_server(tmp_path, creds_dir, monkeypatch):
    """The official kaggle/kagglesdk client, pointed at 127.0.0.1: auth sent, redirect followed, Range resume, 403."""
    import base64

    data = dogs_competition_zip(padding=int(2.5 * kg.CHUNK))  # several chunks: a broken transfer keeps whole ones
    seen: list[dict] = []
    state = {"cut": True}

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
            seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
            slug = body.get("competitionName")
            if slug == "closed":
                out = json.dumps({"code": 403, "message": "You must accept this competition's rules"}).encode()
                self.send_response(403)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)
                return
            self.send_response(302)
            self.send_header("Location", f"/files/{slug}.zip")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self):
            rng = self.headers.get("Range")
            seen.append({"path": self.path, "range": rng})
            start = int(rng.split("=")[1].rstrip("-")) if rng else 0
            self.send_response(206 if rng else 200)
            self.send_header("Content-Type", "application/zip")
            self.send_header("ETag", '"v1"')
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            if state["cut"]:  # the first transfer dies half way
                state["cut"] = False
                self.wfile.write(data[start:int(1.5 * kg.CHUNK)])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(data[start:])

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        monkeypatch.setattr(kg, "make_backend", lambda creds: kg.OfficialBackend(creds, endpoint=endpoint))
        cfg = cfg_for(tmp_path, "dataset=dogs_vs_cats", "kaggle.retries=0")
        with pytest.raises(UserError, match="interrupted"):
            kg.run("download", cfg)
        raw = kg.run("download", cfg)
        assert (raw / f"{DOGS}.zip").read_bytes() == data and (raw / "train" / "dog.2.jpg").is_file()
        assert seen[0]["path"] == "/v1/competitions.CompetitionApiService/DownloadDataFiles"
        assert seen[0]["body"] == {"competitionName": DOGS}
        assert seen[0]["auth"] == "Basic " + base64.b64encode(f"{USER}:{KEY}".encode()).decode()
        assert [s.get("range") for s in seen if s["path"].startswith("/files/")] == [None, None, f"bytes={kg.CHUNK}-"]

        with pytest.raises(UserError, match=r"HTTP 403.*competitions/closed/rules"):
            kg.run("download", cfg_for(tmp_path, "dataset=dogs_vs_cats", "dataset.kaggle.competition=closed"))
    finally:
        server.shutdown()


# ------------------------------------------------------------------ submit / status
def _csv(folder: Path, name: str, ids, labels) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / name
    p.write_text("id,label\n" + "".join(f"{i},{v}\n" for i, v in zip(ids, labels)))
    return p


def _raw_with_sample(base: Path, n: int = 4) -> None:
    raw = base / "raw" / "dogs_vs_cats"
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "sample_submission.csv").write_text("id,label\n" + "".join(f"{i},0.5\n" for i in range(1, n + 1)))


def test_submit_valid_records_on_mlflow_and_never_leaks_credentials(tmp_path, store, creds_dir, monkeypatch, capsys,
                                                                   caplog):
    import logging

    from mlflow.tracking import MlflowClient

    from src import tracking

    caplog.set_level(logging.DEBUG)
    cfg = cfg_for(tmp_path, "dataset=dogs_vs_cats")
    with tracking.training_run(cfg, "seed_cnn") as run:
        run_id = run.id
    _raw_with_sample(tmp_path)
    subs = tmp_path / "submissions"
    older = _csv(subs, "dogs_vs_cats-old.csv", [1, 2, 3, 4], [0.1] * 4)
    csv = _csv(subs, "dogs_vs_cats-seed_cnn.csv", [1, 2, 3, 4], [0.1, 0.9, 0.2, 0.8])
    os.utime(older, (1, 1))
    (subs / "dogs_vs_cats-seed_cnn.json").write_text(json.dumps(
        {"run_id": run_id, "name": "seed_cnn", "model": "models/x/model.keras", "val_log_loss": 0.25, "val_accuracy": 0.9}))
    fake = use(monkeypatch, FakeKaggle())

    record = kg.run("submit", cfg)  # default: the newest submissions/dogs_vs_cats-*.csv
    assert record["sent"] and record["file"] == str(csv)
    assert fake.sent == [{"competition": DOGS, "file": str(csv), "message": record["message"]}]
    assert f"mlflow run {run_id}" in record["message"] and "val_log_loss=0.2500" in record["message"]
    client = MlflowClient(tracking.tracking_uri(cfg))
    run = client.get_run(run_id)
    assert run.data.tags["kaggle.submission.file"] == str(csv)
    assert run.data.tags["kaggle.submission.message"] == record["message"]
    assert "kaggle.submission.time" in run.data.tags and run.info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(run_id, "kaggle")][0].startswith("kaggle/submission-")

    kg.run("status", cfg)
    out = capsys.readouterr().out
    assert "0.12345" in out and f"mlflow run {run_id}" in out

    # a library error that quotes the key is redacted before it reaches the user
    with pytest.raises(UserError) as e:
        kg.run("submit", cfg_for(tmp_path, "dataset=dogs_vs_cats", "submit.message=leak test"))
    assert "***" in str(e.value) and KEY not in str(e.value) and "\n" not in str(e.value)

    # the key is nowhere: terminal, logs, MLflow database, artifacts
    captured = capsys.readouterr()
    texts = [captured.out, captured.err, caplog.text]
    assert not any(KEY in t for t in texts)
    db = (tmp_path / "mlflow.db").read_bytes()
    assert KEY.encode() not in db and USER.encode() not in db
    files = [p for p in (tmp_path / "mlruns").rglob("*") if p.is_file()]
    assert files and not any(KEY.encode() in p.read_bytes() for p in files)


def test_leaderboard_scores_land_on_the_runs_that_made_the_csvs(tmp_path, store, creds_dir, monkeypatch, capsys):
    """submit tags its run with the submission's ref (and records any score already there); status puts each
    scored submission's public/private score on the run behind its CSV, once: by that ref, else (a file sent some
    other way) by the CSV's sha256 (a blend's CSV, whose .json names no run), never by a file newer than the
    submission."""
    from mlflow.tracking import MlflowClient

    from src import tracking
    from src.files import file_sha256

    cfg = cfg_for(tmp_path, "dataset=dogs_vs_cats")
    _raw_with_sample(tmp_path)
    subs = tmp_path / "submissions"
    ids = {}
    for name in ("seed_cnn", "blend", "late"):
        csv = _csv(subs, f"dogs_vs_cats-{name}.csv", [1, 2, 3, 4], [0.1, 0.9, 0.2, 0.3 + len(name) / 100])
        with tracking.training_run(cfg, name, tags={"submission.sha256": file_sha256(csv)}) as run:
            ids[name] = run.id
        os.utime(csv, (1e9, 1e9))  # 2001: older than the submissions below
    (subs / "dogs_vs_cats-seed_cnn.json").write_text(json.dumps({"run_id": ids["seed_cnn"], "name": "seed_cnn"}))
    (subs / "dogs_vs_cats-blend.json").write_text(json.dumps({"blend": True, "name": "blend"}))  # as blend writes it
    os.utime(subs / "dogs_vs_cats-late.csv")  # rewritten after it was submitted
    fake = use(monkeypatch, FakeKaggle())
    kg.run("submit", cfg_for(tmp_path, "dataset=dogs_vs_cats", f"submit.file={subs}/dogs_vs_cats-seed_cnn.csv"))
    client = MlflowClient(tracking.tracking_uri(cfg))
    assert client.get_run(ids["seed_cnn"]).data.metrics["kaggle.public_score"] == 0.12345  # scored at once here
    fake.elsewhere = [
        {"ref": 7, "date": "2024-05-06T07:08:09Z", "file_name": "dogs_vs_cats-blend.csv", "status": "complete",
         "public_score": "0.2", "private_score": "0.21", "description": "by hand"},
        {"ref": 8, "date": "2024-05-06 07:08:09", "file_name": "dogs_vs_cats-late.csv", "status": "complete",
         "public_score": "0.3", "private_score": "0.31", "description": "by hand"},
        {"ref": 9, "date": "2024-05-06 07:08:09", "file_name": "dogs_vs_cats-blend.csv", "status": "pending",
         "public_score": None, "private_score": None, "description": "not scored yet"}]
    capsys.readouterr()
    for _ in range(2):  # the second status finds everything recorded already
        kg.run("status", cfg)
    out = capsys.readouterr().out
    runs = {k: client.get_run(v) for k, v in ids.items()}
    assert runs["blend"].data.metrics == {"kaggle.public_score": 0.2, "kaggle.private_score": 0.21}
    assert runs["blend"].data.tags["kaggle.ref.7.public_score"] == "0.2"
    assert "kaggle.private_score" not in runs["seed_cnn"].data.metrics   # Kaggle gave none
    assert not runs["late"].data.metrics and not any(k.startswith("kaggle.") for k in runs["late"].data.tags)
    assert out.count("recorded on MLflow run") == 1 and f"recorded on MLflow run {ids['blend']}" in out
    assert out.count("dogs_vs_cats-late.csv was written after the submission") == 2
    for key in ("kaggle.public_score", "kaggle.private_score"):
        assert len(client.get_metric_history(ids["blend"], key)) == 1                  # once, however often asked
    found = client.search_runs([runs["blend"].info.experiment_id], "metrics.`kaggle.public_score` > 0")
    assert {r.info.run_id for r in found} == {ids["seed_cnn"], ids["blend"]}       # searchable, plottable


def test_status_without_a_store_creates_none(tmp_path, creds_dir, monkeypatch, capsys):
    fake = use(monkeypatch, FakeKaggle())
    fake.elsewhere = [{"ref": 1, "date": "2024-05-06", "file_name": "dogs_vs_cats-x.csv", "status": "complete",
                       "public_score": "0.5", "private_score": "0.5", "description": "d"}]
    kg.run("status", cfg_for(tmp_path, "dataset=dogs_vs_cats"))
    assert "0.5" in capsys.readouterr().out and not (tmp_path / "mlflow.db").exists()  # no runs to score: untouched


def test_invalid_csv_is_refused_and_nothing_sent(tmp_path, creds_dir, monkeypatch):
    _raw_with_sample(tmp_path)
    fake = use(monkeypatch, FakeKaggle())
    bad = _csv(tmp_path / "submissions", "dogs_vs_cats-bad.csv", [1, 2, 4, 5], [0.5] * 4)  # 3 missing, 5 extra
    with pytest.raises(UserError, match=r"refused, not sent to Kaggle: ids differ from sample_submission.csv") as e:
        kg.run("submit", cfg_for(tmp_path, "dataset=dogs_vs_cats", f"submit.file={bad}"))
    assert "\n" not in str(e.value)
    _csv(tmp_path / "submissions", "dogs_vs_cats-nan.csv", [1, 2, 3, 4], [0.5, "", 0.5, 1.5])
    with pytest.raises(UserError, match="refused"):
        kg.run("submit", cfg_for(tmp_path, "dataset=dogs_vs_cats"))  # newest = the bad one
    with pytest.raises(UserError, match=r"submit.file=nope.csv: .* not found"):
        kg.run("submit", cfg_for(tmp_path, "dataset=dogs_vs_cats", "submit.file=nope.csv"))
    assert fake.sent == []


def test_dry_run_sends_nothing(tmp_path, creds_dir, monkeypatch, capsys):
    _raw_with_sample(tmp_path)
    fake = use(monkeypatch, FakeKaggle())
    _csv(tmp_path / "submissions", "dogs_vs_cats-seed_cnn.csv", [1, 2, 3, 4], [0.3] * 4)
    record = kg.run("submit", cfg_for(tmp_path, "dataset=dogs_vs_cats", "submit.dry_run=true",
                                      "submit.message=first try"))
    out = capsys.readouterr().out
    assert not record["sent"] and fake.sent == [] and fake.opens == []
    assert "would submit" in out and "first try" in out and "nothing was sent" in out and KEY not in out


# ------------------------------------------------------------------ the command line
def test_cli_exit_code_2_one_line_no_traceback(tmp_path, creds_dir):
    env = {"KAGGLEPIPE_KAGGLE_API": "tests.test_kaggle:subprocess_factory", "KAGGLEPIPE_FAKE_ERROR": "403",
           "KAGGLE_CONFIG_DIR": str(creds_dir), "HOME": str(tmp_path / "home")}
    args = [*path_overrides(tmp_path), f"hydra.run.dir={tmp_path}/hydra"]
    r = run_cli("src.kaggle", "download", "dataset=cifar10", *args, env=env, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr
    assert "https://www.kaggle.com/competitions/cifar-10/rules" in lines[0]
    assert KEY not in r.stdout + r.stderr
    hydra_files = [p for p in (tmp_path / "hydra").rglob("*") if p.is_file()]
    assert not any(KEY.encode() in p.read_bytes() for p in hydra_files)

    r = run_cli("src.kaggle", "download", "dataset=demo", *args, env=env, timeout=120)
    assert r.returncode == 2 and "has no Kaggle competition" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("src.kaggle", "upload", *args, env=env, timeout=120)
    assert r.returncode == 2 and "unknown action 'upload'" in r.stderr

    _raw_with_sample(tmp_path)  # --dry-run: the CLI spelling of submit.dry_run=true; nothing is sent
    _csv(tmp_path / "submissions", "dogs_vs_cats-seed_cnn.csv", [1, 2, 3, 4], [0.3] * 4)
    r = run_cli("src.kaggle", "submit", "--dry-run", "dataset=dogs_vs_cats", *args,
                env={**env, "KAGGLEPIPE_FAKE_ERROR": ""}, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "would submit" in r.stdout and "nothing was sent" in r.stdout and KEY not in r.stdout + r.stderr
