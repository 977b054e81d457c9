"""Limits per API key: request rate, concurrency, and credits per period."""
