"""The workbench page's own files (``static/``, shipped with the package) and its ``config.js``,
shared by the server (``themis.view.server``) and the static export (``themis.view.export``)."""

from __future__ import annotations

import json
from importlib import resources

ASSETS = ("index.html", "style.css", "data.js", "charts.js", "table.js", "app.js")


def asset(name: str) -> bytes:
    """One of the page's files, from the package."""
    return (resources.files("themis.view") / "static" / name).read_bytes()


def config_js(mode: str) -> bytes:
    """``config.js``: where the page gets its data ("api": this server; "static": ``data/*.js``)."""
    return f"window.Themis = window.Themis || {{}};\nThemis.config = {json.dumps({'mode': mode})};\n".encode()
