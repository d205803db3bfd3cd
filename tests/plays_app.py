"""An app whose stream's schema changes, for the tests of schema versions
(``KAPPAFLOW_APPS=plays_app``, with tests/ on the path). Its setting ``plays_schema``
picks what the stream declares (`SCHEMAS`); it writes each play as a row of ``plays``."""

from __future__ import annotations

import msgspec

from kappaflow.app import App, Batch, FunctionProcessor, Rows, State, Stream
from kappaflow.events import EventTime, Identifier
from kappaflow.events.versions import Earlier
from kappaflow.settings import Settings
from kappaflow.store.base import Table


class Play(msgspec.Struct):
    """Version 1."""

    user: Identifier
    ts: EventTime
    seconds: float = 0.0


class PlayWithCountry(msgspec.Struct):
    """Version 1 with a new optional field: a change it may take in place."""

    user: Identifier
    ts: EventTime
    seconds: float = 0.0
    country: str | None = None


class PlayOnDevice(msgspec.Struct):
    """Version 1 with a new required field: a change that needs a version."""

    user: Identifier
    ts: EventTime
    device: str
    seconds: float = 0.0


class PlayV3(msgspec.Struct):
    """Version 3 after `PlayV2`: a new optional field, so version 2 needs no upcaster."""

    user: Identifier
    ts: EventTime
    device: str
    watched_s: float
    country: str | None = None


class PlayV2(msgspec.Struct):
    """Version 2: ``device`` required, ``seconds`` renamed ``watched_s``."""

    user: Identifier
    ts: EventTime
    device: str
    watched_s: float


def from_v1(play: Play) -> PlayV2:
    return PlayV2(play.user, play.ts, "unknown", play.seconds)


SCHEMAS: dict[str, tuple[type[msgspec.Struct], tuple[Earlier, ...]]] = {
    "v1": (Play, ()),
    "v1+optional": (PlayWithCountry, ()),
    "v1+required": (PlayOnDevice, ()),
    "v2": (PlayV2, (Earlier(Play, from_v1),)),
    "v2 without upcaster": (PlayV2, (Earlier(Play),)),
    "v2 with country": (PlayWithCountry, (Earlier(Play),)),
    "v3": (PlayV3, (Earlier(Play, from_v1), Earlier(PlayV2))),
}


class PlaysSettings(msgspec.Struct):
    schema: str = "v1"


class PlayRow(msgspec.Struct):
    player: str
    ts: int
    watched_s: float
    device: str | None


PLAYS = Table.of(PlayRow, key=("player", "ts"), name="plays")


def record(state: State[int], batch: Batch) -> Rows:
    return {
        PLAYS.name: [
            PlayRow(play.user, play.ts, getattr(play, "watched_s", getattr(play, "seconds", 0.0)),
                    getattr(play, "device", None))
            for play in batch.events
        ]
    }  # fmt: skip


def create_app(settings: Settings) -> App:
    own = settings.app("plays", PlaysSettings)
    schema, earlier = SCHEMAS[own.schema]
    plays = Stream("plays", schema, key="user", time="ts", earlier=earlier)
    return App("plays", [plays], [PLAYS], {plays.name: FunctionProcessor(record, int)},
               settings=PlaysSettings)  # fmt: skip
