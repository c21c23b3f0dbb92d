"""Use cases: each orchestrates domain + store + chain in explicit transactions."""
