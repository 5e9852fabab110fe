"""README.md stays true to the code.

- Its "Map of the code" names every module under ``src/h2aseg`` (every ``.py`` file but ``__init__.py``: a
  package's folder entry, ``models/`` or ``kernels/``, stands for its ``__init__.py``), every file in
  ``experiments/`` and every file in ``benchmarks/``; and every ``.py``, ``.yaml`` or ``.sh`` file it names
  exists.
  The map writes a file by its path as an entry of its own (``config.py`` under ``src/h2aseg/``) or by its
  name in the text of its folder's entry (``sdpa.py`` in ``kernels/``, nested under ``models/``).
- Its Python examples parse, and the names they import from h2aseg exist.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PACKAGE = "src/h2aseg/"
LISTED_FOLDERS = ("experiments/", "benchmarks/")
ENTRY_INDENT = 8  # an entry line starts within this many spaces; its continuation lines start further in
NAMED_FILE = re.compile(r"(?<![\w./-])([\w./-]+\.(?:py|yaml|sh))(?![\w-])")


def _section(text: str, heading: str) -> str:
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def _map_block() -> str:
    section = _section(README.read_text(encoding="utf-8"), "Map of the code")
    match = re.search(r"\n```\n(.*?)\n```", section, re.S)
    assert match, "README's 'Map of the code' has no code block"
    return match.group(1)


def map_entries(block: str) -> dict[str, str]:
    """Entry path (``src/h2aseg/models/kernels/``, ``src/h2aseg/config.py``) -> the text the map gives it."""
    entries: dict[str, str] = {}
    stack: list[tuple[int, str]] = []  # (indent, path) of the entries enclosing the current line
    current = None
    for line in block.splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        if indent < ENTRY_INDENT:
            name, _, text = line.strip().partition(" ")
            while stack and stack[-1][0] >= indent:
                stack.pop()
            current = (stack[-1][1] if stack else "") + name
            stack.append((indent, current))
            entries[current] = text.strip()
        else:
            assert current is not None, f"map line outside any entry: {line!r}"
            entries[current] += " " + line.strip()
    return entries


def _names(text: str) -> set[str]:
    return set(NAMED_FILE.findall(text))


def _is_named(entries: dict[str, str], rel: str) -> bool:
    """Whether the map names the file ``rel`` (relative to the repository) by its path or in its folder."""
    folder, _, name = rel.rpartition("/")
    return rel in entries or name in _names(entries.get(folder + "/", ""))


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def test_map_names_every_module_experiment_file_and_benchmark() -> None:
    entries = map_entries(_map_block())
    modules = sorted(
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / PACKAGE).rglob("*.py")
        if p.name != "__init__.py" and "__pycache__" not in p.parts
    )
    listed = [p.relative_to(ROOT).as_posix() for f in LISTED_FOLDERS for p in _files(ROOT / f)]
    assert len(modules) > 50 and len(listed) > 15  # the walk found the tree
    missing = [rel for rel in modules + listed if not _is_named(entries, rel)]
    assert not missing, f"README's 'Map of the code' does not name: {missing}"


def test_every_file_the_map_names_exists() -> None:
    """A name resolves against its entry's folder or a folder above it (``docs/training-notes.md`` in
    ``benchmarks/``, ``kernels/__init__.py`` in ``kernels/``)."""
    stale = []
    for path, text in map_entries(_map_block()).items():
        if not path.endswith("/"):
            if "*" not in path and not (ROOT / path).is_file():
                stale.append(path)
            continue
        folders = [ROOT / path, *(ROOT / path).parents]
        folders = folders[: folders.index(ROOT) + 1]
        stale += [
            f"{path}: {name}" for name in _names(text) if not any((d / name).is_file() for d in folders)
        ]
    assert not stale, f"README's 'Map of the code' names files that do not exist: {stale}"


def test_map_parser_reads_nesting_and_words() -> None:
    block = (
        "src/h2aseg/\n  config.py   x\n  models/     a.py, b.py (c)\n                d.py\n"
        "    sub/      e.py\nbench/  f.py"
    )
    entries = map_entries(block)
    assert entries["src/h2aseg/models/"] == "a.py, b.py (c) d.py"
    assert _names(entries["src/h2aseg/models/"]) == {"a.py", "b.py", "d.py"}
    assert _names(entries["src/h2aseg/models/sub/"]) == {"e.py"}
    assert "src/h2aseg/config.py" in entries and _names(entries["bench/"]) == {"f.py"}
    assert _names("tamw_run.py, run.py, _common.py") == {"tamw_run.py", "run.py", "_common.py"}
    assert not _is_named({"a/": "tamw_run.py, _common.py"}, "a/run.py")
    assert not _is_named({"a/": "_common.py"}, "a/common.py")


def _python_examples() -> list[str]:
    return re.findall(r"\n```python\n(.*?)\n```", README.read_text(encoding="utf-8"), re.S)


def test_readme_has_python_examples() -> None:
    assert _python_examples()


@pytest.mark.parametrize("index", range(len(_python_examples())))
def test_python_example_parses_and_its_h2aseg_imports_exist(index: int) -> None:
    tree = ast.parse(_python_examples()[index], filename=f"README.md python example {index + 1}")
    missing = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "h2aseg":
                    importlib.import_module(alias.name)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "h2aseg":
            module = importlib.import_module(node.module)
            for alias in node.names:
                if hasattr(module, alias.name):
                    continue
                try:
                    importlib.import_module(f"{node.module}.{alias.name}")
                except ModuleNotFoundError:
                    missing.append(f"{node.module}.{alias.name}")
    assert not missing, f"README example {index + 1} imports names that do not exist: {missing}"
