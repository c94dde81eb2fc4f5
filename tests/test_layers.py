"""The house's dependencies point one way, checked on the source itself.

Routes sit on the pipeline; the pipeline sits on the interfaces (the neutral vocabulary of
`calls`, `calls.upstream`, `store.base`) and on access; implementations (an upstream kind, a
store) sit at the bottom and know only the vocabulary they implement. A module's imports are
read with `ast`, so a lazy import inside a function counts too, and so does one made only for
the type checker: no module imports another that imports it back, however far round.
"""

from __future__ import annotations

import ast
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = (
    "access",
    "calls",
    "http_transport",
    "ollama_client",
    "ollama_host",
    "openai_client",
    "queueing",
    "routes",
    "store",
    "telemetry",
    "upstreams",
)

# The neutral vocabulary: what every layer may use. (Not the `store` package itself: it also
# exports the implementations.)
VOCABULARY = {
    "calls.types",
    "calls.errors",
    "calls.upstream",
    # What a streamed call yields, which fronts frame.
    "calls.events",
    # Model names as Ollama reads them, and a whole answer out of pieces: pure functions of
    # the types above.
    "calls.models",
    "calls.collect",
    # One HTTP exchange with a model server, for every upstream kind (on http_transport).
    "calls.exchange",
    # Bounds on the numbers an upstream reports, which the types apply as they are made.
    "calls.bounds",
    "store.base",
    "store.records",
    # Who waits for an upstream slot, in what order (the fair queue): the router keeps the
    # line, the pipeline hands each call's place to it, the fronts tell the caller. It knows
    # nothing of the project (checked below).
    "queueing",
}


def project_imports(path: Path, root: Path = ROOT) -> set[str]:
    """The project modules `path` imports (absolute names)."""
    module = ".".join(path.relative_to(root).with_suffix("").parts)
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] in (*PACKAGES, "app"):
                found.add(name)
    return found


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_files(root: Path = ROOT) -> list[Path]:
    """Every module of the program: the packages, app.py and launcher.py."""
    found = [root / "app.py", root / "launcher.py"]
    for package in PACKAGES:
        found += sorted((root / package).rglob("*.py"))
    return [path for path in found if path.exists()]


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the project modules it imports. `from store import TinyDBStore` imports the
    module `store` (its __init__); `from store.tinydb import files` imports the module
    `store.tinydb.files`: each name goes to the longest module it names."""
    files = project_files(root)
    known = {module_name(path, root) for path in files}
    graph: dict[str, set[str]] = {}
    for path in files:
        targets = set()
        for name in project_imports(path, root):
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                targets.add(name)
        graph[module_name(path, root)] = targets - {module_name(path, root)}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other in a loop (Tarjan's strongly connected
    components of more than one module), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> Iterator[None]:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                yield from visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            for _ in visit(node):
                pass
    return sorted(found)


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def offending(
    paths: list[Path], allowed: set[str], *, own: str, root: Path = ROOT
) -> dict[str, list[str]]:
    """The imports of `paths` from outside `own` that are not under an allowed module.

    `from calls.errors import X` reads as "calls.errors" and "calls.errors.X": both are under
    "calls.errors". An allowed package ("access") allows all of its modules.
    """
    bad: dict[str, list[str]] = {}
    for path in paths:
        for name in sorted(project_imports(path, root)):
            if name.split(".")[0] == own:
                continue
            if any(name == a or name.startswith(a + ".") for a in allowed):
                continue
            bad.setdefault(str(path.relative_to(root)), []).append(name)
    return bad


def vocabulary_only(paths: list[Path], *, own: str) -> dict[str, list[str]]:
    """Imports outside `own` that are not the neutral vocabulary."""
    return offending(paths, VOCABULARY, own=own)


def test_the_vocabulary_imports_nothing_above_it() -> None:
    names = ("types", "errors", "upstream", "events", "models", "collect", "exchange")
    paths = [ROOT / "calls" / f"{name}.py" for name in names]
    paths += [ROOT / "store" / f"{name}.py" for name in ("base", "records")]

    # The transport beneath every kind knows nothing of the project (checked below).
    assert offending(paths, VOCABULARY | {"http_transport"}, own="") == {}


@pytest.mark.parametrize("package", ["ollama_client", "openai_client", "store"])
def test_implementations_know_only_the_vocabulary(package: str) -> None:
    # The upstream kinds share the HTTP transport beneath them, which knows nothing above.
    allowed = VOCABULARY | {"http_transport"}

    assert offending(modules(package), allowed, own=package) == {}


def test_the_transport_knows_nothing_of_the_project() -> None:
    assert offending(modules("http_transport"), set(), own="http_transport") == {}


def test_the_fair_queue_knows_nothing_of_the_project() -> None:
    assert offending(modules("queueing"), set(), own="queueing") == {}


def test_the_router_knows_the_kinds_only_through_their_table() -> None:
    """upstreams/ builds the kinds from settings it describes itself (kinds.py names each
    kind once), never from the program package; the router knows only the vocabulary."""
    allowed = VOCABULARY | {"http_transport"}
    router = [ROOT / "upstreams" / name for name in ("router.py", "breaker.py", "config.py")]

    assert offending(router, VOCABULARY, own="upstreams") == {}
    assert (
        offending(
            modules("upstreams"), allowed | {"ollama_client", "openai_client"}, own="upstreams"
        )
        == {}
    )


def test_access_does_not_reach_up_into_the_pipeline_or_the_routes() -> None:
    assert vocabulary_only(modules("access"), own="access") == {}


def test_the_pipeline_knows_no_front_no_upstream_kind_and_no_store_implementation() -> None:
    allowed = VOCABULARY | {"access", "http_transport"}

    assert offending(modules("calls"), allowed, own="calls") == {}


def test_telemetry_watches_the_pipeline_and_knows_no_implementation() -> None:
    """The metrics and traces see calls through the pipeline's accounts and the neutral
    types; no front, no upstream kind, no store implementation."""
    allowed = VOCABULARY | {"calls"}

    assert offending(modules("telemetry"), allowed, own="telemetry") == {}


def test_routes_do_not_reach_an_implementation() -> None:
    """Fronts work through the Gateway; only app.py picks implementations."""
    allowed = VOCABULARY | {"access", "calls"}

    assert offending(modules("routes"), allowed, own="routes") == {}


def test_the_check_sees_a_wrong_way_import(tmp_path: Path) -> None:
    """The checks above can fail: an upstream kind that reaches into the pipeline is caught."""
    bad = tmp_path / "ollama_client" / "_layers_probe.py"
    bad.parent.mkdir()
    bad.write_text("from calls.pipeline import Gateway\nfrom routes import seed\n")

    found = offending([bad], VOCABULARY, own="ollama_client", root=tmp_path)

    assert found == {
        "ollama_client/_layers_probe.py": [
            "calls.pipeline",
            "calls.pipeline.Gateway",
            "routes",
            "routes.seed",
        ]
    }


def test_nothing_generic_is_installed_at_the_top_of_site_packages() -> None:
    """`pip install .` puts app.py and the packages named for their jobs there, and none of
    the generic names that collided before (errors, keys, settings, service, ...). Checked on
    pyproject's own lists, which are what setuptools installs."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = set(config["packages"])
    installed = set(config["py-modules"]) | {name.split(".")[0] for name in packages}
    generic = {"errors", "keys", "settings", "service", "schemas", "limits", "guard", "static"}

    assert installed == {"app", *PACKAGES}
    assert not installed & generic
    # Every package on disk, sub-packages too, is installed (setuptools takes only those
    # named), and no stray top-level module is left behind. The page's files go in as a
    # package of data inside the program's: static/ as ollama_host/static.
    on_disk = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in ROOT.glob("**/__init__.py")
        if p.parts[len(ROOT.parts)] in PACKAGES
    }
    assert packages == on_disk | {"ollama_host.static"}
    assert config["package-dir"] == {"ollama_host.static": "static"}
    assert {p.stem for p in ROOT.glob("*.py")} == {"app", "launcher"}


