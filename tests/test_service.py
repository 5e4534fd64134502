"""The app's predictors: micro-batching of concurrent requests, input checks, lazy loading."""

import threading
import time

import numpy as np
import pytest

from demos.trajectory.service import TrajectoryService
from lstmkit.service import InputError, Lazy, MicroBatcher, on_model_thread


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


def test_every_model_runs_on_one_thread_whoever_calls_and_its_errors_reach_the_caller():
    """One OpenMP team in the process: a second thread running torch's parallel operations
    makes every idle OpenMP worker spin briefly, and a caption took 1.5x as long."""
    seen = []

    def where():
        seen.append(threading.get_ident())
        return on_model_thread(threading.get_ident)  # a call from the model thread runs in place

    threads = [threading.Thread(target=lambda: seen.append(on_model_thread(where))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 8 and len(set(seen)) == 1 and seen[0] != threading.get_ident()

    def fails():
        raise InputError("not a photo")

    with pytest.raises(InputError, match="not a photo"):
        on_model_thread(fails)
    assert on_model_thread(lambda x, y=0: x + y, 2, y=3) == 5  # the thread survived the error


def test_the_captioner_loads_and_captions_on_the_model_thread_and_photos_are_prepared_by_callers():
    from captioner.service import CaptionService
    from tests.conftest import ROOT, shipped

    where = {"load": [], "run": [], "prepare": []}

    class Recorded(CaptionService):
        def _load(self, path):
            where["load"].append(threading.get_ident())
            model = super()._load(path)
            prepare = model.prepare
            model.prepare = lambda image: where["prepare"].append(threading.get_ident()) or prepare(image)
            return model

        def _caption_prepared(self, items, beam):
            where["run"].append(threading.get_ident())
            return super()._caption_prepared(items, beam)

    photo = str(sorted((ROOT / "webapp" / "examples").glob("*.jpg"))[0])
    for batching in (True, False):
        service = Recorded(shipped("captioner.safetensors"), batching=batching)
        answers = []
        threads = [threading.Thread(target=lambda: answers.append(service.caption_paths([photo])[0]))
                   for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        model_thread = on_model_thread(threading.get_ident)
        assert len(answers) == 3 and all(a["caption"] and "error" not in a for a in answers)
        assert set(where["load"]) == set(where["run"]) == {model_thread}, batching
        assert len(where["prepare"]) == 3 * (1 + (not batching)) and model_thread not in where["prepare"]


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
