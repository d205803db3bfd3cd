"""The dashboard: ``/status`` against the real log and store, and the page's script run
by Node.js on what ``/status`` answers."""

from __future__ import annotations

import json
import re
import subprocess
from contextlib import closing
from pathlib import Path

import msgspec
import psycopg
from click.testing import CliRunner

from kappaflow.apps.video.app import create_app
from kappaflow.cli import main
from kappaflow.keys import new_secret
from kappaflow.log import open_log
from kappaflow.log.partitioner import partition_for
from kappaflow.query.dashboard import PAGE
from kappaflow.settings import Settings
from kappaflow.store import open_store
from kappaflow.store.base import Halted, ScaleDecision, ScalingState
from kappaflow.stream.worker import Worker
from kappaflow.testing.services import serving

EVENTS = "/v1/streams/heartbeats/events"


def beats(count: int) -> list[dict]:
    return [{"user_id": f"u{i}", "video_id": "v", "position_s": 1.0, "ts": 1000 + i}
            for i in range(count)]  # fmt: skip


def test_status_counts_what_is_appended_processed_and_dead(
    settings: Settings, tmp_path: Path
) -> None:
    settings = settings.replace(batch_max_events=10)
    # The first record of its partition, far ahead of the 9 of its key that follow it in
    # the batch: they come late.
    ahead = [{"user_id": "late", "video_id": "v", "position_s": 1.0, "ts": ts}
             for ts in (10_000_000, *range(1_000, 1_009))]  # fmt: skip
    owned = sorted({partition_for("late", 4), partition_for("late", 4) ^ 1})
    with serving(settings, ("ingest", "query")) as client:
        assert client.post(EVENTS, json=ahead + beats(191)).status_code == 202
        app = create_app(settings)
        worker = Worker(app, app.streams[0], open_log(settings), open_store(settings), settings,
                        owned)  # fmt: skip
        worker.start()
        worker.poll()  # the first 10 records of each owned partition
        halted = Halted(10, "ValueError: a bug in [/x]", 1_000.0, 1_030.0)
        worker.store.record_halt(worker.group, owned[0], worker.owner, halted)
        answer = client.get("/status")
    assert answer.status_code == 200
    video = next(s for s in answer.json()["streams"] if s["stream"] == "heartbeats")
    ends = open_log(settings).end_offsets("heartbeats")
    assert [(p["partition"], p["appended"]) for p in video["partitions"]] == sorted(ends.items())
    processed = [10 if partition in owned else 0 for partition in range(4)]
    assert [p["processed"] for p in video["partitions"]] == processed
    assert all(p["lag"] == p["appended"] - p["processed"] for p in video["partitions"])
    assert [p["worker"] for p in video["partitions"]] == [
        worker.owner if p in owned else None for p in range(4)
    ]
    assert video["workers"] == 1
    assert [p["halted"] for p in video["partitions"]] == [
        msgspec.to_builtins(halted) if p == owned[0] else None for p in range(4)
    ]
    assert (video["appended"], video["processed"], video["lag"]) == (201, 20, 181)
    assert (video["group"], video["dead_letters"]) == ("video.heartbeats", 9)
    assert video["dead_letters_by_reason"] == {"late": 9}
    paths = {q["path"] for q in answer.json()["queries"]}
    assert {"/v1/progress/{user_id}/{video_id}", "/v1/clicks/top"} <= paths

    command = ["status", "--data-dir", settings.data_dir]  # the same, read by `kappaflow status`
    env = {"KAPPAFLOW_PARTITIONS": "4", "COLUMNS": "200"}
    as_json = CliRunner().invoke(main, [*command, "--json"], env=env)
    assert as_json.exit_code == 0 and json.loads(as_json.output) == answer.json()
    tables = CliRunner().invoke(main, command, env=env).output
    assert "video@1 (live) · heartbeats: 181 behind, 9 dead letters (late 9), 1 worker(s)" in tables
    assert f"{worker.owner} │ at 10: ValueError: a bug in [/x]" in tables
    missing = tmp_path / "none"
    empty = CliRunner().invoke(main, ["status", "--data-dir", str(missing)], env=env)
    assert empty.exit_code == 1 and f"no log in {missing / 'log'}" in empty.output
    assert not missing.exists(), "nothing was created"