def test_no_module_imports_another_that_imports_it_back() -> None:
    assert circles(import_graph()) == []


def test_the_circle_check_sees_a_lazy_loop(tmp_path: Path) -> None:
    """A loop closed by an import inside a function, or one made only for the type checker,
    is a loop all the same."""
    for package in ("store", "calls"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "store" / "spill.py").write_text(
        "def load():\n    from .tinydb import TinyDBStore\n    return TinyDBStore\n"
    )
    (tmp_path / "store" / "tinydb.py").write_text("from . import spill\n")
    (tmp_path / "calls" / "a.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from calls.b import B\n"
    )
    (tmp_path / "calls" / "b.py").write_text("from calls import a\n")

    assert circles(import_graph(tmp_path)) == [
        ["calls.a", "calls.b"],
        ["store.spill", "store.tinydb"],
    ]


def test_nothing_imports_the_composition_root() -> None:
    """app.py builds the app from every part; the program (ollama_host) is handed its
    create_app, and runs app.py as a file where it must start it again."""
    importers = sorted(name for name, targets in import_graph().items() if "app" in targets)

    assert importers == []


def _doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_the_layout_table_names_every_top_level_folder() -> None:
    """The README's Layout table has a row for every folder at the top of the checkout."""
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    named = {row.split("`")[1].rstrip("/") for row in rows}
    # The folders the checkout holds (git's own list): what running it makes (the venv, data,
    # caches, test artifacts) is not part of the layout.
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    folders = {path.split("/", 1)[0] for path in tracked if "/" in path}

    assert folders - named == set()


def test_every_path_the_docs_name_exists() -> None:
    """A path under one of the project's folders, named in the README or docs/, is a file or
    folder of the tree. (Old names a history gives in brackets, `[like/this.py]`, are left
    out; so are tests a doc shows as examples of what a new kind would add.)"""
    tops = {*PACKAGES, "tests", "static", "bench", "docs", "scripts", ".ci"}
    named = re.compile(r"(?<!\[)`((?:" + "|".join(map(re.escape, tops)) + r")/[\w./-]*)`")
    missing = [
        (doc.name, path)
        for doc in _doc_files()
        for path in named.findall(doc.read_text())
        if not (ROOT / path.split("::")[0]).exists() and "tgi" not in path
    ]

    assert missing == []
