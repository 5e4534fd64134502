"""The app's predictors: micro-batching of concurrent requests, input checks, lazy loading."""

import threading
import time

import numpy as np
import pytest

from demos.trajectory.service import TrajectoryService
from lstmkit.service import InputError, Lazy, MicroBatcher


def test_micro_batcher_runs_concurrent_requests_together_and_hands_back_each_share():
    calls = []

    def run(items, key):
        calls.append((key, list(items)))
        time.sleep(0.05)  # while this batch runs, the others queue up
        return [f"{key}:{x}" for x in items]

    batcher = MicroBatcher(run, max_items=100)
    results = {}

    def request(i):
        results[i] = batcher.submit([i, i + 100], key="k")

    threads = [threading.Thread(target=request, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results[i] == [f"k:{i}", f"k:{i + 100}"] for i in range(12))
    assert len(calls) < 12  # requests were batched
    assert max(len(items) for _, items in calls) >= 4


def test_micro_batcher_groups_by_key_and_reports_errors_to_their_callers():
    def run(items, key):
        if key == "bad":
            raise ValueError("boom")
        return [x * 2 for x in items]

    batcher = MicroBatcher(run)
    assert batcher.submit([1, 2], key="good") == [2, 4]
    with pytest.raises(ValueError, match="boom"):
        batcher.submit([1], key="bad")
    assert batcher.submit([], key="good") == []
    assert batcher.submit([5], key="good") == [10]  # the worker survived the error


def test_lazy_builds_once_across_threads():
    built = []
    lazy = Lazy(lambda: built.append(1) or object())
    threads = [threading.Thread(target=lazy.get) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(built) == 1 and lazy.loaded


@pytest.mark.parametrize("points", [None, "", "[]", "[[1, 2]]", "[[1, 2], [3]]", "[[NaN, 1], [2, 3]]",
                                    "[[1e7, 0], [0, 0]]", "nope", '{"points": [[1, 2]]}', [[1, 2], [float("inf"), 0]],
                                    "[" + ",".join(["[1, 2]"] * 10_001) + "]"])
def test_stroke_checks(points):
    with pytest.raises(InputError):
        TrajectoryService.parse_points(points)


def test_stroke_formats_accepted():
    for points in ("[[1, 2], [3, 4]]", [[1, 2], [3, 4]], '{"points": [[1, 2], [3, 4]]}', np.ones((5, 2))):
        assert TrajectoryService.parse_points(points).shape[1] == 2
