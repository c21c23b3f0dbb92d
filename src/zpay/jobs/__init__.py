"""Periodic jobs: expiry, refunds, reconciliation, webhook dispatch and delivery.

Each job is an idempotent, bounded sweep over the database that opens its own
units of work. Rows are claimed with ``SELECT … FOR UPDATE SKIP LOCKED`` on
PostgreSQL, so any number of API processes and ``zpay worker`` processes can
run them side by side without doing one piece of work twice; on SQLite
``BEGIN IMMEDIATE`` serializes the claims instead. Network calls (webhooks,
chains) never happen inside a claiming transaction.
"""
