"""Group commit: concurrent requests share one append per stream, and each request's
answer is that of its own stream's append."""

from __future__ import annotations

import asyncio
import multiprocessing
import resource
import signal
from pathlib import Path

from kappaflow.errors import LogUnavailable
from kappaflow.ingest.committer import GroupCommitter
from kappaflow.log.embedded import EmbeddedLog

SMALL = {0: [b'{"n": 1}'] * 5, 1: [b'{"n": 2}'] * 5}
BIG = {0: [b"x" * 1_000] * 30, 1: [b'{"n": 3}']}


def _commit_two_streams_over_a_size_limit(root: str) -> None:
    """In a process of its own: requests of streams ``a`` and ``b`` in one group
    commit, where ``b``'s append goes over the file-size limit (a real EFBIG)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    log = EmbeddedLog(Path(root), writer=True)
    for topic in ("a", "b"):
        log.create_topic(topic, 2)
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
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
    child = multiprocessing.get_context("spawn").Process(
        target=_commit_two_streams_over_a_size_limit, args=(str(tmp_path / "log"),)
    )
    child.start()
    child.join(30)
    assert child.exitcode == 0
    reader = EmbeddedLog(tmp_path / "log")
    assert reader.end_offsets("a") == {0: 10, 1: 10}
    assert reader.end_offsets("b") == {0: 0, 1: 0}, "nothing of the failed append is served"