def test_status_is_503_when_the_store_is_gone(settings: Settings, postgres_dsn: str) -> None:
    settings = settings.replace(store="postgres", postgres_dsn=postgres_dsn)
    with serving(settings, ("query",)) as client:
        assert client.get("/status").status_code == 200
        server, name = postgres_dsn.rsplit("/", 1)
        with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
            admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        answer = client.get("/status")
    assert answer.status_code == 503
    assert answer.json()["error"].startswith("status unknown:")


# No browser runs here: the page's script runs in Node.js against a minimal stand-in for
# the DOM, enough to check what it builds from a real /status answer and from a 503.
DOM = """
const nodes = {};
const node = (tag) => ({tag, attrs: {}, children: [], hidden: true, textContent: "",
  setAttribute(n, v) { this.attrs[n] = v; }, append(c) { this.children.push(c); },
  replaceChildren(...c) { this.children = c; }});
globalThis.document = {getElementById: (id) => nodes[id] ||= node(id),
                       createElementNS: (ns, tag) => node(tag)};
const answers = ANSWERS;
const sent = [];
const stored = {};
globalThis.sessionStorage = {getItem: (k) => stored[k] ?? null,
                             setItem: (k, v) => { stored[k] = v; }};
globalThis.prompt = () => " kf_given ";
globalThis.fetch = async (url, options) => {
  sent.push(options.headers.authorization ?? null);
  const [status, body] = answers.shift();
  return {ok: status === 200, status, json: async () => body};
};
globalThis.setTimeout = (poll) => { if (answers.length) Promise.resolve().then(poll); };
const tag = (n) => `<${n.tag}${Object.entries(n.attrs).map(([k, v]) => ` ${k}=${v}`).join("")}>`;
const text = (n) => typeof n === "string" ? n
  : (ATTRIBUTES ? tag(n) : "") + n.children.map(text).join("|");
process.on("exit", () => console.log(JSON.stringify({
  cards: nodes.streams.children.map(text), queries: nodes.queries.children.map(text),
  autoscaling: (nodes.autoscaling?.children ?? []).map(text),
  error: nodes.error.hidden ? null : nodes.error.textContent, sent})));
"""


def run_page(answers: list[tuple[int, object]], attributes: bool = False) -> dict:
    """What the page shows after each answer of /status: each element's text, and with
    ``attributes`` its tag and attributes before it (``<a href=x class=y>``)."""
    script = PAGE["/dashboard.js"][1].decode()
    dom = DOM.replace("ANSWERS", json.dumps(answers))
    program = dom.replace("ATTRIBUTES", json.dumps(attributes)) + script
    ran = subprocess.run(["node", "-e", program], capture_output=True, text=True, timeout=30)
    assert ran.returncode == 0, ran.stderr
    return json.loads(ran.stdout)


def test_the_page_shows_each_stream_and_then_the_error(settings: Settings) -> None:
    settings = settings.replace(apps=("video", "clicks"))  # the heartbeats' card first
    with serving(settings, ("ingest", "query")) as client:
        assert client.get("/").headers["content-type"].startswith("text/html")
        assert client.post(EVENTS, json=beats(30)).status_code == 202
        status = client.get("/status").json()
    shown = run_page([(200, status)])
    assert len(shown["cards"]) == len(status["streams"]) == 2
    heartbeats = shown["cards"][0]
    assert heartbeats.startswith(
        "video@1 (live) · heartbeats|30|appended|0|processed|30|lag (records)|not yet known|"
        "caught up in|"
        "0|dead letters"
    )
    assert "|0|workers|" in heartbeats and "partition|appended|processed|lag||worker" in heartbeats
    assert "halted" not in heartbeats
    status["streams"][0]["partitions"][2]["worker"] = "pod-7:1"
    status["streams"][0]["partitions"][2]["halted"] = {
        "offset": 7,
        "error": "ValueError: a bug",
        "since": 1e9,
        "retry_at": 1e9 + 30,
    }
    shown = run_page([(200, status)])
    notice = "|partition 2 halted at offset 7: ValueError: a bug; next try at "
    assert notice in shown["cards"][0] and "|pod-7:1|" in shown["cards"][0]
    assert len(shown["queries"]) == len(status["queries"])
    assert shown["error"] is None
    failed = run_page([(200, status), (503, {"error": "status unknown: the store is down"})])
    assert failed["error"] == "/status: status unknown: the store is down"
    assert len(failed["cards"]) == 2  # the last figures stay on the page


