"""Heartbeats -> watched segments in Flink SQL (PyFlink, streaming mode, parallelism 1),
run by bench_peers.py in its own venv (bench/.venv-flink).

Usage: flink_sessions.py HEARTBEATS.ndjson OUT_DIR GAP_S LATENESS_S. Prints one JSON
line: the seconds from submitting the job to its end (planning, the local cluster's
start, reading and parsing the file, writing the CSV) and the segments as
[user_id, video_id, start_s, end_s] rows.

The statement: a watermark of the allowed lateness; exact duplicates dropped by a
1 ms tumbling window (the OVER windows below see rows of one millisecond as peers and
would give them the same LAG); per (user, video), LAG over event time says whether a
row joins the previous one (the sessionizer's rules); a running SUM numbers segments;
a session window per (user, video, segment) closes each segment and yields its
positions' MIN and MAX.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path

from pyflink.table import EnvironmentSettings, TableEnvironment

KIND_RANK = "CASE COALESCE(kind, 'heartbeat') WHEN 'play' THEN 0 WHEN 'seek' THEN 1 \
WHEN 'heartbeat' THEN 2 WHEN 'pause' THEN 3 ELSE 4 END"


def main(path: str, out: str, gap_s: float, lateness_s: float) -> None:
    env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    env.get_config().set("parallelism.default", "1")
    env.execute_sql(f"""
        CREATE TABLE heartbeats (
            user_id STRING, video_id STRING, position_s DOUBLE, ts BIGINT, kind STRING,
            rowtime AS TO_TIMESTAMP_LTZ(ts, 3),
            WATERMARK FOR rowtime AS rowtime - INTERVAL '{lateness_s}' SECOND
        ) WITH ('connector' = 'filesystem', 'path' = '{path}', 'format' = 'json')""")
    env.execute_sql(f"""
        CREATE TABLE segments (user_id STRING, video_id STRING, start_s DOUBLE, end_s DOUBLE)
        WITH ('connector' = 'filesystem', 'path' = '{out}', 'format' = 'csv')""")
    # Views as Table objects: CREATE VIEW re-parses its expanded text, which breaks
    # SESSION(... PARTITION BY (a, b) ...).
    views = {
        "events": f"""
            SELECT user_id, video_id, ts, position_s, {KIND_RANK} AS kind_rank,
                window_time AS rowtime
            FROM TABLE(TUMBLE(TABLE heartbeats, DESCRIPTOR(rowtime), INTERVAL '0.001' SECOND))
            GROUP BY user_id, video_id, ts, kind, position_s, window_start, window_end,
                window_time""",
        "flagged": f"""
            SELECT user_id, video_id, position_s, kind_rank, rowtime,
                (kind_rank <> 1 AND LAG(kind_rank) OVER w NOT IN (3, 4)
                 AND ts - LAG(ts) OVER w <= {round(gap_s * 1000)}
                 AND ABS(position_s - LAG(position_s) OVER w
                         - CAST(ts - LAG(ts) OVER w AS DOUBLE) / 1000) <= {gap_s}
                ) IS TRUE AS joins
            FROM events
            WINDOW w AS (PARTITION BY user_id, video_id ORDER BY rowtime)""",
        "numbered": """
            SELECT user_id, video_id, position_s, rowtime,
                SUM(CASE WHEN joins THEN 0 ELSE 1 END) OVER w AS segment_no
            FROM flagged
            WHERE joins OR kind_rank NOT IN (3, 4)
            WINDOW w AS (PARTITION BY user_id, video_id ORDER BY rowtime)""",
    }
    for name, query in views.items():
        env.create_temporary_view(name, env.sql_query(query))
    started = time.perf_counter()
    env.execute_sql(f"""
        INSERT INTO segments
        SELECT user_id, video_id, MIN(position_s), MAX(position_s)
        FROM TABLE(SESSION(TABLE numbered PARTITION BY (user_id, video_id, segment_no),
            DESCRIPTOR(rowtime), INTERVAL '{gap_s}' SECOND))
        GROUP BY user_id, video_id, segment_no, window_start, window_end
        HAVING MAX(position_s) > MIN(position_s)""").wait()
    seconds = time.perf_counter() - started
    rows = [
        [user, video, float(start), float(end)]
        for part in Path(out).glob("part-*")
        for user, video, start, end in csv.reader(part.open())
    ]
    print(json.dumps({"seconds": seconds, "segments": rows}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]))
