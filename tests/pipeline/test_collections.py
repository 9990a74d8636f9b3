"""The garbage collector's setting during runs (`fewer_collections`)."""

from __future__ import annotations

import gc

from batch.cli.collector import fewer_collections


def test_a_run_collects_less_often_and_the_setting_comes_back_after_overlapping_runs() -> None:
    before = gc.get_threshold()
    first, second = fewer_collections(young=60_000), fewer_collections(young=60_000)

    first.__enter__()
    assert gc.get_threshold() == (60_000, *before[1:])
    second.__enter__()
    first.__exit__(None, None, None)  # the first run ends while the second still runs
    assert gc.get_threshold() == (60_000, *before[1:])
    second.__exit__(None, None, None)

    assert gc.get_threshold() == before


def test_a_process_that_turned_automatic_collection_off_keeps_it_off() -> None:
    before = gc.get_threshold()
    gc.set_threshold(0)
    try:
        with fewer_collections(young=60_000):
            assert gc.get_threshold()[0] == 0
        assert gc.get_threshold()[0] == 0
    finally:
        gc.set_threshold(*before)
