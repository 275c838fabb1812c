import math

import pytest

from erase.stats import Rate, wilson_interval


def test_wilson_matches_closed_form_and_known_values():
    # 0 of 32: the upper bound is z^2 / (n + z^2), the textbook "rule of three"-like bound for Wilson
    lo, hi = wilson_interval(0, 32)
    z2 = 1.959963984540054**2
    assert lo == 0.0 and math.isclose(hi, z2 / (32 + z2), rel_tol=1e-12)
    # 5 of 10: symmetric about 0.5, and the standard table value (0.2366, 0.7634)
    lo, hi = wilson_interval(5, 10)
    assert math.isclose(lo + hi, 1.0) and abs(lo - 0.2366) < 1e-4 and abs(hi - 0.7634) < 1e-4


def test_interval_shrinks_with_n_and_contains_rate():
    widths = []
    for n in (8, 32, 128, 512):
        k = n // 4
        lo, hi = wilson_interval(k, n)
        assert lo <= k / n <= hi
        widths.append(hi - lo)
    assert widths == sorted(widths, reverse=True)


def test_rate_record_and_comparison():
    r = Rate(1, 32)
    rec = r.as_record()
    assert rec["n"] == 32 and rec["k"] == 1 and rec["ci95"][0] < rec["rate"] < rec["ci95"][1]
    assert "n=32" in str(r)
    assert not Rate(1, 32).differs_from(Rate(3, 32))  # inside each other's intervals: not a result
    assert Rate(0, 64).differs_from(Rate(40, 64))
    with pytest.raises(ValueError):
        wilson_interval(5, 3)
