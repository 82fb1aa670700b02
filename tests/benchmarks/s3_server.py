"""A local S3 server for the storage benches: moto's, in a process of its own, on loopback.

``python tests/benchmarks/s3_server.py`` prints the port it listens on, then serves until killed;
``start()`` does that from a bench and returns the endpoint and the process.

One change to moto as it ships: moto answers a ranged GET by reading the whole object and slicing
it, so the 8 MB parts of a 2 GB file would cost 256 reads of 2 GB (and ten at once 20 GB of memory).
A real server reads the range alone; so does this one (``get_object`` hands moto's range handler a
view that reads only the slice asked for). Both sides of a bench talk to the same server. moto
spools objects above 8 MB to files in TMPDIR: point TMPDIR at the bench's scratch folder.
``BENCH_S3_LATENCY_MS`` delays every answer by that much, as a remote server's time to first
byte does (S3 in the same region: tens of ms), which loopback lacks.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

_lazy = threading.local()
_SIMPLE_RANGE = re.compile(r"^bytes=\d+-\d*$")


class _ObjectView:
    """An object's bytes as moto's range handler uses them (``len`` and one slice), read lazily."""

    def __init__(self, key: Any):
        self.key = key

    def __len__(self) -> int:
        return self.key.size

    def __getitem__(self, part: slice) -> bytes:
        with self.key.lock:
            self.key._value_buffer.seek(part.start)
            return self.key._value_buffer.read(part.stop - part.start)


def _patch_moto() -> None:
    from moto.s3.models import FakeKey
    from moto.s3.responses import S3Response

    value = FakeKey.value

    def lazy_value(self: Any) -> Any:
        return _ObjectView(self) if getattr(_lazy, "on", False) else value.fget(self)

    FakeKey.value = property(lazy_value, value.fset)
    get_object = S3Response.get_object

    def ranged_get_object(self: Any) -> Any:
        _lazy.on = (
            bool(_SIMPLE_RANGE.match(self.headers.get("range", "") or "")) and "partNumber" not in self.querystring
        )
        try:
            return get_object(self)
        finally:
            _lazy.on = False

    S3Response.get_object = ranged_get_object


def serve() -> None:
    """Serve on 127.0.0.1 (a free port, printed on the first line of stdout) until killed."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    _patch_moto()
    moto_app = DomainDispatcherApplication(create_backend_app)
    latency = float(os.environ.get("BENCH_S3_LATENCY_MS", "0")) / 1000

    def app(environ: dict, start_response: Any) -> Any:
        time.sleep(latency)  # a remote server's time to first byte, which loopback lacks
        return moto_app(environ, start_response)

    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


def start(tmpdir: Path) -> tuple[str, subprocess.Popen]:
    """Start the server in its own process (its spooled objects and ``server.log`` under
    ``tmpdir``); return (endpoint, process). Credentials for it are put in this process's environment."""
    creds = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    os.environ.update(creds)
    env = os.environ | {"TMPDIR": str(tmpdir)}
    log = open(tmpdir / "server.log", "w")  # noqa: SIM115 (the server's, open as long as it runs)
    proc = subprocess.Popen([sys.executable, __file__], env=env, stdout=subprocess.PIPE, stderr=log, text=True)
    port = proc.stdout.readline().strip()
    if not port.isdigit():
        proc.kill()
        raise RuntimeError(f"the S3 server did not start (said {port!r})")
    return f"http://127.0.0.1:{port}", proc


if __name__ == "__main__":
    serve()
