"""Chain adapters. Library types (solana, solders, web3, eth_account) never leave this package."""
