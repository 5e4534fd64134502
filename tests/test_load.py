"""The load test against a running app: good and hostile requests from 32 clients at once."""

import json

import pytest

from tests.conftest import shipped

pytestmark = pytest.mark.slow


def test_thirty_two_clients_mixing_good_and_hostile_requests(tmp_path):
    from benchmarks import load_test

    for name in ("captioner", "mnist", "trajectory", "nextframe"):
        shipped(f"{name}.safetensors")
    out = tmp_path / "load.json"
    code = load_test.main(["--clients", "32", "--requests", "2", "--json-out", str(out)])
    report = json.loads(out.read_text())
    assert report["checks"] and code == 0, report["checks"]
    assert report["load"]["good_failed"] == [] and report["load"]["bad_without_error"] == []
    assert report["flood"]["busy"] > 0 and "full" in report["flood"]["busy_message"].lower()
