"""Every family x method x retention keeps exactly the tokens recorded before the redesign (tests/golden)."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "golden"))
import record_kept_sets as golden  # noqa: E402


def test_kept_sets_equal_the_recorded_ones(tmp_path):
    expected = json.loads(golden.GOLDEN.read_text())
    got = golden.record(tmp_path)
    assert sorted(got) == sorted(expected)
    changed = [key for key in expected if got[key] != expected[key]]
    assert not changed, f"kept sets changed for {changed}"
    # the record is not trivial: at 0.5 every method drops something, at 1.0 nothing is dropped
    for key, kept in expected.items():
        half = key.replace("|1.0", "|0.5")
        if key.endswith("|1.0"):
            assert all(len(a) > len(b) for a, b in zip(kept, expected[half])), key
