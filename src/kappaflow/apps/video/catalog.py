"""The video catalog: titles with their license holder and royalty rate, and ad slots.
Loaded from a JSON or CSV file (``kappaflow catalog load``) or ``POST /v1/catalog``;
either the whole upload is valid and written in one transaction, or nothing is.

JSON: ``{"videos": [...], "ad_slots": [...]}``. CSV: one file per kind, told apart by
its header (``license_holder`` for videos, ``advertiser`` for ad slots)."""

from __future__ import annotations

import csv
import io
from typing import Annotated, Any, NamedTuple

import msgspec
from msgspec import Meta

from kappaflow.app import Upload
from kappaflow.errors import InvalidEvents
from kappaflow.events import Identifier
from kappaflow.events.validate import (
    DECODE_ERRORS,
    Identifiers,
    Problem,
    decode_problem,
    error_path,
)
from kappaflow.store.base import Store, Table

NonNegative = Annotated[float, Meta(ge=0)]
MAX_RATE_PER_MINUTE = 1_000.0
"""Royalty rates above it are refused: a day's amount in micro-units must stay an
integer of 64 bits however many sessions add to it."""
Rate = Annotated[float, Meta(ge=0, le=MAX_RATE_PER_MINUTE)]
Title = Annotated[str, Meta(pattern=r"^[^\x00]*$")]
"""Any text but NUL, which PostgreSQL cannot store."""
UNKNOWN_HOLDER = "unknown"


class Video(msgspec.Struct):
    video_id: Identifier
    title: Title
    duration_s: NonNegative
    license_holder: Identifier
    royalty_rate_per_minute: Rate


class AdSlot(msgspec.Struct):
    video_id: Identifier
    position_s: NonNegative
    advertiser: Identifier
    campaign: Identifier


class Catalog(msgspec.Struct, forbid_unknown_fields=True):
    videos: list[Video] = []
    ad_slots: list[AdSlot] = []


_IDS = {kind: Identifiers(kind) for kind in (Video, AdSlot)}


class _Rows(msgspec.Struct, forbid_unknown_fields=True):
    """A catalog whose rows are checked one by one, to name every bad one."""

    videos: list[msgspec.Raw] = []
    ad_slots: list[msgspec.Raw] = []


class CatalogSummary(msgspec.Struct):
    videos: int
    ad_slots: int


VIDEOS = Table(
    "video_catalog",
    columns=(("video_id", "TEXT"), ("title", "TEXT"), ("duration_s", "REAL"),
             ("license_holder", "TEXT"), ("royalty_rate_per_minute", "REAL")),
    key=("video_id",),
    history=True,
)  # fmt: skip
AD_SLOTS = Table(
    "video_ad_slots",
    columns=(("video_id", "TEXT"), ("position_s", "REAL"), ("advertiser", "TEXT"),
             ("campaign", "TEXT")),
    key=("video_id", "position_s"),
    history=True,
)  # fmt: skip


class Licence(NamedTuple):
    holder: str
    rate_per_minute: float


def index_videos(rows: list[tuple[Any, ...]]) -> dict[str, Licence]:
    return {video_id: Licence(holder, rate) for video_id, _, _, holder, rate in rows}


Slots = list[tuple[float, str, str]]
"""[(position_s, advertiser, campaign)] of one video, by position."""


def index_slots(rows: list[tuple[Any, ...]]) -> dict[str, Slots]:
    slots: dict[str, Slots] = {}
    for video_id, position, advertiser, campaign in rows:
        slots.setdefault(video_id, []).append((position, advertiser, campaign))
    for video_slots in slots.values():
        video_slots.sort()
    return slots


def parse(body: bytes, content_type: str) -> Catalog:
    """A catalog from JSON or CSV; raises `InvalidEvents` naming every bad row."""
    if content_type == "text/csv":
        return _parse_csv(body)
    try:
        catalog = msgspec.json.decode(body, type=Catalog)
        if _IDS[Video].valid(catalog.videos) and _IDS[AdSlot].valid(catalog.ad_slots):
            return catalog
    except DECODE_ERRORS:
        pass
    try:
        rows = msgspec.json.decode(body, type=_Rows)
    except msgspec.ValidationError as error:
        raise InvalidEvents([_problem_at(*error_path(error))]) from None
    except DECODE_ERRORS as error:
        raise InvalidEvents([decode_problem(None, error)]) from None
    problems = [
        problem
        for section, kind in (("videos", Video), ("ad_slots", AdSlot))
        for index, raw in enumerate(getattr(rows, section))
        if (problem := _row_problem(f".{section}[{index}]", raw, kind)) is not None
    ]
    raise InvalidEvents(problems)


