"""The merchant SDK (sync and async) and a wallet helper for scripts and tests."""
