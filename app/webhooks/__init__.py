"""Webhooks: signed events of a generation's end, delivered at least once by the worker."""
