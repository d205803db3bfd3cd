"""Ingest: events in, durably appended to their stream's partition of the log."""
