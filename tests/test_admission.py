"""Admission control's expected-wait limit: its estimate, on a clock the test moves by hand.

The count and audio limits are exercised through the real pipeline and server
(test_pipeline.py, test_server.py); here the arithmetic, where real time would make it fuzzy.
"""

from __future__ import annotations

import pytest

from app.core.admission import Admission
from app.core.errors import Overloaded


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def admission(max_wait_s: float = 0.5, max_items: int = 100) -> tuple[Admission, Clock]:
    clock = Clock()
    return Admission(max_items, 3600.0, "test", max_wait_s=max_wait_s, clock=clock), clock


def answer_after(adm: Admission, clock: Clock, seconds: float) -> None:
    """One request, alone, answered after `seconds`."""
    with adm.admit():
        clock.now += seconds


def answers_in_a_queue(adm: Admission, clock: Clock, n: int, every_s: float) -> None:
    """n + 1 requests in flight; n of them answered one every `every_s`, each with others still waiting; then the last."""
    tickets = [adm.admit() for _ in range(n + 1)]
    for t in tickets:
        t.__enter__()
    for t in tickets[:-1]:
        clock.now += every_s
        t.__exit__(None, None, None)
    tickets[-1].__exit__(None, None, None)


def test_the_pace_is_the_time_between_answers_while_others_wait():
    adm, clock = admission(max_wait_s=0.0)  # measuring only
    assert adm.answer_interval_s is None
    answers_in_a_queue(adm, clock, 5, 0.2)
    assert adm.answer_interval_s == pytest.approx(0.2)
    clock.now += 5  # idle seconds are not slow answers
    answers_in_a_queue(adm, clock, 5, 0.2)
    assert adm.answer_interval_s == pytest.approx(0.2)


def test_a_lone_request_does_not_set_the_pace():
    """A lone answer's interval is its whole latency: a batching server answers 16 in little more."""
    adm, clock = admission(max_wait_s=0.5)
    for _ in range(10):  # warm-up requests, one at a time, 0.3 s each
        answer_after(adm, clock, 0.3)
    assert adm.answer_interval_s is None
    held = [adm.admit() for _ in range(8)]
    for t in held:
        t.__enter__()  # 8 at once: not refused on 7 x 0.3 = 2.1 s of imagined wait
    for t in held:
        t.__exit__(None, None, None)


def a_batch_ends_at_once(adm: Admission, clock: Clock, size: int, seconds: float) -> None:
    tickets = [adm.admit() for _ in range(size)]
    for t in tickets:
        t.__enter__()
    clock.now += seconds
    for t in tickets:
        t.__exit__(None, None, None)


def test_a_batch_that_ends_at_once_averages_to_its_time_per_request():
    adm, clock = admission(max_wait_s=0.0)  # measuring only
    for _ in range(10):  # batches of 16 requests, each batch 0.32 s: 20 ms per answer
        a_batch_ends_at_once(adm, clock, 16, 0.32)
    # 15 answers with company per batch (the last had none): 0.32 s / 15.
    assert adm.answer_interval_s == pytest.approx(0.32 / 15)


def test_one_batch_is_enough_for_a_pace():
    adm, clock = admission(max_wait_s=0.0)
    a_batch_ends_at_once(adm, clock, 16, 0.32)
    # One interval of 0.32 s and 14 of none (the last answer had no company): no slower start.
    assert adm.answer_interval_s == pytest.approx(0.32 / 15)


def test_refuses_when_the_requests_ahead_would_take_longer_than_the_limit():
    adm, clock = admission(max_wait_s=0.5)
    answers_in_a_queue(adm, clock, 4, 0.2)  # 0.2 s per answer
    held = [adm.admit() for _ in range(3)]
    for t in held:
        t.__enter__()  # the third had 2 x 0.2 = 0.4 s ahead of it: admitted
    with pytest.raises(Overloaded, match=r"3 requests in progress would take about 0.60 s to answer \(limit 0.5 s\)"):
        adm.admit().__enter__()
    assert adm.items == 3  # the refusal took no slot
    for t in held:
        t.__exit__(None, None, None)
    assert adm.items == 0


def test_a_stale_pace_is_forgotten():
    """A slow pace from a flood long over must not keep refusing; nor linger in the next mean."""
    adm, clock = admission(max_wait_s=0.5)
    answers_in_a_queue(adm, clock, 4, 1.0)  # a flood: 1 s per answer
    assert adm.answer_interval_s == pytest.approx(1.0)
    clock.now += 11
    assert adm.answer_interval_s is None
    held = [adm.admit() for _ in range(5)]
    for t in held:
        t.__enter__()  # admitted: 5 x 1 s of wait is no longer believed
    for t in held:
        clock.now += 0.01
        t.__exit__(None, None, None)
    assert adm.answer_interval_s == pytest.approx(0.01)  # the flood's 1 s is not in the mean
    assert adm.answer_interval_s == pytest.approx(0.01)


def test_a_lone_answer_faster_than_the_pace_lowers_it():
    """After a flood, a pace slower than the limit admits only lone requests: their answers must bring it down."""
    adm, clock = admission(max_wait_s=0.3)
    answers_in_a_queue(adm, clock, 4, 0.4)  # the flood: 0.4 s per answer
    first = adm.admit()
    first.__enter__()
    with pytest.raises(Overloaded):  # 1 x 0.4 s ahead: only lone requests get in
        adm.admit().__enter__()
    clock.now += 0.06
    first.__exit__(None, None, None)  # answered alone in 60 ms
    assert adm.answer_interval_s == pytest.approx(0.06)
    held = [adm.admit() for _ in range(5)]
    for t in held:
        t.__enter__()  # 4 x 0.06 s ahead of the fifth: admitted
    for t in held:
        clock.now += 0.05
        t.__exit__(None, None, None)
    pace = adm.answer_interval_s
    answer_after(adm, clock, 0.5)  # a lone answer slower than the pace does not raise it
    assert adm.answer_interval_s == pytest.approx(pace)


def test_a_request_with_nothing_ahead_is_always_admitted_however_slow_the_last_ones_were():
    adm, clock = admission(max_wait_s=0.5)
    answers_in_a_queue(adm, clock, 2, 30.0)  # 30 s answers (long recordings, say)
    assert adm.answer_interval_s == pytest.approx(30.0)
    with adm.admit():
        pass


def test_failed_requests_do_not_make_the_server_look_fast():
    adm, clock = admission()
    keep = [adm.admit() for _ in range(2)]
    for t in keep:
        t.__enter__()
    for _ in range(50):  # bad input, refused in a millisecond each
        with pytest.raises(ValueError), adm.admit():
            clock.now += 0.001
            raise ValueError("bad audio")
    clock.now += 0.15
    keep[0].__exit__(None, None, None)
    keep[1].__exit__(None, None, None)
    # Their time went to the next answer: (0.05 + 0.15) s, not 50 answers of 1 ms.
    assert adm.answer_interval_s == pytest.approx(0.2)


def test_zero_means_no_wait_limit():
    adm, clock = admission(max_wait_s=0.0)
    answers_in_a_queue(adm, clock, 2, 10.0)
    held = [adm.admit() for _ in range(5)]
    for t in held:
        t.__enter__()
    assert adm.expected_wait_s() == pytest.approx(50.0)
    with adm.admit():
        pass
