"""`expo-robot bench transport` in quick mode: it runs against a real echo process and reports every figure."""

import pytest

from expo_robot.bench.transport import run


@pytest.mark.timeout(120)
def test_transport_bench_quick_reports_both_messages_and_the_ratios():
    doc = run(None, ["quick"])
    s = doc["summary"]
    for key in ("overhead_ratio", "frame_state_p99_ms", "state_p99_ms", "bare_frame_state_p99_ms"):
        assert s[key] > 0
    assert s["overhead_ratio"] == max(s["overhead_ratio_state"], s["overhead_ratio_frame_state"])
    for name in ("state/bare", "state/ours", "state/auth", "frame/bare", "frame/ours", "frame/auth"):
        r = doc["results"][name]
        assert r["n"] == 120 and 0 < r["p50_ms"] <= r["p99_ms"]
    # a 921,600-byte frame round trip costs more than a 100-byte state one, in both paths
    assert doc["results"]["frame/bare"]["p50_ms"] > doc["results"]["state/bare"]["p50_ms"]
    # authentication is measured against both, per message
    for base in ("bare", "ours"):
        assert s[f"auth_vs_{base}_p99_state"] == pytest.approx(
            doc["results"]["state/auth"]["p99_ms"] / doc["results"][f"state/{base}"]["p99_ms"]
        )
        assert s[f"auth_vs_{base}_p50_frame_state"] > 0
