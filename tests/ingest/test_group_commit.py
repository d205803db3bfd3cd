"""Group commit: concurrent requests share one append per stream, and each request's
answer is that of its own stream's append."""

from __future__ import annotations

import asyncio
from pathlib import Path

from kappaflow.errors import LogUnavailable
from kappaflow.ingest.committer import GroupCommitter
from kappaflow.log.embedded import EmbeddedLog
from kappaflow.testing import limit_file_size, run_in_process

SMALL = {0: [b'{"n": 1}'] * 5, 1: [b'{"n": 2}'] * 5}
BIG = {0: [b"x" * 1_000] * 30, 1: [b'{"n": 3}']}


def _commit_two_streams_over_a_size_limit(root: str) -> None:
    """In a process of its own: requests of streams ``a`` and ``b`` in one group
    commit, where ``b``'s append goes over the file-size limit (a real EFBIG)."""
    log = EmbeddedLog(Path(root), writer=True)
    for topic in ("a", "b"):
        log.create_topic(topic, 2)
    limit_file_size(20_000)
    committer = GroupCommitter(log)

    async def both() -> list[object]:
        return await asyncio.gather(
            committer.append("a", SMALL), committer.append("b", BIG),
            committer.append("a", SMALL), return_exceptions=True,
        )  # fmt: skip

    first, failed, second = asyncio.run(both())
    assert first is None and second is None, (first, second)
    assert isinstance(failed, LogUnavailable), failed
    log.close()


def test_a_failing_stream_fails_only_its_own_requests(tmp_path: Path) -> None:
    run_in_process(_commit_two_streams_over_a_size_limit, str(tmp_path / "log"))
    reader = EmbeddedLog(tmp_path / "log")
    assert reader.end_offsets("a") == {0: 10, 1: 10}
    assert reader.end_offsets("b") == {0: 0, 1: 0}, "nothing of the failed append is served"
