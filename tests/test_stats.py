import numpy as np
import pytest

from autotimm_stream.stats import StageStats


@pytest.mark.parametrize(
    "records, expected",
    [
        # batches of one frame at 40 ms and of eight frames at 10 ms each: most frames took 10 ms
        ([(40.0, 1)] * 3 + [(10.0, 8)] * 3, {"count": 27, "mean": 13.333, "p50": 10.0, "p99": 40.0}),
        ([(5.0, 1), (7.0, 1), (9.0, 1)], {"count": 3, "mean": 7.0, "p50": 7.0}),
        ([], {"count": 0, "mean": 0.0, "p50": 0.0, "p95": 0.0, "p99": 0.0}),
    ],
)
def test_percentiles_weigh_each_frame_as_count_and_mean_do(records, expected):
    st = StageStats()
    for ms, n in records:
        st.add(ms, n)
    summary = st.summary().to_json()
    assert {k: summary[k] for k in expected} == expected
    if records:
        per_frame = np.repeat([ms for ms, _ in records], [n for _, n in records])
        assert summary["p95"] == round(float(np.percentile(per_frame, 95)), 3)
