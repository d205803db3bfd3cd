"""The simulator: load shapes, the capacity model through the real policy, the
picture and the command."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from kappaflow.cli import main
from kappaflow.scale.simulator import daily, from_csv, sawtooth, simulate, surge
from kappaflow.settings import Scaling


def test_shapes() -> None:
    rate, duration = daily(1000)
    assert duration == 86_400
    by_hour = {h: rate(h * 3600) for h in range(24)}
    assert min(by_hour, key=by_hour.get) == 4 and max(by_hour, key=by_hour.get) == 20
    assert by_hour[4] == 100 and by_hour[20] == 1000
    burst, _ = surge(1000)
    assert (burst(0), burst(1200), burst(1799), burst(1800)) == (1000, 10_000, 10_000, 1000)
    ramp, _ = sawtooth(1000)
    assert ramp(0) == 0 and ramp(300) == 1000


def test_csv_curves_interpolate(tmp_path: Path) -> None:
    path = tmp_path / "load.csv"
    path.write_text("time_s,events_per_s\n0,100\n60,700\n")
    rate, duration = from_csv(path)
    assert (rate(30), duration) == (400, 60)


def test_a_well_tuned_threshold_tracks_the_load_with_bounded_lag() -> None:
    policy = Scaling(lag_threshold=15_000, min_replicas=1)
    rate, duration = daily(90_000)
    steps = simulate(rate, duration, 15_000, policy, partitions=8, step_s=60)
    later = steps[10:]  # after the first minutes' catch-up
    assert max(s.workers for s in later) <= 8
    assert max(s.lag for s in later) < 200_000
    by_hour = {round(s.time_s / 3600): s.workers for s in later}
    assert by_hour[4] == 1 and by_hour[20] == 6  # 90,000 / 15,000


def test_a_surge_beyond_the_partitions_builds_lag_then_drains() -> None:
    policy = Scaling(lag_threshold=15_000, min_replicas=1)
    rate, duration = surge(20_000)
    steps = simulate(rate, duration, 15_000, policy, partitions=8)
    assert max(s.workers for s in steps) == 8, "never more workers than partitions"
    peak = max(steps, key=lambda s: s.lag)
    assert 1200 <= peak.time_s <= 1800
    assert steps[-1].lag < 50_000


def test_simulate_command_writes_a_picture(tmp_path: Path) -> None:
    picture = tmp_path / "surge.png"
    result = CliRunner().invoke(
        main, ["scale", "simulate", "--load", "surge", "--capacity", "15000", "--output",
               str(picture)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "max lag" in result.output
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = CliRunner().invoke(main, ["scale", "simulate", "--load", "weekly", "--capacity", "1"])
    assert bad.exit_code == 2 and "--load must be one of" in bad.output
