"""When the actor's chunk is due: the next tick of the driver's grid after what the driver last said."""

import pytest

from expo_robot.runtime.actor import next_tick


@pytest.mark.parametrize(
    ("driver_now", "due"),
    [
        (
            100.009,
            100.02,
        ),  # the observation was published 9 ms into its tick (a slow step): the very next tick
        (100.0, 100.02),  # published on the tick
        (100.025, 100.04),  # the driver is past the next tick already: the one after it
        (100.045, 100.06),  # it republished while idle: the first tick after that, on the same grid
    ],
)
def test_next_tick_is_on_the_grid_and_after_the_driver(driver_now, due):
    assert next_tick(100.0, driver_now, 0.02) == pytest.approx(due)
