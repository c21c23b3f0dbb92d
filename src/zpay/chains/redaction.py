"""URLs out of messages: hosted RPC URLs carry their API key in the path or query, and
transport errors quote the URL they failed on. Used wherever chain prose may be logged."""

from __future__ import annotations

import re
import urllib.parse

_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>()\[\],]+")


def redact_url(url: str) -> str:
    """`url` without what may carry a secret (credentials, path, query, fragment)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        port = ""
    hidden = "/…" if parts.path.strip("/") or parts.query or parts.fragment else ""
    return f"{parts.scheme}://{host}{port}{hidden}" if parts.scheme else "<url>"


def redact(text: str) -> str:
    """`text` with every URL in it reduced to scheme, host and port."""
    return _URL.sub(lambda m: redact_url(m.group(0)), text)