def test_the_page_shows_dead_letters_by_reason_in_a_warning_colour_while_they_grow(
    settings: Settings,
) -> None:
    settings = settings.replace(apps=("video", "clicks"))  # the heartbeats' card first
    with serving(settings, ("query",)) as client:
        status = client.get("/status").json()
    assert "|no dead letters|" in run_page([(200, status)])["cards"][0]
    answers = []
    for late, undecodable in ((3, 1), (5, 1), (5, 1)):
        status["streams"][0]["dead_letters"] = late + undecodable
        status["streams"][0]["dead_letters_by_reason"] = {"late": late, "undecodable": undecodable}
        answers.append((200, json.loads(json.dumps(status))))
    card = run_page(answers, attributes=True)["cards"][0]
    assert (
        "<div class=reasons>dead letters by reason: "
        "|<a href=/v1/dead-letters?stream=heartbeats&reason=late class=warn>late 5"
        "| · |<a href=/v1/dead-letters?stream=heartbeats&reason=undecodable class=>undecodable 1"
    ) in card
    assert "<div class=figure warn><b>6|dead letters" in card
    steady = run_page(answers[1:], attributes=True)["cards"][0]
    assert "warn" not in steady, "nothing grew within the history shown"


def test_the_page_asks_for_a_key_when_the_server_does_and_sends_it_from_then_on(
    settings: Settings,
) -> None:
    """With authentication on (docs/security.md): /status answers 401; the page asks
    for a key once, keeps it for the browser tab and sends it with every poll."""
    settings = settings.replace(apps=("video",), auth="on", admin_key=new_secret())
    with serving(settings, ("ingest", "query")) as client:
        assert client.get("/").status_code == 200, "the page holds no data"
        refused = client.get("/status")
        status = client.get("/status", headers={"authorization": f"Bearer {settings.admin_key}"})
    assert (refused.status_code, status.status_code) == (401, 200)
    shown = run_page([(401, refused.json()), (200, status.json()), (200, status.json())])
    assert shown["sent"] == [None, "Bearer kf_given", "Bearer kf_given"]
    assert shown["error"] is None and len(shown["cards"]) == 1


def test_the_page_runs_only_its_own_script_and_style_sheet_as_its_policy_says(
    settings: Settings,
) -> None:
    settings = settings.replace(apps=("video",), auth="on", admin_key=new_secret())
    with serving(settings, ("query",)) as client:
        answers = {path: client.get(path) for path in PAGE}  # no key: they hold no data
    for path, (kind, body) in PAGE.items():
        answer = answers[path]
        assert answer.status_code == 200 and answer.content == body
        assert answer.headers["content-type"] == kind
        policy = answer.headers["content-security-policy"]
        assert "default-src 'none'" in policy and "script-src 'self'" in policy
        assert "unsafe-inline" not in policy and "frame-ancestors 'none'" in policy
        assert answer.headers["x-content-type-options"] == "nosniff"
    page = answers["/"].text
    assert re.findall(r"<script[^>]*>", page) == ['<script src="/dashboard.js" defer>']
    assert re.findall(r"<link[^>]*>", page) == ['<link rel="stylesheet" href="/dashboard.css">']
    assert "<style" not in page and "style=" not in page
    assert "style" not in answers["/dashboard.js"].text, "no style attribute the policy blocks"


def test_the_page_shows_each_autoscalers_pool_and_its_last_decisions(settings: Settings) -> None:
    settings = settings.replace(apps=("video",))
    with serving(settings, ("query",)) as client:
        nothing = client.get("/status").json()
        with closing(open_store(settings)) as store:
            store.record_scaling(
                ScalingState("live", 2, 3, 5_000, 4_000, 1_000, True, 1.0),
                ScaleDecision("live", 1.0, 2, 3, 5_000, "recommendation 4, hpa"),
            )
            store.record_scaling(ScalingState("video@2", 1, 1, 0, 0, 1_000, False, 2.0), None)
            store.pause_scaling("video@2", 1)
        status = client.get("/status").json()
    assert nothing["autoscaling"] == {"pools": [], "decisions": []}
    assert run_page([(200, nothing)])["autoscaling"] == [
        "no autoscaler of kappaflow's reports here (in a cluster, KEDA scales the workers)"
    ]
    live, version, table = run_page([(200, status)])["autoscaling"]
    assert live == (
        "2 → 3|workers of live, wanted|4,000|lag to the policy|1,000|"
        "threshold per worker|active|state"
    )
    assert version.startswith("1 → 1|workers of video@2, wanted") and "paused at 1|state" in version
    assert table.startswith("time|pool|workers|lag|why|")
    assert table.endswith("|live|2 → 3|5,000|recommendation 4, hpa")
