"""Code measurements: the import closure of an entry module, hashed with the config.

With the simulated TEE a measurement stands in for MRENCLAVE / MRTD. What it
covers must be what the measured process runs, no more and no less: every
module of the project reachable by import from the process's entry module
(the worker deployment, the key-service ingress), and not the client, the CLI
or the example zoo, which that process never loads. Editing code the process
runs changes its identity; editing anything else does not.

The closure is read from source, never by importing it: each module's syntax
tree gives its imports (at module level, inside functions and methods, and
``importlib.import_module("...")`` with a literal name). Importing ``a.b.c``
runs ``a/__init__.py`` and ``a/b/__init__.py`` too, so every parent package is
in the closure with its own imports. Two kinds of import are not followed,
because they never run when the module is imported:

* imports under ``if TYPE_CHECKING:``;
* the lazy exports of a package (imports inside its module-level
  ``__getattr__``): they load only when someone reads the name, so the closure
  follows them only from a ``from package import name`` that names one.

Only the project's own packages count (`PROJECT_PACKAGES`); third-party code
is pinned by the deployment's image, not by this hash. Files are hashed under
their path relative to the repository (``infaas/keyservice/service.py``), so
two modules with the same base name cannot stand in for each other.
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from infaas.logs import get_logger

log = get_logger(__name__)

PROJECT_PACKAGES = ("infaas", "variants", "profiler", "scheduler", "enclave_workers", "api")
REPO = Path(__file__).resolve().parent.parent
_DOMAIN = b"infaas-measurement-v2\x00"


@dataclass(frozen=True)
class _Parsed:
    """What a module's source says about the modules it loads."""

    imports: frozenset[str]
    """Dotted names the module imports when it runs (``from a import b`` gives ``a.b``)."""
    lazy_exports: tuple[tuple[str, frozenset[str]], ...]
    """A package's names that its ``__getattr__`` imports on demand, each with its modules."""


def module_file(name: str, root: Path = REPO) -> Path | None:
    """The source file of project module `name` under `root` (None if there is none)."""
    if name.split(".")[0] not in PROJECT_PACKAGES:
        return None
    base = root.joinpath(*name.split("."))
    for path in (base / "__init__.py", base.with_suffix(".py")):
        if path.is_file():
            return path
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _absolute(node: ast.ImportFrom, name: str, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    parts = name.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def imported_modules(nodes: Iterable[ast.AST], name: str, is_package: bool) -> set[str]:
    """Dotted names imported anywhere under `nodes`, TYPE_CHECKING blocks excepted."""
    found: set[str] = set()
    stack = list(nodes)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = _absolute(node, name, is_package)
            found.add(module)
            # `from a import b` loads a.b when b is a submodule; resolved against the files later
            found.update(f"{module}.{alias.name}" for alias in node.names if alias.name != "*")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.add(node.args[0].value)
        stack.extend(ast.iter_child_nodes(node))
    return found


_PARSED: dict[tuple[Path, str, int, int], _Parsed] = {}


def _parse(path: Path, name: str) -> _Parsed:
    """`_parse_source`, remembered while the file keeps its size and modification time."""
    st = path.stat()
    key = (path, name, st.st_mtime_ns, st.st_size)
    if key not in _PARSED:
        _PARSED[key] = _parse_source(path, name)
    return _PARSED[key]


def _parse_source(path: Path, name: str) -> _Parsed:
    tree = ast.parse(path.read_bytes(), filename=str(path))
    is_package = path.name == "__init__.py"
    body: list[ast.stmt] = []
    lazy: list[tuple[str, frozenset[str]]] = []
    for stmt in tree.body:
        if is_package and isinstance(stmt, ast.FunctionDef) and stmt.name == "__getattr__":
            for node in ast.walk(stmt):
                if isinstance(node, ast.ImportFrom):
                    module = _absolute(node, name, is_package)
                    for alias in node.names:
                        lazy.append((alias.asname or alias.name, frozenset({module})))
        else:
            body.append(stmt)
    return _Parsed(frozenset(imported_modules(body, name, is_package)), tuple(lazy))


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def import_closure(entry: str, root: Path = REPO) -> tuple[str, ...]:
    """Every project module loaded by importing `entry` (itself and parent packages included)."""
    if module_file(entry, root) is None:
        raise ModuleNotFoundError(f"no project module {entry!r} under {root}")
    seen: set[str] = set()
    todo = [entry]
    while todo:
        for name in _with_parents(todo.pop()):
            path = module_file(name, root)
            if name in seen or path is None:
                continue
            seen.add(name)
            parsed = _parse(path, name)
            todo.extend(parsed.imports)
            # `from pkg import name` where name is one of pkg's lazy exports loads its module
            for imported in parsed.imports:
                package, _, attr = imported.rpartition(".")
                package_file = module_file(package, root) if package else None
                if package_file is not None and package_file.name == "__init__.py":
                    for export, modules in _parse(package_file, package).lazy_exports:
                        if export == attr:
                            todo.extend(modules)
    return tuple(sorted(seen))


def closure_files(entry: str, root: Path = REPO) -> dict[str, Path]:
    """The source files of `entry`'s closure, by their path relative to `root`."""
    files = {}
    for name in import_closure(entry, root):
        path = module_file(name, root)
        assert path is not None
        files[path.relative_to(root).as_posix()] = path
    return dict(sorted(files.items()))


def measure_files(files: dict[str, Path], config: bytes = b"") -> bytes:
    """SHA-256 over named files (sorted by name, each name and content length-prefixed) + config."""
    h = hashlib.sha256(_DOMAIN)
    for rel in sorted(files):
        data = files[rel].read_bytes()
        name = rel.encode()
        h.update(len(name).to_bytes(4, "big") + name + len(data).to_bytes(8, "big") + data)
    h.update(len(config).to_bytes(8, "big") + config)
    return h.digest()


def measure_closure(entry: str, config: bytes = b"", root: Path = REPO) -> bytes:
    """The 32-byte measurement of the code `entry` runs, plus its measured `config`."""
    files = closure_files(entry, root)
    log.debug("measuring %s: %d modules", entry, len(files))
    return measure_files(files, config)