def _row_problem(at: str, raw: msgspec.Raw, kind: type[Video] | type[AdSlot]) -> Problem | None:
    """What is wrong with the row at path ``at``, if anything."""
    try:
        row = msgspec.json.decode(raw, type=kind)
    except (msgspec.DecodeError, UnicodeDecodeError) as error:
        reason, path = error_path(error)
        return _problem_at(reason, at + path)
    if found := _IDS[kind].problem(row):
        field, reason = found
        return _problem_at(reason, f"{at}.{field}")
    return None


def _problem_at(reason: str, path: str) -> Problem:
    """``.videos[3].duration_s`` -> Problem(3, "videos.duration_s", reason)."""
    section, _, rest = path.removeprefix(".").partition("[")
    index_text, _, field = rest.partition("]")
    index = int(index_text) if index_text.isdigit() else None
    return Problem(index, ".".join(p for p in (section, field.lstrip(".")) if p) or None, reason)


def _parse_csv(body: bytes) -> Catalog:
    try:
        reader = csv.DictReader(io.StringIO(body.decode("utf-8-sig")))
        header = reader.fieldnames or []
    except (UnicodeDecodeError, csv.Error) as error:
        raise InvalidEvents([Problem(None, None, f"not valid CSV: {error}")]) from None
    kind: type[Video] | type[AdSlot] = Video if "license_holder" in header else AdSlot
    if kind is AdSlot and "advertiser" not in header:
        reason = "the header must name the columns of videos or of ad slots"
        raise InvalidEvents([Problem(None, None, reason)])
    rows, problems = [], []
    for index, row in enumerate(reader):
        if None in row:  # DictReader's key for values beyond the header's columns
            reason = f"{len(row[None])} more value(s) than the header has columns"
            problems.append(Problem(index, None, reason))
            continue
        try:
            converted = msgspec.convert(row, kind, strict=False)
        except msgspec.ValidationError as error:
            reason, path = error_path(error)
            problems.append(Problem(index, path.lstrip(".") or None, reason))
            continue
        if found := _IDS[kind].problem(converted):
            problems.append(Problem(index, *found))
        else:
            rows.append(converted)
    if problems:
        raise InvalidEvents(problems)
    return Catalog(videos=rows) if kind is Video else Catalog(ad_slots=rows)  # type: ignore[arg-type]


def catalog_rows(catalog: Catalog) -> dict[str, list[tuple[Any, ...]]]:
    """The catalog's rows by table, for `Store.upsert`."""
    rows: dict[str, list[tuple[Any, ...]]] = {}
    if catalog.videos:
        rows[VIDEOS.name] = [msgspec.structs.astuple(v) for v in catalog.videos]
    if catalog.ad_slots:
        rows[AD_SLOTS.name] = [msgspec.structs.astuple(s) for s in catalog.ad_slots]
    return rows


def load(store: Store, catalog: Catalog, valid_from_ms: int | None = None) -> CatalogSummary:
    """Upsert the catalog in one transaction, valid from ``valid_from_ms`` (None: now)."""
    store.create_tables([VIDEOS, AD_SLOTS])
    store.upsert(catalog_rows(catalog), valid_from_ms)
    return CatalogSummary(len(catalog.videos), len(catalog.ad_slots))


def upload(
    store: Store, body: bytes, content_type: str, valid_from_ms: int | None
) -> CatalogSummary:
    return load(store, parse(body, content_type), valid_from_ms)


UPLOAD = Upload(
    "/v1/catalog",
    upload,
    "Add or replace videos and ad slots.",
    body=Catalog,
    result=CatalogSummary,
    csv="One kind of row per upload, told apart by the header line: videos (video_id, title, "
    "duration_s, license_holder, royalty_rate_per_minute) or ad slots (video_id, position_s, "
    "advertiser, campaign), then a row per line, each value as the JSON schema of its kind says.",
)
