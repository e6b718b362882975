"""When the bridge reopens the headset's video at another bitrate
(clients/hololens_bridge/bitrate.py): seldom, in steps, and never for an
encoder that merely sends less than it may."""

from __future__ import annotations

import pytest

from clients.hololens_bridge.bitrate import BitrateLadder


def feed(ladder: BitrateLadder, estimate_bps: int, sending_bps: float, start_s: float,
         seconds: float, every_s: float = 0.2) -> list[tuple[float, int]]:
    """Estimates every `every_s` for `seconds`; the changes the ladder asked for."""
    changes = []
    for i in range(round(seconds / every_s) + 1):
        now = start_s + i * every_s
        changed = ladder.observe(estimate_bps, sending_bps, now)
        if changed is not None:
            changes.append((round(now, 3), changed))
            sending_bps = min(sending_bps, changed)  # the reopened stream sends less
    return changes


def test_rungs_run_from_the_configured_bitrate_down_to_the_floor():
    ladder = BitrateLadder(2_500_000, min_bps=300_000)
    assert ladder.rungs[0] == ladder.current_bps == 2_500_000
    assert ladder.rungs[-1] == 300_000
    assert all(0.69 < b / a < 0.71 for a, b in zip(ladder.rungs, ladder.rungs[1:-1]))
    with pytest.raises(ValueError, match="min_bps <= max_bps"):
        BitrateLadder(200_000, min_bps=300_000)


def test_a_congested_uplink_steps_down_after_a_second_to_what_it_carries():
    ladder = BitrateLadder(2_500_000)
    # Estimates of 800 kbit/s while 2.4 Mbit/s goes out: the first 0.8 s are
    # not enough, at 1 s it moves, straight to the highest rung under 800k.
    changes = feed(ladder, 800_000, 2_400_000, start_s=100.0, seconds=3.0)
    assert changes == [(101.0, max(r for r in ladder.rungs if r <= 800_000))]


def test_one_estimate_above_what_is_sent_restarts_the_wait():
    ladder = BitrateLadder(2_500_000)
    assert feed(ladder, 800_000, 2_400_000, start_s=0.0, seconds=0.8) == []
    assert ladder.observe(2_600_000, 2_400_000, 0.9) is None
    assert feed(ladder, 800_000, 2_400_000, start_s=1.0, seconds=0.8) == []
    assert ladder.current_bps == 2_500_000


def test_an_encoder_sending_less_than_it_may_is_not_taken_for_congestion():
    ladder = BitrateLadder(2_500_000)
    # A still scene: 400 kbit/s sent, estimates at 1.5 times that (all an
    # estimator can vouch for), far under the configured 2.5 Mbit/s.
    assert feed(ladder, 600_000, 400_000, start_s=0.0, seconds=30.0) == []


def test_a_step_down_never_goes_below_the_floor_and_stops_there():
    ladder = BitrateLadder(2_500_000, min_bps=300_000)
    changes = feed(ladder, 50_000, 2_400_000, start_s=0.0, seconds=10.0)
    assert changes == [(1.0, 300_000)]


def test_steps_up_one_rung_at_a_time_after_ten_seconds_of_room():
    ladder = BitrateLadder(2_500_000)
    feed(ladder, 500_000, 2_400_000, start_s=0.0, seconds=1.0)
    low = ladder.current_bps
    up_one = ladder.rungs[ladder.rungs.index(low) - 1]
    # The link recovers: estimates at the rung above. Nothing for 10 s, then
    # one rung; the next only after 10 s more.
    changes = feed(ladder, up_one * 2, low, start_s=1.0, seconds=25.0)
    assert [bitrate for _, bitrate in changes] == [up_one, ladder.rungs[ladder.rungs.index(up_one) - 1]]
    assert changes[0][0] >= 11.0 and changes[1][0] - changes[0][0] >= 10.0
