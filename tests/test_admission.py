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
    with adm.admit():
        clock.now += seconds


def test_the_interval_between_answers_is_measured_only_while_busy():
    adm, clock = admission()
    answer_after(adm, clock, 0.2)
    assert adm.answer_interval_s == pytest.approx(0.2)
    clock.now += 60  # an idle minute is not a slow answer
    answer_after(adm, clock, 0.2)
    assert adm.answer_interval_s == pytest.approx(0.2)


def test_a_batch_that_ends_at_once_averages_to_its_time_per_request():
    adm, clock = admission(max_wait_s=0.0)  # measuring only
    for _ in range(10):  # batches of 16 requests, each batch 0.32 s: 20 ms per answer
        tickets = [adm.admit() for _ in range(16)]
        for t in tickets:
            t.__enter__()
        clock.now += 0.32
        for t in tickets:
            t.__exit__(None, None, None)
    assert adm.answer_interval_s == pytest.approx(0.02, rel=0.5)


def test_refuses_when_the_requests_ahead_would_take_longer_than_the_limit():
    adm, clock = admission(max_wait_s=0.5)
    answer_after(adm, clock, 0.2)  # 0.2 s per answer
    held = [adm.admit() for _ in range(3)]
    for t in held:
        t.__enter__()  # the third had 2 x 0.2 = 0.4 s ahead of it: admitted
    with pytest.raises(Overloaded, match=r"3 requests in progress would take about 0.60 s to answer \(limit 0.5 s\)"):
        adm.admit().__enter__()
    assert adm.items == 3  # the refusal took no slot
    for t in held:
        t.__exit__(None, None, None)
    assert adm.items == 0


def test_a_lone_request_is_always_admitted_however_slow_the_last_one_was():
    adm, clock = admission(max_wait_s=0.5)
    answer_after(adm, clock, 30.0)  # one 30 s answer (a long recording, say)
    with adm.admit():
        pass


def test_failed_requests_do_not_make_the_server_look_fast():
    adm, clock = admission()
    answer_after(adm, clock, 0.2)
    keep = adm.admit()
    keep.__enter__()
    for _ in range(50):  # bad input, refused in a millisecond each
        with pytest.raises(ValueError), adm.admit():
            clock.now += 0.001
            raise ValueError("bad audio")
    clock.now += 0.15
    keep.__exit__(None, None, None)
    # Their time went to the next answer: (0.05 + 0.15) s, not 50 answers of 1 ms.
    assert adm.answer_interval_s == pytest.approx(0.2)


def test_zero_means_no_wait_limit():
    adm, clock = admission(max_wait_s=0.0)
    answer_after(adm, clock, 10.0)
    held = [adm.admit() for _ in range(5)]
    for t in held:
        t.__enter__()
    assert adm.expected_wait_s() == pytest.approx(50.0)
    with adm.admit():
        pass
