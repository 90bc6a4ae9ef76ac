"""A real S3 API on 127.0.0.1 for tests: moto's server in a thread of the test process, a bucket in it, and
the AWS_* environment pointing every client at it (pyarrow honours AWS_ENDPOINT_URL; subprocesses and Ray
workers started afterwards inherit it)."""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from moto.server import ThreadedMotoServer
from pyarrow import fs as pafs

BUCKET = "raystudy-test"


@contextlib.contextmanager
def s3_bucket(bucket: str = BUCKET, servers: list | None = None) -> Iterator[str]:
    """Start moto's S3 server, set AWS_* (dummy keys, region, endpoint), create ``bucket``; yield its URI
    ``s3://bucket``. Afterwards the environment is restored and the server stopped. ``servers``, if given,
    receives the server (a fault test stops it, then ``restart``s it)."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    if servers is not None:
        servers.append(server)
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        pafs.S3FileSystem(endpoint_override=f"{host}:{port}", scheme="http", region="us-east-1",
                          allow_bucket_creation=True).create_dir(bucket)
        yield f"s3://{bucket}"
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        for running in servers or [server]:
            with contextlib.suppress(Exception):  # a fault test may have stopped it already
                running.stop()


def restart(server: ThreadedMotoServer) -> ThreadedMotoServer:
    """A new server on the stopped ``server``'s address: the same endpoint, the same buckets and objects
    (moto keeps them in this process, not in the server)."""
    host, port = server.get_host_and_port()
    again = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
    again.start()
    return again


def bucket_files(uri: str) -> list[str]:
    """Every object under ``uri`` (paths without the scheme), sorted."""
    fs, root = pafs.FileSystem.from_uri(uri)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File)
