"""Base of the use cases' request types, which the HTTP API takes as bodies too: one
definition of each request, unknown fields refused."""

from __future__ import annotations

import msgspec


class Request(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass
