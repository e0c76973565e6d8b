"""A policy process for the fault tests: connects, sends one long chunk, reports, then waits to be killed.

python tests/drivers/fault_client.py OBS_PORT CMD_PORT CHUNK_ID [silent]
Prints "sent" once its chunk is queued. `silent`: 0.3-0.4 s later, stop the heartbeats but keep the sockets open (a
hung policy, not a dead one) and print "silent T" with the monotonic time it went silent.
"""

import sys
import time

import numpy as np

from expo_robot.transport import RobotClient


def main() -> None:
    obs_port, cmd_port, chunk_id = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    silent = len(sys.argv) > 4 and sys.argv[4] == "silent"
    runtime = {"host": "127.0.0.1", "obs_port": obs_port, "cmd_port": cmd_port, "heartbeat_s": 0.5}
    robot = RobotClient(runtime)
    robot.connect(timeout_s=20)
    obs = robot.reset(wait_s=30)  # a new episode also leaves a safe state left over from the previous trial
    actions = np.tile(np.array([0.2, 0.0, 0.0, 1.0], np.float32), (200, 1))  # 20 s at 10 Hz
    robot.send_chunk(actions, t0=obs.t + 0.1, chunk_id=chunk_id)
    print("sent", flush=True)
    if silent:
        time.sleep(np.random.default_rng(chunk_id).uniform(0.3, 0.4))
        robot._hb.stopped.set()  # the heartbeat thread stops; sockets stay open, nothing more is sent
        print(f"silent {time.monotonic()}", flush=True)
    time.sleep(60)


if __name__ == "__main__":
    main()
