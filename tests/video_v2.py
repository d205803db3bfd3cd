"""Version 2 of the video app, for the tests of app versions (``--module video_v2``,
with tests/ on the path): sessions end after `GAP_S` of event time without a heartbeat,
where version 1's end after the setting ``video_session_gap_s`` (10 s by default)."""

from __future__ import annotations

from kappaflow.app import App
from kappaflow.apps.video.app import create_app as create_video
from kappaflow.settings import Settings

GAP_S = 600.0


def create_app(settings: Settings) -> App:
    app = create_video(settings.replace(video_session_gap_s=GAP_S))
    app.version = 2
    return app
