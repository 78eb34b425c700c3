"""The habits that keep the house in shape (docs/design.md): formatting, lint, the import
layers, room sizes, no import circles and no borrowed underscore names. Each check reads the
source tree; none imports fastps."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PY_ROOMS = ("fastps", "bench")  # Python rooms held to the size limit
MAX_PY_LINES = 500
MAX_CPP_LINES = 600


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def _tool(name: str) -> str:
    exe = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if exe is None:
        pytest.fail(f"{name} is not installed: pip install '.[test]' brings it")
    return exe


def test_ruff_lint_is_clean():
    r = _run(_tool("ruff"), "check", "--no-cache", ".")
    assert r.returncode == 0, r.stdout + r.stderr


def test_ruff_format_is_applied():
    r = _run(_tool("ruff"), "format", "--no-cache", "--check", ".")
    assert r.returncode == 0, f"run `ruff format .`:\n{r.stdout}{r.stderr}"


def test_import_layers_hold():
    r = _run(_tool("lint-imports"), "--no-cache")
    assert r.returncode == 0, r.stdout + r.stderr


def _python_files(*rooms: str) -> list[Path]:
    return sorted(p for room in rooms for p in (ROOT / room).rglob("*.py"))


def test_rooms_fit_in_one_sitting():
    too_long = [
        f"{p.relative_to(ROOT)}: {n} lines"
        for p in _python_files(*PY_ROOMS)
        if (n := len(p.read_text().splitlines())) > MAX_PY_LINES
    ]
    cpp = [p for ext in ("*.h", "*.cc", "*.cu", "*.cuh") for p in (ROOT / "csrc").rglob(ext)]
    too_long += [
        f"{p.relative_to(ROOT)}: {n} lines"
        for p in sorted(cpp)
        if (n := len(p.read_text().splitlines())) > MAX_CPP_LINES
    ]
    assert not too_long, f"Python <= {MAX_PY_LINES}, C++ <= {MAX_CPP_LINES} lines: {too_long}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _runtime_imports(tree: ast.Module, here: str, is_pkg: bool) -> list[ast.stmt]:
    """Import statements outside ``if TYPE_CHECKING:`` blocks, with relative ones resolved."""
    out: list[ast.stmt] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for orelse in child.orelse:
                    visit(orelse)
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                out.append(child)
            visit(child)

    visit(tree)
    for node in out:
        if isinstance(node, ast.ImportFrom) and node.level:
            base = here.split(".")
            base = base[: len(base) - node.level + (1 if is_pkg else 0)]
            node.module = ".".join(base + ([node.module] if node.module else []))
            node.level = 0
    return out


def _fastps_sources() -> dict[str, tuple[str, bool]]:
    """module name -> (source, is a package), for every module of fastps."""
    return {
        _module_name(p): (p.read_text(), p.name == "__init__.py") for p in _python_files("fastps")
    }


def _graph(sources: dict[str, tuple[str, bool]]) -> tuple[dict[str, set[str]], list[str]]:
    """The import edges between the given modules (TYPE_CHECKING imports aside), and every
    place where one takes another's underscore name (the native ``_core`` aside)."""
    edges: dict[str, set[str]] = {m: set() for m in sources}
    borrowed: list[str] = []
    for mod, (text, is_pkg) in sources.items():
        tree = ast.parse(text)
        aliases: dict[str, str] = {}
        for node in _runtime_imports(tree, mod, is_pkg):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
                aliases.update({a.asname: a.name for a in node.names if a.asname})
            else:
                assert isinstance(node, ast.ImportFrom) and node.module is not None
                targets = []
                for a in node.names:
                    full = f"{node.module}.{a.name}"
                    targets.append(full if full in sources else node.module)
                    if full in sources:
                        aliases[a.asname or a.name] = full
                    private = a.name.startswith("_") and not a.name.startswith("__")
                    if private and a.name != "_core" and node.module in sources:
                        borrowed.append(f"{mod} imports {full}")
            for t in targets:
                if t in sources and t != mod:
                    edges[mod].add(t)
        for n in ast.walk(tree):
            if (
                isinstance(n, ast.Attribute)
                and isinstance(n.value, ast.Name)
                and n.value.id in aliases
                and n.attr.startswith("_")
                and not n.attr.startswith("__")
                and f"{aliases[n.value.id]}.{n.attr}" not in sources  # a private submodule
            ):
                borrowed.append(f"{mod} reads {aliases[n.value.id]}.{n.attr}")
    return edges, borrowed


