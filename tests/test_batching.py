import threading
import time

import numpy as np

from autotimm_stream.batching import Batcher
from autotimm_stream.config import BatchPolicy
from autotimm_stream.frame import Frame
from autotimm_stream.ringbuffer import RingBuffer


def make(n_sources: int, capacity: int = 64):
    bell = threading.Condition()
    return [RingBuffer(capacity, "block", bell) for _ in range(n_sources)], bell


def fill(buf: RingBuffer, source: str, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        buf.put(Frame(source, i, None, 0, np.zeros((2, 2, 3), np.uint8)), threading.Event())


def test_full_batch_leaves_at_once():
    bufs, bell = make(1)
    fill(bufs[0], "a", 20)
    b = Batcher(bufs, bell, BatchPolicy(max_batch=8, max_wait_ms=10_000))
    t0 = time.monotonic()
    batch = b.next_batch(threading.Event())
    assert [f.index for f in batch] == list(range(8))
    assert time.monotonic() - t0 < 1


def test_partial_batch_leaves_after_max_wait_from_first_frame():
    bufs, bell = make(1)
    fill(bufs[0], "a", 3)
    b = Batcher(bufs, bell, BatchPolicy(max_batch=8, max_wait_ms=150))
    t0 = time.monotonic()
    batch = b.next_batch(threading.Event())
    waited = time.monotonic() - t0
    assert len(batch) == 3
    assert 0.08 < waited < 1.0


def test_frame_that_already_waited_does_not_wait_again():
    bufs, bell = make(1)
    fill(bufs[0], "a", 2)
    time.sleep(0.3)  # longer than max_wait: the model was busy
    b = Batcher(bufs, bell, BatchPolicy(max_batch=8, max_wait_ms=250))
    t0 = time.monotonic()
    assert len(b.next_batch(threading.Event())) == 2
    assert time.monotonic() - t0 < 0.2  # a fresh wait would take 0.25 s


def test_the_deadline_counts_from_the_oldest_frame_not_the_first_source_visited():
    bufs, bell = make(2)
    fill(bufs[1], "b", 1)  # the older frame, in the source visited second
    time.sleep(0.15)
    fill(bufs[0], "a", 1)
    b = Batcher(bufs, bell, BatchPolicy(max_batch=8, max_wait_ms=250))
    batch = b.next_batch(threading.Event())
    assert [f.source_id for f in batch] == ["a", "b"]
    waited_ms = (time.monotonic_ns() - min(f.enqueued_ns for f in batch)) / 1e6
    assert waited_ms < 250 + 60  # counting from "a" it would be ~400 ms


def test_round_robin_and_per_source_cap():
    bufs, bell = make(3)
    fill(bufs[0], "a", 10)
    fill(bufs[1], "b", 10)
    fill(bufs[2], "c", 1)
    fill(bufs[2], "c", 3, start=1)
    b = Batcher(bufs, bell, BatchPolicy(max_batch=6, max_wait_ms=0, max_frames_per_source=2))
    batch = b.next_batch(threading.Event())
    ids = [f.source_id for f in batch]
    assert ids.count("a") == 2 and ids.count("b") == 2 and ids.count("c") == 2
    assert [f.index for f in batch if f.source_id == "a"] == [0, 1]  # order kept within a source


def test_the_share_does_not_leave_the_batch_short_when_others_have_nothing():
    bufs, bell = make(3)
    fill(bufs[0], "a", 10)
    fill(bufs[1], "b", 10)
    fill(bufs[2], "c", 1)
    b = Batcher(bufs, bell, BatchPolicy(max_batch=7, max_wait_ms=0, max_frames_per_source=2))
    ids = [f.source_id for f in b.next_batch(threading.Event())]
    # c's one frame is in; its unused share goes to the busy sources instead of being left empty
    assert len(ids) == 7 and ids.count("c") == 1 and ids.count("a") + ids.count("b") == 6
    assert abs(ids.count("a") - ids.count("b")) <= 1  # still interleaved
    one, bell = make(1)
    fill(one[0], "solo", 10)
    alone = Batcher(one, bell, BatchPolicy(max_batch=8, max_wait_ms=0, max_frames_per_source=2))
    assert len(alone.next_batch(threading.Event())) == 8


def test_end_of_all_sources_returns_none():
    bufs, bell = make(2)
    fill(bufs[0], "a", 1)
    for buf in bufs:
        buf.close()
    b = Batcher(bufs, bell, BatchPolicy(max_batch=4, max_wait_ms=10_000))
    assert len(b.next_batch(threading.Event())) == 1  # closed sources do not hold a batch back
    assert b.next_batch(threading.Event()) is None


def test_silent_source_does_not_delay_a_busy_one():
    bufs, bell = make(2)
    fill(bufs[0], "a", 4)  # bufs[1] stays open and silent
    b = Batcher(bufs, bell, BatchPolicy(max_batch=4, max_wait_ms=5_000))
    t0 = time.monotonic()
    assert len(b.next_batch(threading.Event())) == 4
    assert time.monotonic() - t0 < 0.5


def test_idle_returns_empty_list_quickly():
    bufs, bell = make(1)
    b = Batcher(bufs, bell, BatchPolicy())
    t0 = time.monotonic()
    assert b.next_batch(threading.Event()) == []
    assert time.monotonic() - t0 < 1


def test_top_up_takes_what_arrived_up_to_the_room_left():
    bufs, bell = make(2)
    fill(bufs[0], "a", 5)
    fill(bufs[1], "b", 1)
    b = Batcher(bufs, bell, BatchPolicy(max_batch=8, max_wait_ms=10))
    extra = b.top_up(limit=3, timeout=1.0)
    assert [(f.source_id, f.index) for f in extra] == [("a", 0), ("b", 0), ("a", 1)]  # interleaved, 3 at most
    assert len(bufs[0]) == 3


def test_top_up_waits_for_a_frame_then_gives_up():
    bufs, bell = make(1)
    b = Batcher(bufs, bell, BatchPolicy(max_batch=8))
    threading.Timer(0.05, fill, (bufs[0], "a", 1)).start()
    t0 = time.monotonic()
    assert [f.index for f in b.top_up(limit=8, timeout=5.0)] == [0]  # woken by the frame, not the timeout
    assert time.monotonic() - t0 < 2.5
    assert b.top_up(limit=8, timeout=0.05) == []


def test_top_up_leaves_sources_with_a_staleness_budget_alone():
    bell = threading.Condition()
    budget = RingBuffer(8, "latest", bell, max_staleness_ms=500)
    plain = RingBuffer(8, "latest", bell)
    fill(budget, "s", 2)
    b = Batcher([budget], bell, BatchPolicy(max_batch=8))
    assert not b.can_top_up() and b.top_up(limit=8, timeout=0.01) == [] and len(budget) == 2
    fill(plain, "p", 2)
    b.set_buffers([budget, plain])
    assert b.can_top_up()
    assert [f.source_id for f in b.top_up(limit=8, timeout=0.01)] == ["p", "p"]


def test_a_short_batch_lingers_past_the_deadline_while_the_model_has_work():
    bufs, bell = make(1)
    fill(bufs[0], "a", 3)
    b = Batcher(bufs, bell, BatchPolicy(max_batch=8, max_wait_ms=10))
    busy = threading.Event()
    busy.set()
    threading.Timer(0.2, fill, (bufs[0], "a", 5, 3)).start()  # the decoder catches up later
    batch = b.next_batch(threading.Event(), linger=busy.is_set)
    assert [f.index for f in batch] == list(range(8))  # full, not the 3 there at the deadline
    fill(bufs[0], "a", 2, 8)
    threading.Timer(0.2, busy.clear).start()  # the model runs out of work: the short batch goes
    t0 = time.monotonic()
    batch = b.next_batch(threading.Event(), linger=busy.is_set)
    assert [f.index for f in batch] == [8, 9] and time.monotonic() - t0 < 2.0


def test_top_up_keeps_to_the_share_of_frames_already_in_the_batch():
    bufs, bell = make(2)
    fill(bufs[0], "a", 3)
    fill(bufs[1], "b", 1)
    b = Batcher(bufs, bell, BatchPolicy(max_batch=8, max_frames_per_source=1))
    # 'a' already has its one frame in the batch: 'b' goes first, then 'a' fills what is left
    extra = b.top_up(limit=3, timeout=0.01, held={id(bufs[0]): 1})
    assert [(f.source_id, f.index) for f in extra] == [("b", 0), ("a", 0), ("a", 1)]


def _paced(buf: RingBuffer, source: str, gap_s: float, n: int) -> None:
    """``n`` frames ``gap_s`` apart, taken at once (an earlier batch): the buffer learns the pace."""
    for i in range(n):
        if i:
            time.sleep(gap_s)
        fill(buf, source, 1, i)
        buf.pop(1)


def test_a_batch_does_not_wait_for_a_frame_that_cannot_come_before_its_deadline():
    bufs, bell = make(1)
    _paced(bufs[0], "a", 1.0, 2)  # 1 fps
    fill(bufs[0], "a", 1, 2)  # at once: the pace moves 20 % of the way to this ~0 s gap, to ~0.8 s
    b = Batcher(bufs, bell, BatchPolicy(max_batch=8, max_wait_ms=500))
    t0 = time.monotonic()
    assert [f.index for f in b.next_batch(threading.Event())] == [2]
    assert time.monotonic() - t0 < 0.4  # the next frame is due ~0.8 s after this one: no 0.5 s wait


def test_a_batch_still_waits_for_a_frame_due_before_its_deadline():
    bufs, bell = make(2)
    _paced(bufs[0], "a", 1.0, 2)  # a: a frame every 1 s
    _paced(bufs[1], "b", 0.2, 2)  # b: every 0.2 s, the next one due 0.2 s from now
    fill(bufs[0], "a", 1, 2)
    threading.Timer(0.15, fill, (bufs[1], "b", 1, 2)).start()
    b = Batcher(bufs, bell, BatchPolicy(max_batch=8, max_wait_ms=800))
    batch = b.next_batch(threading.Event())
    assert sorted((f.source_id, f.index) for f in batch) == [("a", 2), ("b", 2)]
