"""The house's layers (docs: Development > Architecture), checked on the import graph of ``src/qin_lightning``.

From the ground up, an import only ever points down, or sideways within the ground floor:
1. ground floor: ``errors``, ``files``, ``machine``, ``checkpoint``, ``config``, ``predictions``;
2. ``data`` and ``models`` (models never import data);
3. ``training``, ``serving``, ``report``: side by side, none importing another;
4. the entry points ``train``, ``eval``, ``predict``, ``export``, ``prepare``, and ``bench``, the tool that
   measures training and serving side by side (so it stands over both).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "qin_lightning"
GROUND = {"errors", "files", "machine", "checkpoint", "config", "predictions"}
LAYER = {**{name: 1 for name in GROUND}, "data": 2, "models": 2,
         "training": 3, "serving": 3, "report": 3,
         "train": 4, "eval": 4, "predict": 4, "export": 4, "prepare": 4, "bench": 4}


def _imports(path: Path) -> set[str]:
    """The qin_lightning modules ``path`` imports (``from qin_lightning.x import y`` counts ``x.y`` and ``x``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "qin_lightning":
            parts = node.module.split(".")[1:]
            if parts:
                found.add(".".join(parts))
            else:  # from qin_lightning import machine
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".", 1)[1] for a in node.names if a.name.startswith("qin_lightning."))
    return found


def import_edges() -> list[tuple[str, str]]:
    """(importer, imported) for every module of the package, as dotted paths below ``qin_lightning``."""
    edges = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__")
        edges += [(module, target) for target in _imports(path)]
    return edges


def top(module: str) -> str:
    return module.split(".")[0]


def test_every_top_level_module_has_a_layer() -> None:
    """A new module or package must be placed in a layer here (and in the docs' picture)."""
    names = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
             if (p.suffix == ".py" and p.stem not in ("__init__", "__main__")) or (p / "__init__.py").is_file()}
    assert names - set(LAYER) == set()


def test_no_import_points_up_or_sideways_between_packages() -> None:
    """Down only; sideways only inside the ground floor; the tools of layer 4 may not import each other."""
    bad = []
    for importer, imported in import_edges():
        a, b = top(importer), top(imported)
        if a == b or a not in LAYER or b not in LAYER:
            continue
        if LAYER[b] > LAYER[a] or (LAYER[b] == LAYER[a] and LAYER[a] != 1):
            bad.append(f"{importer} -> {imported}")
    assert bad == []


def test_models_never_import_data() -> None:
    assert [e for e in import_edges() if top(e[0]) == "models" and top(e[1]) == "data"] == []


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The walker finds imports in every form the package uses (so an empty edge list cannot pass silently)."""
    source = tmp_path / "m.py"
    source.write_text("from qin_lightning.training.results import x\nfrom qin_lightning import machine\n"
                      "import qin_lightning.report.stats\n")
    assert _imports(source) == {"training.results", "machine", "report.stats"}
    assert ("data.reader", "errors") in import_edges()


@pytest.mark.parametrize("ground", sorted(GROUND))
def test_the_ground_floor_imports_only_the_ground_floor(ground: str) -> None:
    assert {top(b) for a, b in import_edges() if top(a) == ground} <= GROUND
