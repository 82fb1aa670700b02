"""moto's S3 server on loopback, counting the requests it answers (and how many overlap).

A real HTTP S3 endpoint, as ``ThreadedMotoServer`` (one thread per request), with a WSGI layer in
front that records each request's method, path and Range header, the most requests in flight at
once, and can hold object GETs for ``get_delay_s`` (so concurrent clients surely overlap).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server


@dataclass
class Seen:
    method: str
    path: str
    query: str
    range: str | None
    user_agent: str = ""  # which client sent it: boto3 ("Boto3/... Botocore/...") or pyarrow ("aws-sdk-cpp/...")

    @property
    def is_object_get(self) -> bool:
        return self.method == "GET" and self.path.strip("/").count("/") >= 1


@dataclass
class RequestLog:
    requests: list[Seen] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    get_delay_s: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def object_gets(self) -> list[Seen]:
        """GETs of an object (``/bucket/key``), not listings of a bucket."""
        return [r for r in self.requests if r.is_object_get]

    def clear(self) -> None:
        with self.lock:
            self.requests.clear()
            self.max_in_flight = 0


class CountingMotoServer(ThreadedMotoServer):
    """``ThreadedMotoServer`` whose requests land in ``self.log``."""

    def __init__(self, get_delay_s: float = 0.0):
        super().__init__(ip_address="127.0.0.1", port=0, verbose=False)
        self.log = RequestLog(get_delay_s=get_delay_s)

    @property
    def endpoint(self) -> str:
        return "http://{}:{}".format(*self.get_host_and_port())

    def _server_entry(self) -> None:
        moto_app = DomainDispatcherApplication(create_backend_app)
        log = self.log

        def app(environ, start_response):
            seen = Seen(
                environ["REQUEST_METHOD"],
                environ["PATH_INFO"],
                environ.get("QUERY_STRING", ""),
                environ.get("HTTP_RANGE"),
                environ.get("HTTP_USER_AGENT", ""),
            )
            with log.lock:
                log.requests.append(seen)
                log.in_flight += 1
                log.max_in_flight = max(log.max_in_flight, log.in_flight)
            try:
                if log.get_delay_s and seen.is_object_get:
                    time.sleep(log.get_delay_s)
                return list(moto_app(environ, start_response))  # the body, produced while counted
            finally:
                with log.lock:
                    log.in_flight -= 1

        self._server = make_server(self._ip_address, self._port, app, True, request_handler=MotoRequestHandler)
        self._server_ready_event.set()
        self._server.serve_forever()
