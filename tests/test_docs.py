"""The documentation: every Python and shell snippet of the README and the site runs as written, each on its
own; snippets name only paths and options that exist; the site builds strictly with every public name in
its API reference; the configuration page and ``cai-aug synth --help`` cover every ``CAIConfig`` field; and
nothing refers to a document, folder or issue that is not in the repository."""

from __future__ import annotations

import ast
import dataclasses
import functools
import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cai_aug.engine.config import CAIConfig

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```", re.S | re.M)
LANGUAGES = {"python": "python", "bash": "bash", "sh": "bash", "shell": "bash"}
# A snippet that cannot run here says so where the reader sees it: in its first line, or in the paragraph before it.
NOT_RUN = "not run by the tests"
# Host modules whose public names the API reference must document (besides cai_aug.__all__).
HOST_MODULES = [
    "cai_aug.albumentations",
    "cai_aug.anomalib",
    "cai_aug.frontends.kornia",
    "cai_aug.frontends.torchvision",
    "cai_aug.frontends.ray",
    "cai_aug.frontends.offline",
    "cai_aug.engine.foreground_rembg",
    "cai_aug.cdm",
]


@dataclasses.dataclass(frozen=True)
class Snippet:
    name: str  # <document>#<index>
    language: str  # "python" or "bash"
    code: str
    skipped: str | None  # the visible reason it is not run, or None


def _snippets() -> list[Snippet]:
    found = []
    for path in DOCUMENTS:
        text = path.read_text(encoding="utf-8")
        for index, match in enumerate(BLOCK.finditer(text)):
            language = LANGUAGES.get(match.group(1))
            if language is None:
                continue
            code = match.group(2)
            before = " ".join(text[: match.start()].rstrip().rsplit("\n\n", 1)[-1].split())  # the paragraph before
            before = "" if "```" in before else before  # ... unless that is another snippet
            first = code.split("\n", 1)[0]
            reason = next((line for line in (first, before) if NOT_RUN in line), None)
            found.append(Snippet(f"{path.relative_to(ROOT)}#{index}", language, code, reason))
    return found


SNIPPETS = _snippets()
RUN = [snippet for snippet in SNIPPETS if snippet.skipped is None]

# Python snippets run with the test suite's set-up only: a CUDA torchvision wheel made importable next to the
# CPU torch (tests/conftest.py explains it); the snippet's own text is executed unchanged.
PYTHON_RUNNER = """
import sys
sys.path.insert(0, {tests!r})
import conftest  # noqa: F401
code = sys.stdin.read()
exec(compile(code, {name!r}, "exec"), {{"__name__": "__main__"}})
"""


def _env() -> dict[str, str]:
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", RAY_DISABLE_USAGE_STATS="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _workdir(tmp_path: Path) -> Path:
    """A fresh folder that sees the repository's files (relative paths such as ``examples/...`` resolve) and
    takes every output a snippet writes."""
    for entry in ROOT.iterdir():
        if entry.name not in {".git", ".venv", "site"} and not entry.name.startswith("."):
            (tmp_path / entry.name).symlink_to(entry)
    return tmp_path


