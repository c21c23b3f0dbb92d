"""Pure domain: money, policy evaluation, limit windows, state machines. Standard library only."""
