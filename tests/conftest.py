"""Every test process (and the subprocesses it starts) uses one CurveZMQ keys folder of its own, never the user's."""

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def private_keys_dir(tmp_path_factory):
    os.environ["EXPO_ROBOT_KEYS_DIR"] = str(tmp_path_factory.mktemp("expo-keys") / "keys")
    yield
