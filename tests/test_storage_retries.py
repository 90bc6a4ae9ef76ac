"""The S3 client's explicit retries (``raystudy.storage.s3_retries``): an S3 endpoint that has gone fails a
request in seconds, against moto's real server stopped under a Store (pyarrow's own strategy waited 6 s on
each); a throttled request (503 SlowDown) is retried ``RAYSTUDY_S3_ATTEMPTS`` times, against a real HTTP server
that throttles every request and counts them; an unusable setting is one line naming it, exit 2."""
from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from raystudy.storage import ATTEMPTS, Store
from support.s3_server import restart, s3_bucket

SLOWDOWN = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
            b"<Message>Please reduce your request rate.</Message></Error>")


def test_a_stopped_s3_server_fails_a_request_in_seconds():
    """moto's server stopped under a Store: each request fails within 5 s (AWS's standard backoff, 3
    attempts: at most ~3 s; pyarrow's strategy for a URI took 6.3 s here), and names the lost connection;
    the server back on the same address, a Store works again."""
    servers: list = []
    with s3_bucket(servers=servers) as bucket:
        store = Store(f"{bucket}/runs/gone")
        store.write_text(store.path("a.txt"), "a")
        servers[-1].stop()
        for _ in range(3):  # the backoff is random: three tries, each within the bound
            t0 = time.perf_counter()
            with pytest.raises(OSError, match="NETWORK_CONNECTION"):
                store.exists(store.path("a.txt"))
            assert time.perf_counter() - t0 < 5.0
        servers.append(restart(servers[-1]))
        assert Store(store.uri).read_bytes(store.path("a.txt")) == b"a"


class _Throttle(BaseHTTPRequestHandler):
    """Answers every request as S3 does when throttling (503 SlowDown) and counts the requests."""
    count = 0

    def _slow_down(self) -> None:
        type(self).count += 1
        body = b"" if self.command == "HEAD" else SLOWDOWN
        self.send_response(503)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _slow_down

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def throttling() -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 that throttles every request; yields its endpoint (host:port)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Throttle)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("attempts", [None, "2"])
def test_throttling_is_retried_as_often_as_configured(monkeypatch, attempts):
    """503 SlowDown is retried with backoff: ATTEMPTS requests in all by default, RAYSTUDY_S3_ATTEMPTS when set
    (pyarrow's strategy for a URI sent 31 in 6 s, every 0.2 s)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    if attempts:
        monkeypatch.setenv("RAYSTUDY_S3_ATTEMPTS", attempts)
    with throttling() as endpoint:
        store = Store(f"s3://bucket/runs?endpoint_override={endpoint}&scheme=http&region=us-east-1")
        _Throttle.count = 0
        with pytest.raises(OSError, match="SlowDown|503"):
            store.read_bytes(store.path("a.txt"))
        assert _Throttle.count == int(attempts or ATTEMPTS)


def test_a_pickled_copy_retries_as_configured(monkeypatch):
    """Ray pickles ``Store.fs`` into Tune's and Train's processes: the copy keeps the retry strategy (pyarrow's
    own pickled S3 filesystem falls back to its default, 3 attempts), whatever the receiving environment says."""
    import pickle
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("RAYSTUDY_S3_ATTEMPTS", "2")
    with throttling() as endpoint:
        store = Store(f"s3://bucket/runs?endpoint_override={endpoint}&scheme=http&region=us-east-1")
        monkeypatch.delenv("RAYSTUDY_S3_ATTEMPTS")
        copy = pickle.loads(pickle.dumps(store.fs))
        _Throttle.count = 0
        with pytest.raises(OSError, match="SlowDown|503"):
            copy.open_input_file("bucket/runs/a.txt")
        assert _Throttle.count == 2


@pytest.mark.parametrize("name, value", [("RAYSTUDY_S3_ATTEMPTS", "0"), ("RAYSTUDY_S3_ATTEMPTS", "three"),
                                         ("RAYSTUDY_S3_CONNECT_TIMEOUT", "-1")])
def test_an_unusable_retry_setting_is_one_line_exit_2(tmp_path, capsys, monkeypatch, name, value):
    from raystudy.run import main
    with s3_bucket() as bucket:
        monkeypatch.setenv(name, value)
        path = tmp_path / "study.yaml"
        path.write_text(f"name: bad\nstorage: {bucket}/runs\nblocks:\n  - {{name: c, family: circles, task: circles, "
                        "factor: 0.5, model: mlp, model_args: {hidden: [4]}, lr: 0.01, epochs: 1}\n")
        assert main([str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"{path}: storage: {bucket}/runs: {name}={value!r}: want "), err
