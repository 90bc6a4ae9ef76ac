"""``python -m raystudy.data``: fetch from a local HTTP server (no internet), checksum rejection,
safe extraction, verification records, ``check`` and its exit codes."""
from __future__ import annotations

import functools
import hashlib
import io
import json
import tarfile
import threading
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from support.dataset_files import write_cifar10
from support.studies import run_cli
from raystudy.data import FetchError, Release, fetch, safe_extract, verify
from raystudy.data.__main__ import main
from raystudy.data.releases import RELEASES


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def served(tmp_path):
    """A folder served over HTTP on 127.0.0.1; yields (folder, base URL)."""
    folder = tmp_path / "www"
    folder.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def cifar_archive(tmp_path, folder) -> tuple[str, str]:
    """A cifar-10-python.tar.gz of generated files in ``folder``; returns (file name, md5)."""
    src = tmp_path / "src"
    write_cifar10(src, n_train=20, n_test=10)
    path = folder / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        tf.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return path.name, hashlib.md5(path.read_bytes()).hexdigest()


def run(argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("python -m raystudy.data:")]
    assert len(lines) == 1, err
    return lines[0]


def test_fetch_verifies_extracts_records_and_check_rehashes(tmp_path, served, monkeypatch):
    folder, base = served
    name, md5 = cifar_archive(tmp_path, folder)
    monkeypatch.setitem(RELEASES, "cifar10", Release(
        "cifar10", f"{base}/{name}", name, "cifar-10-batches-py", md5, "test server"))
    root = tmp_path / "data"
    code, out, err = run(["fetch", "cifar10", "--root", str(root)])
    assert code == 0, err
    assert "fetched, verified and extracted" in out and f"md5 {md5} verified" in err
    assert sorted(p.name for p in (root / "cifar-10-batches-py").iterdir()) == [
        "batches.meta", "data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
        "test_batch"]
    record = json.loads((root / ".raystudy" / "verified" / "cifar10.json").read_text())
    assert record["archive_md5"] == md5 and record["files"] == 7
    assert not (root / ".raystudy" / "downloads" / name).exists()  # archive removed after extraction
    assert verify(RELEASES["cifar10"], root) == 7
    code, out, _ = run(["fetch", "cifar10", "--root", str(root)])
    assert code == 0 and "already present and verified" in out
    code, out, _ = run(["check", "--root", str(root), "--verify"])
    assert code == 0
    lines = {ln.split()[0]: ln for ln in out.splitlines()}
    assert set(lines) == set(RELEASES)
    assert "present" in lines["cifar10"] and "re-hashed 7 files: ok" in lines["cifar10"]
    assert "missing" in lines["cifar100"] and f"fetch cifar100 --root {root}" in lines["cifar100"]
    # A changed byte is caught by --verify (not by the cheap check), naming the file.
    batch = root / "cifar-10-batches-py" / "data_batch_2"
    blob = bytearray(batch.read_bytes())
    blob[100] ^= 1
    batch.write_bytes(bytes(blob))
    assert run(["check", "cifar10", "--root", str(root)])[0] == 0
    code, out, _ = run(["check", "cifar10", "--root", str(root), "--verify"])
    assert code == 1 and f"invalid   {batch}: md5 differs" in out


def test_wrong_checksum_is_rejected_with_one_line(tmp_path, served, monkeypatch):
    folder, base = served
    name, md5 = cifar_archive(tmp_path, folder)
    root = tmp_path / "data"
    # The real registry entry, pointed at the local mirror: the generated archive is not CIFAR-10.
    code, _, err = run(["fetch", "cifar10", "--root", str(root), "--url", f"{base}/{name}"])
    line = error_line(err)
    assert code == 1 and f"does not match the published {RELEASES['cifar10'].md5}" in line
    assert not (root / "cifar-10-batches-py").exists()
    assert not list((root / ".raystudy" / "downloads").iterdir())  # download discarded
    code, _, err = run(["fetch", "cifar10", "--root", str(root), "--url", f"{base}/nothing.tar.gz"])
    assert code == 1 and "download failed" in error_line(err)


