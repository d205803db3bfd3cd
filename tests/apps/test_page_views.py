"""The page-views app of docs/apps.md, run as the page shows it: the module is the
page's code block, loaded as a user's app, fed through the log and a worker with
restarts, and queried over HTTP."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from kappaflow.app import App, load_apps
from kappaflow.settings import Settings
from kappaflow.store.tables import Table
from kappaflow.testing import run_events
from kappaflow.testing.services import serving

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "apps.md"
T0 = 1_767_225_600_000


def module_text() -> str:
    section = GUIDE.read_text().split("## Page views: an app of library operators")[1]
    return section.split("```python\n")[1].split("```")[0]


@pytest.fixture
def page_views(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    (tmp_path / "page_views.py").write_text(module_text())
    monkeypatch.syspath_prepend(str(tmp_path))
    return settings.replace(apps=("page_views",), batch_max_events=40)


def test_the_module_is_about_thirty_lines_of_code() -> None:
    code = [line for line in module_text().splitlines() if line.strip()]
    assert len(code) <= 35, len(code)


def test_views_per_url_per_minute_and_each_users_latest(page_views: Settings) -> None:
    (app,) = load_apps(page_views)
    rng = random.Random(11)
    views = [
        {"user_id": f"u{rng.randrange(30)}", "url": f"/p/{rng.randrange(8)}",
         "ts": T0 + second * 1000 + rng.randrange(-20_000, 1)}
        for second in range(1_500)
    ]  # fmt: skip
    store = run_events(app, [app.streams[0].schema(**v) for v in views], page_views, restarts=5)
    per_minute = Counter((v["url"], v["ts"] - v["ts"] % 60_000) for v in views)
    assert {(r.url, r.start_ms): r.views for r in store.select(table(app, "url_minute"))} == (
        per_minute
    )
    latest: dict[str, tuple[int, str]] = {}
    for v in views:  # the first of a user's views at its latest time stays
        if v["user_id"] not in latest or v["ts"] > latest[v["user_id"]][0]:
            latest[v["user_id"]] = (v["ts"], v["url"])
    rows = store.select(table(app, "last_view"))
    assert {r.user_id: (r.time_ms, r.url) for r in rows} == latest
    assert len(app.all_tables) == 2 and store.dead_letters(app.group(app.streams[0])) == []


def test_the_query_answers_a_pages_minutes(page_views: Settings) -> None:
    (app,) = load_apps(page_views)
    views = [{"user_id": user, "url": "/home", "ts": T0 + second * 1000}
             for user, second in (("a", 1), ("b", 2), ("a", 61), ("c", 5))]  # fmt: skip
    run_events(app, [app.streams[0].schema(**v) for v in views], page_views)
    with serving(page_views, ("query",)) as client:
        answer = client.get("/v1/views", params={"url": "/home"})
        assert answer.json() == [
            {"url": "/home", "start_ms": T0, "views": 3},
            {"url": "/home", "start_ms": T0 + 60_000, "views": 1},
        ]
        assert client.get("/v1/views").status_code == 400


def table(app: App, name: str) -> Table[Any]:
    (found,) = [t for t in app.all_tables if t.name == name]
    return found
