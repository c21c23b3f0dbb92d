"""The `zpay` command line."""

from __future__ import annotations

import argparse
import asyncio
import sys

from zpay.settings import Settings


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    import dataclasses

    import uvicorn

    from zpay.api.app import create_app

    if args.no_scheduler:
        settings = dataclasses.replace(settings, scheduler_enabled=False)
    host, port = args.host or settings.host, args.port or settings.port
    uvicorn.run(create_app(settings), host=host, port=port, log_level="warning")
    return 0


def _db_upgrade(_args: argparse.Namespace, settings: Settings) -> int:
    from zpay.store.migrate import upgrade

    upgrade(settings.database_url)
    print("database is at the latest schema")
    return 0


def _merchants_create(args: argparse.Namespace, settings: Settings) -> int:
    from zpay.api.app import build_context
    from zpay.services.merchants import create_merchant

    async def run() -> None:
        ctx = await build_context(settings)
        try:
            created = await create_merchant(ctx, args.name, args.environment)
        finally:
            await ctx.chains.close()
            await ctx.db.dispose()
        print(f"merchant: {created.merchant_id}")
        print(f"secret key (shown once, store it now): {created.api_key}")

    asyncio.run(run())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zpay", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP API")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--no-scheduler", action="store_true",
                       help="run jobs in a separate `zpay worker` instead")
    serve.set_defaults(func=_serve)
    db = sub.add_parser("db", help="database administration").add_subparsers(dest="db_cmd",
                                                                               required=True)
    db.add_parser("upgrade", help="apply migrations").set_defaults(func=_db_upgrade)
    merchants = sub.add_parser("merchants", help="merchants").add_subparsers(dest="m_cmd",
                                                                              required=True)
    mc = merchants.add_parser("create", help="create a merchant and print its key once")
    mc.add_argument("--name", required=True)
    mc.add_argument("--environment", default="test", choices=["test", "live"])
    mc.set_defaults(func=_merchants_create)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args, Settings.from_env()))
    except Exception as exc:  # the message, not a traceback, for operators
        from zpay.store.database import NotMigrated

        if isinstance(exc, NotMigrated):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