def test_bad_input_exit_2(tmp_path):
    code, _, err = run(["fetch", "imagenet", "--root", str(tmp_path)])
    assert code == 2 and "unknown dataset 'imagenet'; known: cifar10, cifar100" in error_line(err)
    (tmp_path / "file").write_text("x")
    code, _, err = run(["check", "--root", str(tmp_path / "file")])
    assert code == 2 and "data root is not a directory" in error_line(err)
    code, _, err = run(["check", "--root", str(tmp_path / "absent")])
    assert code == 2 and "does not exist" in error_line(err)
    code, _, err = run(["fetch", "--root", str(tmp_path)])
    assert code == 2 and error_line(err)
    code, _, err = run(["fetch", "cifar10", "cifar100", "--url", "http://127.0.0.1:1/x"])
    assert code == 2 and "--url needs exactly one NAME" in error_line(err)
    code, _, err = run_cli("check", "svhn", module="raystudy.data")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err


def test_check_statuses_without_fetch_record(tmp_path):
    write_cifar10(tmp_path, n_train=10, n_test=5)
    code, out, _ = run(["check", "--root", str(tmp_path), "--verify"])
    assert code == 0 and "not fetched by raystudy.data; cannot re-hash" in out
    (tmp_path / "cifar-10-batches-py" / "batches.meta").unlink()
    code, out, _ = run(["check", "--root", str(tmp_path)])
    line = next(ln for ln in out.splitlines() if ln.startswith("cifar10 "))
    assert code == 1 and "invalid" in line and "batches.meta: missing" in line
    assert run(["check", "cifar100", "--root", str(tmp_path)])[0] == 1  # a NAMEd release missing


def _tar(path, members):
    with tarfile.open(path, "w") as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)


def test_archive_members_that_escape_the_root_are_refused(tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    for bad in ("../evil.txt", "/tmp/evil.txt", "a/../../evil.txt"):
        info = tarfile.TarInfo(bad)
        info.size = 4
        _tar(tmp_path / "bad.tar", [(info, b"evil")])
        with pytest.raises(FetchError, match="would land outside the data root"):
            safe_extract(tmp_path / "bad.tar", dest)
    link = tarfile.TarInfo("x/link")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    _tar(tmp_path / "link.tar", [(link, None)])
    with pytest.raises(FetchError, match="is a link or device"):
        safe_extract(tmp_path / "link.tar", dest)
    with zipfile.ZipFile(tmp_path / "bad.zip", "w") as zf:
        zf.writestr("../evil.txt", b"evil")
    with pytest.raises(FetchError, match="would land outside"):
        safe_extract(tmp_path / "bad.zip", dest)
    assert not (tmp_path / "evil.txt").exists() and list(dest.iterdir()) == []
    with zipfile.ZipFile(tmp_path / "good.zip", "w") as zf:
        zf.writestr("tiny-imagenet-200/wnids.txt", b"n01\n")
        zf.writestr("tiny-imagenet-200/val/", b"")
    assert safe_extract(tmp_path / "good.zip", dest) == {
        "tiny-imagenet-200/wnids.txt": hashlib.md5(b"n01\n").hexdigest()}
    assert (dest / "tiny-imagenet-200" / "val").is_dir()


def test_fetch_refuses_an_escaping_archive_and_reads_zenodo_checksums(tmp_path, served, monkeypatch):
    folder, base = served
    info = tarfile.TarInfo("../../escape.txt")
    info.size = 1
    _tar(folder / "evil.tar", [(info, b"x")])
    md5 = hashlib.md5((folder / "evil.tar").read_bytes()).hexdigest()
    # No pinned md5: fetch reads it from the (local stand-in for the) Zenodo records API.
    (folder / "api" / "records").mkdir(parents=True)
    (folder / "api" / "records" / "42").write_text(json.dumps(
        {"files": [{"key": "other.tar", "checksum": "md5:0"}, {"key": "evil.tar", "checksum": f"md5:{md5}"}]}))
    monkeypatch.setattr("raystudy.data.download.ZENODO_API", f"{base}/api/records/")
    release = Release("tinyimagenet-c", f"{base}/evil.tar", "evil.tar", "Tiny-ImageNet-C", None, "test", "42")
    with pytest.raises(FetchError, match="would land outside the data root"):
        fetch(release, tmp_path / "data", out=io.StringIO())
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "data" / "Tiny-ImageNet-C").exists()
    monkeypatch.setitem(RELEASES, "tinyimagenet-c", release)
    code, _, err = run(["fetch", "tinyimagenet-c", "--root", str(tmp_path / "data")])
    assert code == 1 and "refusing to extract" in error_line(err)
