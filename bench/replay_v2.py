"""Version 2 of the video app, as `bench_replay` deploys it: the same computation."""

from __future__ import annotations

from kappaflow.app import App
from kappaflow.apps.video.app import create_app as create_video
from kappaflow.settings import Settings


def create_app(settings: Settings) -> App:
    app = create_video(settings)
    app.version = 2
    return app
