"""Trace reading, windowing, scaling, synthetic shapes and arrival generation."""

from __future__ import annotations

import gzip
import hashlib

import numpy as np
import pytest

from varipipe.errors import TraceError
from varipipe.loadgen.traces import (
    PACKAGED_TRACES,
    TRACE_DATA,
    Trace,
    arrival_times,
    bursty_trace,
    counts_per_second,
    locate_trace,
    ramp_trace,
    read_trace,
    sinusoid_trace,
    step_trace,
)


def test_reads_whitespace_text(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("1\n2 3\n\n4.5\n")
    assert read_trace(f).rates.tolist() == [1, 2, 3, 4.5]


def test_reads_gzip(tmp_path):
    f = tmp_path / "t.txt.gz"
    f.write_bytes(gzip.compress(b"5\n6\n7\n"))
    assert read_trace(f).rates.tolist() == [5, 6, 7]


def test_reads_csv_rps_column(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text("time,rps\n0,10\n1,12.5\n")
    assert read_trace(f).rates.tolist() == [10, 12.5]


def test_bad_token_names_file_and_line(tmp_path):
    f = tmp_path / "bad.txt"
    f.write_text("1\n2\nabc\n4\n")
    with pytest.raises(TraceError) as e:
        read_trace(f)
    assert e.value.line == 3 and "bad.txt:3" in str(e.value) and "'abc'" in str(e.value)


def test_negative_rate_names_line(tmp_path):
    f = tmp_path / "neg.txt"
    f.write_text("1\n-2\n")
    with pytest.raises(TraceError, match=r"neg.txt:2"):
        read_trace(f)


def test_csv_bad_cell_and_missing_column(tmp_path):
    f = tmp_path / "bad.csv"
    f.write_text("time,rps\n0,1\n1,x\n")
    with pytest.raises(TraceError, match=r"bad.csv:3: column 'rps'"):
        read_trace(f)
    g = tmp_path / "nocol.csv"
    g.write_text("time,rate\n0,1\n")
    with pytest.raises(TraceError, match=r"nocol.csv:1"):
        read_trace(g)


def test_empty_and_missing_file(tmp_path):
    f = tmp_path / "empty.txt"
    f.write_text("\n")
    with pytest.raises(TraceError, match="no rates"):
        read_trace(f)
    with pytest.raises(TraceError, match="cannot read.*packaged trace's name: twitter"):
        read_trace(tmp_path / "nope.txt")


# sha256 of /work/shared/traces/twitter-train.txt, the file the packaged one was made from
# (loadgen/trace_data/README.md): the packaged trace is the same data, byte for byte.
TWITTER_SHA256 = "338cb5645b4dd3bc2e427f00e5c90f58584ada8cb64a8d186cef58219cc2695b"


def test_packaged_twitter_trace_is_the_source_data_byte_for_byte():
    path = TRACE_DATA / PACKAGED_TRACES["twitter"]
    assert hashlib.sha256(gzip.decompress(path.read_bytes())).hexdigest() == TWITTER_SHA256
    assert (TRACE_DATA / "README.md").read_text().count(TWITTER_SHA256) == 1


def test_packaged_trace_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    t = read_trace("twitter")
    assert t.duration_s == 1_209_600  # 14 days (DESIGN §8)
    assert (np.median(t.rates), t.peak_rps) == (53, 388)
    assert t.rates[:5].tolist() == [52, 55, 48, 55, 57] and t.rates[-5:].tolist() == [0] * 5


def test_locate_trace_prefers_a_real_file_then_the_base_folder_then_a_packaged_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert locate_trace("twitter") == TRACE_DATA / "twitter-train.txt.gz"
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "mine.txt").write_text("1 2")
    assert locate_trace("mine.txt", tmp_path / "sub") == tmp_path / "sub" / "mine.txt"
    (tmp_path / "twitter").write_text("7")  # a file of that name wins over the packaged trace
    assert read_trace("twitter").rates.tolist() == [7]


def test_window_and_scale(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("\n".join(str(i) for i in range(10)))
    t = read_trace(f, start_s=2, duration_s=3, scale=2.0)
    assert t.rates.tolist() == [4, 6, 8]
    assert t.offset_s == 2 and t.scale == 2.0
    with pytest.raises(TraceError, match="does not fit"):
        read_trace(f, start_s=8, duration_s=5)
    with pytest.raises(TraceError, match="scale"):
        read_trace(f, scale=0)


def test_synthetic_shapes():
    assert step_trace([1, 5], 2).rates.tolist() == [1, 1, 5, 5]
    assert step_trace([1, 5, 2], [1, 3, 2]).rates.tolist() == [1, 5, 5, 5, 2, 2]
    with pytest.raises(TraceError, match="positive"):
        step_trace([1, 5], [2, 0])
    with pytest.raises(TraceError, match="one per level"):
        step_trace([1, 5], [2, 3, 4])
    assert ramp_trace(0, 10, 11).rates[5] == pytest.approx(5)
    s = sinusoid_trace(10, 20, 4, 100)
    assert s.rates.min() == 0 and s.rates.max() == pytest.approx(30)
    b = bursty_trace(5, 50, 1000, 100, 10, seed=1)
    assert set(np.unique(b.rates)) == {5, 50}
    assert np.array_equal(b.rates, bursty_trace(5, 50, 1000, 100, 10, seed=1).rates)


@pytest.mark.parametrize("process", ["poisson", "uniform", "step"])
def test_arrivals_sorted_within_window_and_seeded(process):
    t = Trace(np.array([10.0, 0.0, 30.0, 5.5]))
    a = arrival_times(t, process, seed=3)
    assert np.all(np.diff(a) >= 0) and a.min() >= 0 and a.max() < 4
    assert np.array_equal(a, arrival_times(t, process, seed=3))


def test_deterministic_counts_match_the_integral():
    t = Trace(np.array([0.5, 0.5, 2.25, 1.75]))
    c = counts_per_second(t, "uniform")
    assert c.sum() == 5 and c.tolist() == [0, 1, 2, 2]
    a = arrival_times(Trace(np.array([4.0])), "uniform")
    assert a.tolist() == [0, 0.25, 0.5, 0.75]


def test_poisson_counts_follow_rate_and_seed():
    t = Trace(np.full(2000, 20.0))
    a = arrival_times(t, "poisson", seed=1)
    assert abs(a.size / 2000 - 20) < 0.5
    assert not np.array_equal(a[:50], arrival_times(t, "poisson", seed=2)[:50])
    per_sec = np.bincount(a.astype(int), minlength=2000)
    assert np.array_equal(per_sec, counts_per_second(t, "poisson", seed=1))


def test_shape_tick_has_users_for_the_highest_rate_so_far_and_the_next_second_plus_a_spare():
    from varipipe.loadgen.traces import SPARE_USERS, shape_tick

    rates = np.array([1.0, 2.5, 0.0])
    assert shape_tick(rates, 0.5, 0.5) == (5 + SPARE_USERS, 5.0 + SPARE_USERS)  # the next second's 2.5 req/s
    assert shape_tick(rates, 1.2, 0.5) == (5 + SPARE_USERS, 5.0 + SPARE_USERS)
    assert shape_tick(rates, 2.0, 0.5)[0] == 5 + SPARE_USERS  # never fewer: a stopped user is a killed one
    assert shape_tick(np.array([0.9]), 0.0, 0.5)[0] == 2 + SPARE_USERS  # users carry the rate, never pace it
    assert shape_tick(rates, 3.0, 0.5) is None
