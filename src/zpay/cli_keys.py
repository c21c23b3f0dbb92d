"""`zpay api-keys …` (the merchant's secret keys, over the API) and `zpay keys rotate-master`
(re-wrap every data key under the current master key, against the database)."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from zpay.settings import Settings

if TYPE_CHECKING:
    from zpay.client import Zpay


def _create(args: argparse.Namespace, z: Zpay) -> Any:
    return z.api_keys.create(name=args.name)


def _list(args: argparse.Namespace, z: Zpay) -> Any:
    from zpay.cli import _page, _rows
    from zpay.client import ApiKey

    return _rows(z.api_keys.list(limit=_page(args)), args, ApiKey)


def _get(args: argparse.Namespace, z: Zpay) -> Any:
    return z.api_keys.get(args.id)


def _revoke(args: argparse.Namespace, z: Zpay) -> Any:
    return z.api_keys.revoke(args.id)


def _roll(args: argparse.Namespace, z: Zpay) -> Any:
    return z.api_keys.roll(args.id, overlap_seconds=args.overlap_seconds)


def add_api_key_commands(commands: Any) -> None:
    """`zpay api-keys create|list|get|revoke|roll` (`commands`: zpay.cli._Commands)."""
    from zpay.cli import _listing

    keys = commands.group("api-keys", "the merchant's secret API keys")
    commands.add(keys, "create", _create, "create a secret key (shown once)"
                 ).add_argument("--name")
    _listing(commands.add(keys, "list", _list, "list keys (hints only)"))
    commands.add(keys, "get", _get, "show a key (hint only)", "id")
    commands.add(keys, "revoke", _revoke, "refuse the key from its next call on", "id")
    commands.add(keys, "roll", _roll, "a new key; the old one works for an overlap, then stops",
                 "id").add_argument("--overlap-seconds", type=int,
                                    help="how long the old key keeps working (default a day, "
                                    "at most a week; 0: revoked now)")


def _rotate_master(args: argparse.Namespace, settings: Settings) -> int:
    from zpay.cli import _with_admin_context
    from zpay.services.master_key import rotate_master

    report = _with_admin_context(settings, lambda ctx: rotate_master(
        ctx, batch=args.batch_size, max_batches=args.max_batches))
    if args.json:
        print(json.dumps({"version": report.version, "rewrapped": report.rewrapped,
                          "batches": report.batches,
                          "remaining": {str(k): v for k, v in report.remaining.items()}}))
    else:
        print(f"re-wrapped under master key version {report.version}: "
              f"{report.rewrapped['wallet_secrets']} wallet secrets, "
              f"{report.rewrapped['webhook_endpoints']} webhook secrets "
              f"({report.batches} batches)")
        if report.done:
            print("nothing is left under an older version: ZPAY_PREVIOUS_MASTER_KEYS can "
                  "be emptied once every process runs with the new key")
        else:
            left = ", ".join(f"{n} under version {v}"
                             for v, n in sorted(report.remaining.items()))
            print(f"still to do: {left}; run the command again to continue")
    return 0 if report.done else 3


def add_keys_parser(sub: Any) -> None:
    keys = sub.add_parser("keys", help="master key administration").add_subparsers(
        dest="keys_cmd", required=True)
    p = keys.add_parser("rotate-master", help="re-wrap every wallet and webhook secret's data "
                        "key under ZPAY_MASTER_KEY (version ZPAY_MASTER_KEY_VERSION), in "
                        "batches; run again to resume. Exit 3 if some remain")
    p.add_argument("--batch-size", type=int, default=100,
                   help="rows per transaction (default 100)")
    p.add_argument("--max-batches", type=int, help="stop after this many batches")
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    p.set_defaults(func=_rotate_master, json=False)
