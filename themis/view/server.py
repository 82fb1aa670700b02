"""``themis view RUN_ROOT``: the workbench page and its JSON API, served from this machine.

A ``ThreadingHTTPServer`` from the standard library (nothing to install, nothing that listens
beyond what is asked): on 127.0.0.1 by default, GET only. It serves

- ``/`` and the page's files (``static/``: plain JavaScript and CSS, shipped with the package);
- ``/config.js``, which tells the page to ask this server for its data;
- ``/api/<key>``: the data layer's documents (``themis.view.data``): ``section/<name>``,
  ``table/<id>/meta``, ``table/<id>/page?offset=&limit=&<filter>=<value>``, ``table/<id>/row/<n>``,
  ``compare/<a>-<b>``; a bad request is a 400 with ``{"error": ...}``;
- ``/files/<path>``: the run's plots, and nothing else of the run (``RunView.files``).

Requests whose Host header is not this server's own name are refused (403): a web page elsewhere
cannot read the run through the user's browser by pointing its own domain at 127.0.0.1 (DNS
rebinding). ``--out DIR`` writes the same page as static files instead (``themis.view.export``).
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import sys
import threading
import webbrowser
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlparse

from themis.view import curation, evaluation, training  # noqa: F401 (imported before the first request: scipy takes seconds)
from themis.view.assets import ASSETS, asset, config_js
from themis.view.data import RunView, ViewError, open_run
from themis.view.documents import jsonable

DEFAULT_PORT = 8765


def document(view: RunView, key: str, query: dict[str, str]) -> Any:
    """The API document at ``key``; ValueError for a key or parameter that names nothing."""
    parts = key.split("/")
    if len(parts) == 2 and parts[0] == "section":
        return view.section(parts[1])
    if len(parts) == 2 and parts[0] == "compare":
        a, _, b = parts[1].partition("-")
        return view.compare(_int(a, "report"), _int(b, "report"))
    if len(parts) >= 3 and parts[0] == "table":
        table = view.table(parts[1])
        if parts[2:] == ["meta"]:
            return table.meta()
        if parts[2:] == ["page"]:
            filters = {k: v for k, v in query.items() if k not in ("offset", "limit")}
            offset, limit = _int(query.get("offset", "0"), "offset"), _int(query.get("limit", "50"), "limit")
            page = table.page(filters, offset, limit)
            table.prefetch()
            return page
        if len(parts) == 4 and parts[2] == "row":
            return table.record(_int(parts[3], "row"))
    raise ValueError(f"no document {key!r}")


def _int(text: str, name: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, got {text!r}") from None


class Handler(BaseHTTPRequestHandler):
    """GET the page, its data and the run's plots; nothing else."""

    view: RunView
    hosts: set[str] | None  # the Host headers accepted; None: any (listening on every interface)
    server_version = "themis-view"

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.hosts is not None and self.headers.get("Host", "") not in self.hosts:
            self._send(HTTPStatus.FORBIDDEN, b"unknown Host header\n", "text/plain")
            return
        url = urlparse(self.path)
        path = unquote(url.path)
        try:
            if path in ("/", "/index.html"):
                self._send(HTTPStatus.OK, asset("index.html"), "text/html; charset=utf-8")
            elif path.lstrip("/") in ASSETS:
                name = path.lstrip("/")
                self._send(HTTPStatus.OK, asset(name), mimetypes.guess_type(name)[0] or "text/plain")
            elif path == "/favicon.ico":
                self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon")
            elif path == "/config.js":
                self._send(HTTPStatus.OK, config_js("api"), "text/javascript")
            elif path.startswith("/api/"):
                self.view.refresh()
                body = document(self.view, path[len("/api/") :], dict(parse_qsl(url.query, keep_blank_values=True)))
                self._json(HTTPStatus.OK, body)
            elif path.startswith("/files/"):
                self._send(HTTPStatus.OK, self.view.read_bytes(path[len("/files/") :]), "image/png")
            else:
                self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")
        except ValueError as exc:
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
        except Exception as exc:  # a bug or an unreadable file: said on the page and here, never a hang
            print(f"themis view: error serving {self.path}: {exc!r}", file=sys.stderr, flush=True)
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(exc).__name__}: {exc}"})

    def _json(self, status: HTTPStatus, body: Any) -> None:
        data = json.dumps(jsonable(body), allow_nan=False, separators=(",", ":")).encode()
        self._send(status, data, "application/json")

    def _send(self, status: HTTPStatus, data: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
        pass  # one line per request would bury the URL; errors are printed where they happen


def build_server(view: RunView, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> ThreadingHTTPServer:
    """A server for ``view`` bound to host:port (port 0: any free port); call ``serve_forever``."""
    server = ThreadingHTTPServer((host, port), Handler)
    bound = server.server_address[1]
    hosts = None if host in ("0.0.0.0", "") else {f"{n}:{bound}" for n in {host, "localhost", "127.0.0.1"}}
    server.RequestHandlerClass = type("RunHandler", (Handler,), {"view": view, "hosts": hosts})
    server.daemon_threads = True
    return server


def url_of(server: ThreadingHTTPServer) -> str:
    host, port = server.server_address[:2]
    return f"http://{host.decode() if isinstance(host, bytes) else host}:{port}/"


def serve(args: argparse.Namespace) -> int:
    """``themis view`` with its parsed arguments (``themis.cli`` defines them); a run root that
    cannot be viewed prints one line and returns 1."""
    try:
        view = open_run(args.run_root, s3_endpoint=args.s3_endpoint)
        if args.out:
            from themis.view.export import export

            written = export(view, args.out, s3_endpoint=args.s3_endpoint)
            print(f"themis view: wrote {written['files']} files ({written['bytes'] / 1e6:.1f} MB) to {args.out}")
            for reason in written["skipped"].values():
                print(f"themis view: warning: {reason}", file=sys.stderr)
            print(f"open {written['index']} in a browser (no server needed)")
            return 0
        server = _bind(args.host, args.port, view)
    except (ViewError, OSError) as exc:
        print(f"themis: error: {exc}", file=sys.stderr)
        return 1
    url = url_of(server)
    taken = f" (port {DEFAULT_PORT} is taken)" if args.port is None and server.server_address[1] != DEFAULT_PORT else ""
    print(f"themis view: {view.uri} at {url}{taken} (Ctrl-C stops)", flush=True)
    if not args.no_browser:
        threading.Thread(target=webbrowser.open, args=(url,), daemon=True).start()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _bind(host: str, port: int | None, view: RunView) -> ThreadingHTTPServer:
    """The default port, or any free one when it is taken; an asked-for port that is taken is an error."""
    try:
        return build_server(view, host, DEFAULT_PORT if port is None else port)
    except OSError as exc:
        if port is not None:
            raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        return build_server(view, host, 0)
