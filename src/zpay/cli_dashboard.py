"""`zpay merchants add-user`: a person who signs in to a merchant's dashboard with an email and
a password. The password is read from a prompt (twice) or from stdin, never from argv (which
other users of the machine can see), and is never printed."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from typing import TYPE_CHECKING

from zpay.settings import Settings

if TYPE_CHECKING:
    from zpay.services.context import AppContext
    from zpay.services.dashboard_auth import DashboardUserCreated


def _read_password(from_stdin: bool) -> str | None:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("password for the new dashboard user: ")
    if getpass.getpass("again: ") != first:
        print("error: the two passwords differ", file=sys.stderr)
        return None
    return first


def add_user(args: argparse.Namespace, settings: Settings) -> int:
    from zpay.cli import _with_admin_context
    from zpay.domain.errors import ZpayError
    from zpay.services.dashboard_auth import add_user as create

    password = _read_password(args.password_stdin)
    if password is None:
        return 1

    async def add(ctx: AppContext) -> DashboardUserCreated | None:
        try:
            return await create(ctx, args.merchant, args.email, password)
        except ZpayError as exc:
            print(f"error: {exc.message} ({exc.code})", file=sys.stderr)
            return None

    user = _with_admin_context(settings, add)
    if user is None:
        return 1
    if getattr(args, "json", False):
        print(json.dumps({"id": user.id, "object": "dashboard_user",
                          "merchant_id": user.merchant_id, "email": user.email}, indent=2))
    else:
        print(f"dashboard user: {user.id}")
        print(f"{user.email} can now sign in to {user.merchant_id} at /dashboard/login")
    return 0


def add_parser(merchants: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = merchants.add_parser("add-user", help="let a person sign in to a merchant's dashboard "
                             "with an email and a password (prompted for)")
    p.add_argument("--merchant", required=True, help="the merchant id (mer_…)")
    p.add_argument("--email", required=True)
    p.add_argument("--password-stdin", action="store_true",
                   help="read the password from the first line of stdin instead of a prompt")
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    p.set_defaults(func=add_user)