@pytest.mark.parametrize("snippet", RUN, ids=[snippet.name for snippet in RUN])
def test_snippet_runs_on_its_own(snippet: Snippet, tmp_path: Path) -> None:
    cwd = _workdir(tmp_path)
    if snippet.language == "python":
        command = [sys.executable, "-c", PYTHON_RUNNER.format(tests=str(TESTS), name=snippet.name)]
    else:
        command = ["bash", "-euo", "pipefail", "-c", snippet.code]
    done = subprocess.run(
        command,
        input=snippet.code if snippet.language == "python" else None,
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"{snippet.name} failed:\n{done.stdout[-1500:]}\n{done.stderr[-3000:]}"


def test_snippets_not_run_are_few_and_say_why() -> None:
    skipped = [snippet for snippet in SNIPPETS if snippet.skipped]
    assert all(":" in snippet.skipped or "(" in snippet.skipped for snippet in skipped)  # a reason follows
    assert len(skipped) <= 13, [snippet.name for snippet in skipped]
    assert len(RUN) >= 15


# ---------------------------------------------------------------------- paths and options named in the text

# Paths the text names that a command writes, not the repository: (path, the command that makes it).
GENERATED = {
    "benchmarks/wheels": "bash benchmarks/fetch_gpu_wheels.sh",
    "benchmarks/gpu_data": "bash benchmarks/gpu_check.sh --stage-data",
}
REPO_PATH = re.compile(r"(?<![\w./<-])((?:cai_aug|benchmarks|tests|examples|docs|\.ci)/[\w./*-]*[\w*])")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _named_paths(text: str) -> set[str]:
    return set(REPO_PATH.findall(text))


@pytest.mark.parametrize("document", DOCUMENTS, ids=[str(p.relative_to(ROOT)) for p in DOCUMENTS])
def test_every_repository_path_named_exists(document: Path) -> None:
    missing = [
        path
        for path in _named_paths(document.read_text(encoding="utf-8"))
        if path.rstrip("/") not in GENERATED and not glob.glob(str(ROOT / path))
    ]
    assert not missing, f"{document.name} names paths that do not exist: {missing}"


def test_a_wrong_path_is_caught() -> None:
    assert _named_paths("see `benchmarks/speed/no_such.py` and tests/<layer>") == {"benchmarks/speed/no_such.py"}


def test_readme_links_resolve() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = [target for target in LINK.findall(text) if "://" not in target]
    assert targets
    missing = [target for target in targets if not (ROOT / target).exists()]
    assert not missing, f"README.md links to missing files: {missing}"


def _commands() -> list[tuple[str, str]]:
    """``(where, command line)`` for every ``cai-aug`` or ``python`` script call in code blocks and inline code."""
    found = []
    for path in DOCUMENTS:
        text = path.read_text(encoding="utf-8")
        pieces = [match.group(2) for match in BLOCK.finditer(text)]
        pieces += re.findall(r"`((?:cai-aug|python) [^`]+)`", BLOCK.sub("", text))
        for piece in pieces:
            for line in piece.replace("\\\n", " ").splitlines():
                line = line.split(" # ", 1)[0].strip().removeprefix("$ ")
                for part in re.split(r"&&|\|\||;|\|", line):
                    part = part.strip()
                    if part.startswith(("cai-aug ", "python ", "python3 ")):
                        found.append((path.name, part))
    return found


def _program(command: str) -> tuple[str, ...] | None:
    """The program and sub-command whose ``--help`` lists the options of ``command``, or None."""
    words = shlex.split(command, comments=True)
    if len(words) > 1 and words[1].endswith(":"):  # a program's output (``cai-aug synth: error: ...``)
        return None
    if words[0] == "cai-aug":
        return ("-m", "cai_aug", words[1]) if len(words) > 1 and not words[1].startswith("-") else ("-m", "cai_aug")
    if words[1:3] == ["-m", "benchmarks.detector"]:
        return ("-m", "benchmarks.detector")
    if words[1].endswith(".py") and words[1].startswith(("benchmarks/", "examples/")):
        return (words[1],)
    return None


HELP_RUNNER = """
import os, runpy, sys
sys.path.insert(0, {tests!r})
import conftest  # noqa: F401
program = sys.argv[1:]
if program[0] == "-m":
    sys.argv = [program[1], *program[2:]]
    runpy.run_module(program[1], run_name="__main__", alter_sys=True)
else:
    sys.argv = program
    sys.path.insert(0, os.path.dirname(os.path.abspath(program[0])))  # as ``python script.py`` does
    runpy.run_path(program[0], run_name="__main__")
"""


@functools.cache
def _help(program: tuple[str, ...]) -> str:
    """``--help`` of a program, with the test suite's set-up (torchvision importable) as the snippets have."""
    runner = [sys.executable, "-c", HELP_RUNNER.format(tests=str(TESTS)), *program, "--help"]
    done = subprocess.run(runner, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(program)} --help failed:\n{done.stderr[-2000:]}"
    return done.stdout


def _unknown_options(command: str) -> list[str]:
    program = _program(command)
    if program is None:
        return []
    text = _help(program)
    options = re.findall(r"(?<![\w-])(--[a-z][\w-]*)", command.split(" # ")[0])
    return [option for option in options if not re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text)]


COMMANDS = _commands()


@pytest.mark.parametrize(("where", "command"), COMMANDS, ids=[f"{w}:{c[:60]}" for w, c in COMMANDS])
def test_every_option_named_exists(where: str, command: str) -> None:
    assert not _unknown_options(command), f"{where}: `{command}` names options its --help lacks"


def test_a_wrong_option_is_caught() -> None:
    assert _unknown_options("cai-aug synth --normal a --bank b --out c --no-such-flag 3") == ["--no-such-flag"]


# ---------------------------------------------------------------------- the site


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    if shutil.which("mkdocs", path=_env()["PATH"]) is None:
        pytest.skip("mkdocs is not installed (pip install -e '.[docs]')")
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        ["mkdocs", "build", "--strict", "-d", str(out)],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_mkdocs_build_strict(site: Path) -> None:
    assert (site / "index.html").exists() and (site / "images" / "demo.png").exists()


def test_configuration_page_names_every_config_field(site: Path) -> None:
    page = (site / "configuration" / "index.html").read_text(encoding="utf-8")
    for field in dataclasses.fields(CAIConfig):
        assert f"<code>{field.name}</code>" in page, f"configuration page lacks {field.name}"


