"""Keep secrets out of everything Themis writes: manifests, rejects, reports, logs.

Credentials reach configs in three places: the user-info part of a URL (``https://key@host``),
secret-looking query parameters (``?api_key=...``), and free-form JSON such as an engine's
``extra_body`` (in a written config, the values of secret-looking keys; in an error message,
which may quote the request, every string value). Each is replaced by ``REDACTED``. Pure:
standard library only.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

REDACTED = "***"
# Shorter strings ("en", "on") cannot be credentials, and scrubbing them would garble messages.
MIN_SECRET_CHARS = 4
# Whole words of a name, so that "max_tokens" or "monkey" are not taken for secrets.
_SECRET_KEY = re.compile(
    r"(^|[_\-.])(api[_\-]?key|key|secret|token|password|passwd|pwd|auth|authorization|credentials?|signature"
    r"|cookie|session)($|[_\-.])",
    re.I,
)


def is_secret_key(name: str) -> bool:
    """Whether a field or parameter name looks like it holds a credential (``*_env`` names an
    environment variable, not a secret)."""
    return not name.lower().endswith("_env") and bool(_SECRET_KEY.search(name))


def redact_url(url: str) -> str:
    """The URL with user info and secret-looking query values replaced."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return REDACTED  # not a URL we can take apart: show nothing of it
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rsplit('@', 1)[1]}"
    query = parts.query
    if query:
        pairs = [(k, REDACTED if is_secret_key(k) else v) for k, v in parse_qsl(query, keep_blank_values=True)]
        query = urlencode(pairs, safe=REDACTED)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_tree(value: Any) -> Any:
    """A copy of nested dicts/lists with secret-looking keys' values replaced, and URLs redacted."""
    if isinstance(value, dict):
        return {k: REDACTED if is_secret_key(str(k)) else redact_tree(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_tree(v) for v in value]
    if isinstance(value, str) and "://" in value:
        return redact_url(value)
    return value


def redact_text(text: str, secrets: list[str]) -> str:
    """``text`` with every given secret string replaced (e.g. an error message quoting a URL)."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def url_secrets(url: str) -> list[str]:
    """Strings of ``url`` that must not appear in messages: user info and secret query values."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return [url]
    secrets: list[str] = []
    if "@" in parts.netloc:
        userinfo = parts.netloc.rsplit("@", 1)[0]
        secrets += [userinfo, unquote(userinfo)]
        if ":" in userinfo:
            password = userinfo.split(":", 1)[1]
            secrets += [password, unquote(password)]
    secrets += [v for k, v in parse_qsl(parts.query, keep_blank_values=True) if is_secret_key(k)]
    return [s for s in secrets if s]


def string_values(tree: Any) -> list[str]:
    """Every string value of nested dicts/lists (whatever its key), as it reads in text and quoted
    in JSON once or twice (an error message inside an error body): what ``redact_text`` must drop
    from a message that may quote free-form JSON such as an engine's ``extra_body``."""
    if isinstance(tree, dict):
        return [s for v in tree.values() for s in string_values(v)]
    if isinstance(tree, list | tuple):
        return [s for v in tree for s in string_values(v)]
    if not isinstance(tree, str) or len(tree) < MIN_SECRET_CHARS:
        return []
    forms = {tree}
    for _ in range(2):
        forms |= {json.dumps(f, ensure_ascii=ascii_only)[1:-1] for f in list(forms) for ascii_only in (True, False)}
    return sorted(forms)
