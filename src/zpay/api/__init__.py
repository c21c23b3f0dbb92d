"""HTTP API: thin controllers over the services."""
