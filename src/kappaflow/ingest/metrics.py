"""What ingest counts: events appended and requests refused, per stream."""

from __future__ import annotations

from prometheus_client import Counter

EVENTS_INGESTED = Counter(
    "kappaflow_events_ingested", "Events durably appended by ingest.", ["stream"]
)
REQUESTS_REJECTED = Counter(
    "kappaflow_ingest_rejected", "Ingest requests refused, by reason.", ["stream", "reason"]
)
REJECTION_REASONS = ("invalid", "too_large", "unsupported_media_type", "disconnected",
                     "rate_limited", "backlog", "unavailable")  # fmt: skip
"""The reasons ingest refuses a request to a stream for (and ``unknown_stream``)."""
UNKNOWN_STREAM = "(unknown)"
"""The stream label of requests to a stream no app declares."""
