"""`python -m drivers.server` with a bug planted in its loop: executing a step after the first AFTER_STEPS raises
(a stand-in for any unexpected exception), so the last-resort guard can be tested on a real process.

python tests/drivers/crashing_driver.py AFTER_STEPS [overrides...]
"""

import sys

from drivers import server
from expo_robot.config import load_config


def main() -> int:
    after = int(sys.argv[1])
    execute = server.Driver._execute

    def failing(self, raw, chunk_id, intervention=False):
        if self.step >= after:
            raise ZeroDivisionError("planted fault")
        return execute(self, raw, chunk_id, intervention)

    server.Driver._execute = failing
    return server.main(load_config(sys.argv[2:]), [])


if __name__ == "__main__":
    sys.exit(main())
