"""zpay: pre-funded session wallets for autonomous agents."""

__version__ = "0.1.0"
