"""The README's engine examples run as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_engine_example_runs(tmp_path, monkeypatch):
    section = README.read_text().split("<!-- section:engine -->")[1].split("<!-- /section:engine -->")[0]
    # every python block of the section, in order, in one namespace (later blocks use earlier names)
    code = "\n".join(re.findall(r"```python\n(.*?)```", section, flags=re.S))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102
    assert namespace["result"].images.shape == (8, 3, 256, 256)
    assert len(namespace["anomalies"]) >= 1