def test_api_reference_documents_every_public_name(site: Path) -> None:
    import cai_aug

    html = "".join(path.read_text(encoding="utf-8") for path in (site / "api").rglob("*.html"))
    names = [_defined_at(getattr(cai_aug, name)) for name in cai_aug.__all__]
    names += [f"{module}.{name}" for module in HOST_MODULES for name in _public_names(module)]
    missing = [name for name in names if f'id="{name}"' not in html]
    assert not missing, f"the API reference lacks {missing}"


def test_api_reference_shows_no_raw_sphinx_roles(site: Path) -> None:
    html = "".join(path.read_text(encoding="utf-8") for path in (site / "api").rglob("*.html"))
    raw = re.findall(r":(?:func|meth|class|mod|data|attr):<code>[^<]*</code>", html)
    assert not raw, raw[:5]
    assert "<code>poisson_blend</code>" in html  # a role in a docstring, rendered as code


def _defined_at(value) -> str:
    return f"{value.__module__}.{value.__qualname__}"


def _public_names(module: str) -> list[str]:
    """``__all__`` of a module, else its public top-level classes and functions, read from the source."""
    relative = Path(*module.split("."))
    source = ROOT / f"{relative}.py"
    if not source.exists():
        source = ROOT / relative / "__init__.py"
    tree = ast.parse(source.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return list(ast.literal_eval(node.value))
    return [
        node.name
        for node in tree.body
        if isinstance(node, ast.ClassDef | ast.FunctionDef) and not node.name.startswith("_")
    ]


def test_benchmark_figures_are_published(site: Path) -> None:
    figures = sorted(ROOT.glob("benchmarks/speed/*.png")) + sorted(ROOT.glob("benchmarks/detector/figures/*.png"))
    assert figures
    for figure in figures:
        assert (site / "images" / "benchmarks" / figure.name).read_bytes() == figure.read_bytes()


def test_synth_help_names_every_config_field() -> None:
    text = _help(("-m", "cai_aug", "synth"))
    for field in dataclasses.fields(CAIConfig):
        flag = "--" + field.name.replace("_", "-")
        assert flag in text, f"cai-aug synth --help lacks {flag}"


# ---------------------------------------------------------------------- references to what is not here

FORBIDDEN = re.compile(r"SPEC\.md|NOTES\.md|\bSPEC\b|\bNOTES\b|\.\./shared|\b[Ii]ssues? \d+|\bissue-\d+")
# Files of another owner that still hold such references; each is to be cleaned and removed from this list.
# Any other file with a reference fails.
KNOWN_ELSEWHERE: set[str] = set()
# The development data lives beside the checkout, in ../shared/data. The files that read it at run time (the
# shared-data fixture, its pytest marker, the GPU check's data staging) may name that one path; any other
# reference in them still fails.
DATA_PATH = "../shared/data"
READS_DATA = {"tests/conftest.py", "pyproject.toml", "benchmarks/gpu_check.sh"}
# The tests of such patterns (this file and the package's source check) hold examples of what they catch.
PATTERN_TESTS = {"tests/test_docs.py", "tests/test_source_text.py"}


def _references(name: str, text: str) -> list[str]:
    """The references to what is not in the repository that ``text`` (the file ``name``) holds."""
    if name in READS_DATA:
        text = text.replace(DATA_PATH, "")
    return sorted(set(FORBIDDEN.findall(text)))


def _tracked_text_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    files = [ROOT / name for name in listed.stdout.split("\0") if name]
    return [path for path in files if path.is_file() and path.suffix not in {".png", ".jpg", ".npy", ".so"}]


def test_nothing_refers_to_documents_or_issues_not_in_the_repository() -> None:
    offenders = {}
    for path in _tracked_text_files():
        name = path.relative_to(ROOT).as_posix()
        if name in PATTERN_TESTS or name in KNOWN_ELSEWHERE:
            continue
        hits = _references(name, path.read_text(encoding="utf-8", errors="replace"))
        if hits:
            offenders[name] = hits
    assert not offenders, offenders


def test_the_reference_pattern_catches_each_kind() -> None:
    for text in ["see SPEC.md", "NOTES.md says", "../shared/data", "issue 22", "as issue-13 said", "SPEC step 5"]:
        assert FORBIDDEN.search(text), text
    assert not FORBIDDEN.search("a tissue 3 and specs")


def test_a_data_reader_may_name_only_the_data_path() -> None:
    assert _references("tests/conftest.py", "reads ../shared/data/targets") == []
    assert _references("tests/conftest.py", "see ../shared/NOTES.md") == ["../shared", "NOTES.md"]
    assert _references("README.md", "reads ../shared/data") == ["../shared"]
