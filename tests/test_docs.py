"""The README, the documentation site (docs/), the study READMEs and the config comments name only things that exist.

Checked: `make` targets, `python -m qin_lightning.<module>` modules, scripts and repository paths, Markdown
links, `+experiment=` names and config-group options, `callbacks.<name>` keys, no machine-specific paths, and
every `python -m qin_lightning.train ...` command line composes with the real Hydra configs. The site builds with
`mkdocs build --strict` (offline), its tables of results are included from the committed records, and the
README's results table matches its record cell by cell.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CONFIG_DIR, REPO_ROOT
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

SITE = sorted((REPO_ROOT / "docs").rglob("*.md"))
DOCS = [REPO_ROOT / "README.md", *SITE, REPO_ROOT / "experiments" / "README.md",
        *sorted((REPO_ROOT / "experiments").glob("*/README.md"))]
README_MAX_LINES = 250
CONFIGS = sorted(Path(CONFIG_DIR).rglob("*.yaml"))
GROUPS = ("data", "model", "trainer", "logger", "callbacks", "hparams_search", "paths", "debug", "model/attention",
          "model/interaction", "hydra/launcher", "hydra/sweeper")
# options that Hydra's installed plugins provide rather than our configs (hydra-submitit-launcher)
PLUGIN_OPTIONS = {"hydra/launcher": ("basic", "submitit_local", "submitit_slurm")}
# Fewer matches than these means a pattern stopped matching (the docs held about twice as many when they were
# set: 100 modules, 95 paths, 22 links, 19 experiments, 60 group options, 9 callbacks, 44 train commands
# with 89 overrides).
MIN_CHECKED = {"module": 50, "path": 40, "link": 10, "experiment": 10, "group option": 30, "callback": 4}
MIN_TRAIN_COMMANDS = 20


def _texts() -> dict[Path, str]:
    return {path: path.read_text() for path in [*DOCS, *CONFIGS, REPO_ROOT / "Makefile"]}


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT))


def test_make_targets_exist() -> None:
    makefile = (REPO_ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, flags=re.M))
    named = {(p, t) for p, text in _texts().items() for t in re.findall(r"\bmake ([a-z][a-z-]*)", text)}
    missing = sorted(f"{_rel(p)}: make {t}" for p, t in named if t not in targets)
    assert named and not missing


def _assert_enough_checked(checked: dict[str, int]) -> None:
    few = {kind: n for kind, n in checked.items() if n < MIN_CHECKED[kind]}
    assert not few, f"checked {few}, expected at least {MIN_CHECKED}: a pattern stopped matching"


def test_modules_scripts_and_paths_exist() -> None:
    missing = []
    checked = {"module": 0, "path": 0, "link": 0}
    for path, text in _texts().items():
        for module in re.findall(r"python -m (qin_lightning[\w.]*)", text):
            checked["module"] += 1
            rel = Path("src", *module.split("."))
            if not (REPO_ROOT / rel.with_suffix(".py")).is_file() and not (REPO_ROOT / rel / "__main__.py").is_file():
                missing.append(f"{_rel(path)}: module {module}")
        for token in re.findall(r"`([^`\s]+)`", text) + re.findall(r"python (\S+\.py)", text):
            token = token.rstrip(".,:;)")
            placeholder = re.search(r"[<>*{}]|\.\.\.|\b(NAME|CKPT|DIR)\b", token)
            # src/qin_lightning only: a study README may quote a file of another repository (`src/DIN.py` of ...)
            if token.startswith(("conf/", "src/qin_lightning", "experiments/", "tests/")) and not placeholder:
                checked["path"] += 1
                if not (REPO_ROOT / token.split(":")[0]).exists():
                    missing.append(f"{_rel(path)}: path {token}")
        if path.suffix == ".md":
            for link in re.findall(r"\]\(([^)\s#]+)(?:#[^)]*)?\)", text):
                if link.startswith(("http://", "https://")):
                    continue
                checked["link"] += 1
                if not (path.parent / link).exists():
                    missing.append(f"{_rel(path)}: link {link}")
    assert not missing
    _assert_enough_checked(checked)


def test_no_machine_specific_paths() -> None:
    found = [f"{_rel(p)}: {m}" for p, text in _texts().items()
             for m in re.findall(r"(?:^|[\s`(=])(/(?:tmp|work|home|Users|root)/\S*)", text)]  # fmt: skip
    assert not found


def test_no_documents_outside_the_repository_cited() -> None:
    """Facts are stated where they are used, with their public source, never as a section of a document that
    is not in the repository (the project brief's reference notes)."""
    outside = re.compile("REFERENCE" + r"(?:\.md| §| section| \d)")
    files = [*(REPO_ROOT / "src").rglob("*.py"), *(REPO_ROOT / "src").rglob("*.yaml"),
             *(REPO_ROOT / "tests").rglob("*.py")]
    found = [f"{_rel(p)}: {m.group(0)}" for p in [*files, *_texts()] for m in outside.finditer(p.read_text())]
    assert not found


def test_experiments_groups_and_callbacks_named_exist() -> None:
    conf = Path(CONFIG_DIR)
    callbacks = set(re.findall(r"^(\w+):", (conf / "callbacks" / "default.yaml").read_text(), flags=re.M))
    missing = []
    checked = {"experiment": 0, "group option": 0, "callback": 0}
    for path, text in _texts().items():
        for name in re.findall(r"\+experiment=([a-z_0-9]+)\b(?!\()", text):
            checked["experiment"] += name not in ("glob", "NAME")
            if name not in ("glob", "NAME") and not (conf / "experiment" / f"{name}.yaml").is_file():
                missing.append(f"{_rel(path)}: +experiment={name}")
        for group, options in re.findall(r"(?<![\w./+])(" + "|".join(GROUPS) + r")=([a-z_0-9|\\]+)", text):
            checked["group option"] += 1
            for option in re.split(r"\\?\|", options):
                if option in PLUGIN_OPTIONS.get(group, ()):
                    continue
                if option and option != "null" and not (conf / group / f"{option}.yaml").is_file():
                    missing.append(f"{_rel(path)}: {group}={option}")
        for name in re.findall(r"(?<![\w.])callbacks\.(\w+)", text):
            checked["callback"] += 1
            if name not in callbacks and name != "X":
                missing.append(f"{_rel(path)}: callbacks.{name}")
    assert not missing
    _assert_enough_checked(checked)


def _train_commands() -> list[tuple[str, list[str]]]:
    """Every `python -m qin_lightning.train ...` line of the docs, continuation lines joined, comments dropped."""
    commands = []
    for path in DOCS:
        text = re.sub(r"\\\n\s*", " ", path.read_text())
        for line in text.splitlines():
            start = line.find("python -m qin_lightning.train")
            if start < 0:
                continue
            command = line[start:].split(" #")[0].split("`")[0].split(" |")[0]
            try:
                args = shlex.split(command)[3:]
            except ValueError:
                continue
            commands.append((f"{_rel(path)}: {command.strip()}", args))
    return commands


def _composable(args: list[str]) -> list[str]:
    """The overrides of a command line as `compose` takes them: first value of a sweep, no Hydra settings."""
    out = []
    for arg in args:
        if arg.startswith("-") or arg.startswith(("hydra.", "hydra/", "[")) or "=" not in arg or "<" in arg:
            continue
        key, value = arg.split("=", 1)
        if value.startswith("glob("):
            value = "qin"
        elif "," in value and not value.startswith("["):
            value = value.split(",")[0]
        out.append(f"{key}={value}")
    return out


def test_every_documented_train_command_is_found() -> None:
    """The parametrized test below checks what `_train_commands` finds: every line naming the entry point (none
    dropped by a parse error), and enough of them (an empty list would run no case and pass)."""
    lines = [line for path in DOCS for line in re.sub(r"\\\n\s*", " ", path.read_text()).splitlines()
             if "python -m qin_lightning.train" in line]
    found = _train_commands()
    assert len(found) == len(lines) >= MIN_TRAIN_COMMANDS, (len(found), len(lines))
    composed = sum(len(_composable(args)) for _, args in found)  # 89 overrides in 44 commands when set
    assert composed >= 2 * MIN_TRAIN_COMMANDS, f"{composed} overrides composed: the split or filter lost them"


@pytest.mark.parametrize("where,args", _train_commands(), ids=lambda v: v if isinstance(v, str) else "")
def test_documented_train_commands_compose(where: str, args: list[str]) -> None:
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        compose(config_name="train", overrides=_composable(args))


def test_readme_is_a_landing_page() -> None:
    """The README lands (what it is, two commands, where to go next); the manual is docs/."""
    lines = (REPO_ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines, at most {README_MAX_LINES}"
    assert len(SITE) >= 10, f"docs/ has {len(SITE)} pages"


def test_site_builds_strict(tmp_path: Path) -> None:
    """`mkdocs build --strict` (mkdocs.yml): every page, nav entry, link, anchor, snippet and API reference
    resolves, offline. A broken link or a docstring mkdocstrings cannot render fails here."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "NO_COLOR": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = (tmp_path / "site" / "results" / "index.html").read_text()
    assert results.count("<table>") >= 5, "the results page lost its included tables"


SNIPPET = re.compile(r'^--8<-- "([^":]+)(?::(\d+):(-?\d+))?"\s*$', flags=re.M)


def test_site_tables_are_included_from_their_records() -> None:
    """Results in docs/ come from the committed records by a snippet include, never copied: each include names
    an existing record, and one that skips the record's first line skips exactly its `# ` title."""
    found = [(page, *m.groups()) for page in SITE for m in SNIPPET.finditer(page.read_text())]
    assert len(found) >= 6, f"{len(found)} includes: the pattern stopped matching"
    for page, record, start, _end in found:
        path = REPO_ROOT / record
        assert path.is_file(), f"{_rel(page)}: includes {record}, which does not exist"
        if start == "2":
            first = path.read_text().splitlines()[0]
            assert first.startswith("# "), f"{_rel(page)}: skips line 1 of {record}, which is not its title: {first}"


def _md_table(lines: list[str]) -> tuple[list[str], list[list[str]]]:
    """The header and rows of the Markdown table that starts at lines[0]."""
    rows = []
    for line in lines:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
    return rows[0], [r for r in rows[2:]]


def test_readme_results_match_their_record() -> None:
    """The README's results table (marked `<!-- record: PATH -->`) repeats cells of the record's table: each of
    its cells equals the record's cell in the column of the same name, for the row of the same first cell."""
    text = (REPO_ROOT / "README.md").read_text()
    marks = list(re.finditer(r"<!-- record: (\S+) -->\n", text))
    assert marks, "README.md: no results table marked with its record"
    for mark in marks:
        header, rows = _md_table(text[mark.end():].splitlines())
        record = (REPO_ROOT / mark.group(1)).read_text().splitlines()
        start = next(i for i, line in enumerate(record) if line.startswith("| experiment |"))
        record_header, record_rows = _md_table(record[start:])
        by_name = {row[0]: dict(zip(record_header, row)) for row in record_rows}
        assert rows and all(column in record_header for column in header[1:]), (header, record_header)
        for row in rows:
            name = row[0].strip("`")
            assert name in by_name, f"README.md: row {name} is not in {mark.group(1)}"
            for column, cell in zip(header[1:], row[1:]):
                assert cell == by_name[name][column], f"README.md: {name} {column}: {cell} != {by_name[name][column]}"


def test_paper_aucs_in_the_docs_match_the_one_table_of_them() -> None:
    """The paper's AUC beside each `+experiment=NAME` command in docs/experiments.md is the one
    `qin_lightning.report.collect.PAPER_AUC` holds (the configs point there): the docs keep no copy of their own."""
    from qin_lightning.report.collect import PAPER_AUC

    rows = re.findall(r"^\| `python -m qin_lightning\.train \+experiment=(\w+)` \|.*\| ([0-9.]+)(?: \([^)]*\))? \|$",
                      (REPO_ROOT / "docs" / "experiments.md").read_text(), flags=re.M)
    assert len(rows) >= 7, f"{len(rows)} rows with a paper AUC: the pattern stopped matching"
    for name, auc in rows:
        if name in PAPER_AUC:
            assert f"{PAPER_AUC[name]:.4f}" == auc, f"docs/experiments.md: {name} {auc} != PAPER_AUC[{name!r}]"
        else:  # beyond the paper (the winner): the figure its config's header quotes
            header = (Path(CONFIG_DIR) / "experiment" / f"{name}.yaml").read_text()
            assert re.search(rf"AUC {re.escape(auc)}\b", header), f"docs/experiments.md: {name} {auc} not in its config"
    assert sum(name in PAPER_AUC for name, _ in rows) >= 7
