"""The README's engine examples run as written."""

from conftest import run_readme


def test_engine_example_runs(tmp_path, monkeypatch):
    namespace = run_readme("engine", tmp_path, monkeypatch)
    assert namespace["result"].images.shape == (8, 3, 256, 256)
    assert len(namespace["anomalies"]) >= 1
