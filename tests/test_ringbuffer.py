import threading
import time

import numpy as np
import pytest

from autotimm_stream.frame import Frame
from autotimm_stream.ringbuffer import RingBuffer


def frame(i: int, source: str = "s") -> Frame:
    return Frame(source, i, i / 25, 0, np.zeros((2, 2, 3), np.uint8))


def test_block_policy_never_loses_a_frame():
    buf = RingBuffer(3, "block")
    stop = threading.Event()
    got: list[int] = []

    def consume():
        while len(got) < 50:
            got.extend(f.index for f in buf.pop(2))
            time.sleep(0.001)

    t = threading.Thread(target=consume)
    t.start()
    for i in range(50):
        assert buf.put(frame(i), stop, timeout=5)
    t.join(5)
    assert got == list(range(50))
    assert not buf.drops


def test_block_put_waits_then_gives_up_on_timeout_and_on_stop():
    buf = RingBuffer(1, "block")
    stop = threading.Event()
    assert buf.put(frame(0), stop)
    t0 = time.monotonic()
    assert not buf.put(frame(1), stop, timeout=0.2)
    assert 0.15 < time.monotonic() - t0 < 2
    threading.Timer(0.1, stop.set).start()
    assert not buf.put(frame(2), stop)  # returns once stop is set, not forever
    assert [f.index for f in buf.pop(5)] == [0]


def test_latest_policy_drops_oldest_and_counts():
    buf = RingBuffer(3, "latest")
    stop = threading.Event()
    for i in range(10):
        assert buf.put(frame(i), stop)
    assert [f.index for f in buf.pop(10)] == [7, 8, 9]
    assert buf.drops["buffer_full"] == 7
    assert buf.frames_in == 10


def test_close_wakes_producer_and_marks_exhausted():
    buf = RingBuffer(1, "block")
    stop = threading.Event()
    buf.put(frame(0), stop)
    threading.Timer(0.1, buf.close).start()
    assert not buf.put(frame(1), stop)
    assert buf.closed and not buf.exhausted
    buf.pop(1)
    assert buf.exhausted


def test_put_rings_the_shared_bell():
    bell = threading.Condition()
    a, b = RingBuffer(2, "block", bell), RingBuffer(2, "block", bell)
    woke = threading.Event()

    def waiter():
        with bell:
            if bell.wait(2):
                woke.set()

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.05)
    b.put(frame(0), threading.Event())
    t.join(2)
    assert woke.is_set() and len(a) == 0 and len(b) == 1


@pytest.mark.parametrize("capacity, policy, error", [(0, "block", ValueError), (1, "newest", ValueError)])
def test_bad_arguments(capacity, policy, error):
    with pytest.raises(error):
        RingBuffer(capacity, policy)


def test_frame_rejects_bad_images():
    with pytest.raises(ValueError, match=r"uint8 RGB array of shape \[H, W, 3\], got ndarray float32"):
        Frame("s", 0, 0.0, 0, np.zeros((2, 2, 3), np.float32))
    with pytest.raises(ValueError, match="got ndarray uint8 \\(2, 2\\)"):
        Frame("s", 0, 0.0, 0, np.zeros((2, 2), np.uint8))


@pytest.fixture
def now(monkeypatch) -> list[int]:
    """The ring buffers' clock, in ns: ``now[0]``, moved by hand."""
    import autotimm_stream.ringbuffer as rb

    clock = [1_000_000_000]
    monkeypatch.setattr(rb, "_now_ns", lambda: clock[0])
    return clock


def test_due_by_follows_the_producers_pace(now):
    buf = RingBuffer(4, "latest")
    stop = threading.Event()
    buf.put(frame(0), stop)
    buf.pop(1)
    assert buf.due_by(now[0] + 1)  # one frame: pace unknown, a frame may come any time
    for i in range(1, 4):
        now[0] += 40_000_000  # 25 fps
        buf.put(frame(i), stop)
        buf.pop(1)
    last = now[0]
    assert not buf.due_by(last + 39_000_000)
    assert buf.due_by(last + 40_000_000)
    now[0] += 100_000_000  # the next frame is late: still due, it may come any moment
    assert buf.due_by(now[0])
    buf.put(frame(4), stop)  # a waiting frame is always "due"
    assert buf.due_by(0)
    buf.pop(1)
    # frame 4 came 140 ms after frame 3: counted as 2 x 40 ms, the pace is now 48 ms; a 10-s outage
    # then counts as 2 x 48 ms: 57.6 ms, not the ~2 s a plain running mean would give
    now[0] += 10_000_000_000
    buf.put(frame(5), stop)
    buf.pop(1)
    assert buf.due_by(now[0] + 58_000_000) and not buf.due_by(now[0] + 57_000_000)
    for i in range(6, 40):  # the camera now sends 5 fps: the pace follows within a few frames
        now[0] += 200_000_000
        buf.put(frame(i), stop)
        buf.pop(1)
    assert buf.due_by(now[0] + 200_000_000) and not buf.due_by(now[0] + 190_000_000)
    buf.close()
    assert not buf.due_by(now[0] + 10**12)


def test_a_producer_held_back_by_a_full_buffer_does_not_set_the_pace(now):
    buf = RingBuffer(1, "block")
    stop = threading.Event()
    buf.put(frame(0), stop)
    buf.pop(1)
    now[0] += 2_000_000
    buf.put(frame(1), stop)  # pace: 2 ms
    now[0] += 500_000_000  # the next put finds the buffer full and waits for the consumer
    threading.Timer(0.05, buf.pop, (1,)).start()
    assert buf.put(frame(2), stop, timeout=5)
    buf.pop(1)
    assert buf.due_by(now[0] + 2_000_000) and not buf.due_by(now[0] + 1_000_000)  # still 2 ms
