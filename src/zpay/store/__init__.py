"""Persistence: SQLAlchemy models, column types, engine and unit of work, Alembic migrations."""