def _cycles(edges: dict[str, set[str]]) -> list[str]:
    seen: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []
    cycles: list[str] = []

    def dfs(m: str) -> None:
        seen[m] = 1
        stack.append(m)
        for n in sorted(edges[m]):
            if seen.get(n) == 1:
                cycles.append(" -> ".join([*stack[stack.index(n) :], n]))
            elif n not in seen:
                dfs(n)
        stack.pop()
        seen[m] = 2

    for m in sorted(edges):
        if m not in seen:
            dfs(m)
    return cycles


def _without_root(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    # "from fastps import x" runs fastps/__init__ first, but the importer depends on x, not on
    # the facade's re-exports: edges into the root package are not dependencies.
    return {m: {n for n in e if n != "fastps"} for m, e in edges.items()}


def test_no_import_circle_inside_fastps():
    edges, _ = _graph(_fastps_sources())
    assert not _cycles(_without_root(edges))


def test_no_module_takes_another_modules_underscore_names():
    _, borrowed = _graph(_fastps_sources())
    assert not borrowed


FACADE = ("fastps", "fastps.store", "fastps.transfer", "fastps.checkpoint", "fastps.segments",
          "fastps.config", "fastps.buffers", "fastps.step_size", "fastps.layout", "fastps.probe")  # fmt: skip


def _imports_core(text: str) -> bool:
    for n in ast.walk(ast.parse(text)):
        if isinstance(n, ast.Import) and any(a.name == "fastps._core" for a in n.names):
            return True
        if isinstance(n, ast.ImportFrom) and (
            n.module == "fastps._core"
            or n.module == "fastps"
            and any(a.name == "_core" for a in n.names)
        ):
            return True
    return False


def test_only_the_facade_imports_the_native_module():
    above = [
        m for m, (text, _) in _fastps_sources().items() if m not in FACADE and _imports_core(text)
    ]
    bench = [
        str(p.relative_to(ROOT)) for p in _python_files("bench") if _imports_core(p.read_text())
    ]
    assert not above and not bench
    assert _imports_core("from fastps import _core, store\n")
    assert _imports_core("import fastps._core as c\n")


def test_the_graph_checks_see_what_they_look_for():
    sources = {
        "fastps": ("from fastps.a import A\n", True),
        "fastps.a": ("from fastps import b\nA = b.B\n", False),
        "fastps.b": ("from fastps.a import _helper\nB = 1\n", False),
        "fastps.c": ("from fastps import _core, b as bee\nx = bee._hidden\n", False),
        "fastps.d": ("if TYPE_CHECKING:\n    from fastps.c import x\n", False),
        "fastps._core": ("", False),
    }
    edges, borrowed = _graph(sources)
    assert _cycles(_without_root(edges)) == ["fastps.a -> fastps.b -> fastps.a"]
    assert edges["fastps.d"] == set()
    assert borrowed == ["fastps.b imports fastps.a._helper", "fastps.c reads fastps.b._hidden"]


def test_pre_commit_runs_the_same_checks():
    r = _run(_tool("pre-commit"), "validate-config", ".pre-commit-config.yaml")
    assert r.returncode == 0, r.stdout + r.stderr
    config = (ROOT / ".pre-commit-config.yaml").read_text()
    for hook in ("ruff check", "ruff format", "clang-format", "lint-imports", "test_habits.py"):
        assert hook in config, f"pre-commit lacks {hook}"


def test_every_test_the_reliability_promises_name_exists():
    """docs/reliability.md's table names the test behind each promise: a renamed or deleted test
    fails here, so the table stays current."""
    import re

    text = (ROOT / "docs" / "reliability.md").read_text()
    table = text[text.index("## Promises and how each is tested") :]
    files = set(re.findall(r"(test_[a-z0-9_]+\.py)", table))
    names = set(re.findall(r"`(test_[a-z0-9_]+)", table))
    assert len(names) > 40 and files
    for f in files:
        assert (ROOT / "tests" / f).exists(), f
    defined = "".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py"))
    missing = sorted(n for n in names if f"def {n}(" not in defined)
    assert not missing, f"docs/reliability.md names tests that do not exist: {missing}"
