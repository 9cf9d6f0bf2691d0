"""The README and docs/ stay true: the site builds, links resolve, and every metric, config key
and repository file the text names exists.

All of it reads files and the code's own definitions (no daemon, no network), so it runs in a
few seconds. mkdocs-material comes with the `test` extra.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
import yaml

from oxyd.config import RESERVED_ENV, Config

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"

# What a newcomer and an operator read: the README and the site's pages.
GUIDES = [README, *sorted(DOCS.rglob("*.md"))]
# Other prose that names files and metrics (bench notes, the reliability suite's README, the
# shipped config and deployment files).
OTHER_DOCS = [
    *sorted((ROOT / "bench").glob("*.md")),
    *sorted((ROOT / "tests").rglob("README.md")),
    ROOT / "config.example.yaml",
    *sorted((ROOT / "deploy").rglob("*.yaml")),
    *sorted((ROOT / "systemd").glob("*")),
]
ALL_DOCS = GUIDES + OTHER_DOCS

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
CODE_SPAN = re.compile(r"`[^`\n]+`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.M)


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def prose(text: str) -> str:
    """The text without fenced blocks and code spans: where Markdown links live."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def slug_github(title: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, each space a hyphen."""
    title = re.sub(r"<[^>]+>|[`*_]{1,2}(?=\S)|(?<=\S)[`*_]{1,2}", "", title).lower()
    return re.sub(r"[^\w\- ]", "", title).replace(" ", "-")


def slug_mkdocs(title: str) -> str:
    """Python-Markdown's toc slugify (what mkdocs uses)."""
    title = re.sub(r"[`*]", "", title)
    value = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode()
    value = re.sub(r"[^\w\s-]", "", value).strip().lower()
    return re.sub(r"[-\s]+", "-", value)


def anchors(path: Path) -> tuple[set[str], set[str]]:
    text = FENCE.sub("", path.read_text())
    titles = [m.group(2) for m in HEADING.finditer(text)]
    return {slug_github(t) for t in titles}, {slug_mkdocs(t) for t in titles}


def test_site_builds_strict(tmp_path: Path) -> None:
    """Every page in the nav, every page link and anchor valid (mkdocs.yml turns link and
    anchor problems into warnings, --strict into failures)."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "index.html").is_file()
    # docs/hooks/table_pipes.py: GitHub's `\|` in a table's code reads as `|` on the site too
    for page in (tmp_path / "site").glob("*.html"):
        assert not re.search(r"<code>[^<]*\\\|", page.read_text()), page.name
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]

    def pages(node: object) -> list[str]:
        if isinstance(node, str):
            return [node]
        if isinstance(node, dict):
            return [p for v in node.values() for p in pages(v)]
        if isinstance(node, list):
            return [p for v in node for p in pages(v)]
        return []

    in_nav = set(pages(nav))
    on_disk = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert on_disk == in_nav, "pages missing from the nav or nav entries without a page"
    untitled = [p for p in on_disk if not (DOCS / p).read_text().startswith("# ")]
    assert not untitled, f"pages that do not begin with their '# title': {untitled}"


def test_readme_begins_with_the_two_commands() -> None:
    """The first block is the two set-up commands, and .ci/run runs the second verbatim."""
    text = README.read_text()
    first = FENCE.search(text)
    assert first is not None and text[: first.start()].strip() == "# oxyd"
    lines = [ln for ln in first.group(0).splitlines()[1:-1] if ln.strip()]
    assert len(lines) == 2
    assert lines[0].endswith(".venv/bin/oxyd run")
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert lines[1] in ci, ".ci/run must run the README's test command verbatim"
    after = text[first.end() : first.end() + 1500]
    assert ".venv/bin/oxyd" in after and ". .venv/bin/activate" in after
    assert "foreground" in after


def test_relative_links_resolve() -> None:
    problems = []
    for doc in (d for d in ALL_DOCS if d.suffix == ".md"):
        for m in LINK.finditer(prose(doc.read_text())):
            target = m.group(1).strip("<>")
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            path_part, _, anchor = target.partition("#")
            dest = (doc.parent / path_part).resolve() if path_part else doc
            if not dest.exists():
                problems.append(f"{rel(doc)}: {target}: no such file")
                continue
            if anchor and dest.suffix == ".md":
                github, mkdocs = anchors(dest)
                if anchor not in github or (dest.is_relative_to(DOCS) and anchor not in mkdocs):
                    problems.append(f"{rel(doc)}: {target}: no such heading")
    assert not problems, "\n".join(problems)


# Where names of repository files start: a mention such as `bench/RESULTS.md` or
# oxyd/http/operation.py must exist (`data/` is the daemon's, not the repository's).
TOP = ("oxyd", "tests", "bench", "deploy", "systemd", "docs", ".ci")
REPO_PATH = re.compile(rf"(?<![\w./~-])(?:{'|'.join(re.escape(t) for t in TOP)})/[\w./*-]*")


def test_named_repository_files_exist() -> None:
    """No guide, script or module that the docs refer to is missing."""
    problems = []
    for doc in ALL_DOCS:
        for m in REPO_PATH.finditer(doc.read_text()):
            name = m.group(0).rstrip(".")
            found = list(ROOT.glob(name.rstrip("/"))) if "*" in name else [ROOT / name]
            if not found or not all(p.exists() for p in found):
                problems.append(f"{rel(doc)}: {name}")
    assert not problems, "named but missing:\n" + "\n".join(problems)
    readme = README.read_text()
    for page in re.findall(r"\]\((docs/[\w/-]+\.md)", readme):
        assert (ROOT / page).is_file(), page


def test_no_machine_paths() -> None:
    """Docs name `.venv/bin/python` and relative paths, never a developer's machine."""
    pattern = re.compile(r"(?<![\w.~-])/(?:work|tmp|root|home)(?![\w-])")
    markdown = [d for d in ALL_DOCS if d.suffix == ".md"] + [ROOT / "mkdocs.yml"]
    problems = [
        f"{rel(doc)}:{n}: {line.strip()}"
        for doc in markdown
        for n, line in enumerate(doc.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not problems, "\n".join(problems)


# ---- metrics ----

METRIC_KINDS = {
    "Counter": "counter",
    "CounterMetricFamily": "counter",
    "Gauge": "gauge",
    "GaugeMetricFamily": "gauge",
    "Histogram": "histogram",
    "Summary": "summary",
}
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("", "_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
}


def _call_kind(node: ast.AST) -> str | None:
    if not isinstance(node, ast.Call):
        return None
    f = node.func
    name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
    return METRIC_KINDS.get(name)


def defined_metrics() -> dict[str, str]:
    """Metric name -> kind, from every module that uses prometheus_client: names given to a
    metric constructor directly, or through a loop over (name, ...) tuples."""
    found: dict[str, str] = {}
    for path in (ROOT / "oxyd").rglob("*.py"):
        source = path.read_text()
        if "prometheus_client" not in source:
            continue
        tree = ast.parse(source)
        for node in ast.walk(tree):
            kind = _call_kind(node)
            if kind and node.args and isinstance(node.args[0], ast.Constant):
                found[node.args[0].value] = kind
            if isinstance(node, ast.For) and isinstance(node.target, ast.Tuple):
                names = [t.id if isinstance(t, ast.Name) else None for t in node.target.elts]
                rows = node.iter.elts if isinstance(node.iter, ast.Tuple | ast.List) else []
                for inner in (n for stmt in node.body for n in ast.walk(stmt)):
                    kind = _call_kind(inner)
                    arg = inner.args[0] if kind and inner.args else None
                    if not isinstance(arg, ast.Name) or arg.id not in names:
                        continue
                    i = names.index(arg.id)
                    for row in rows:
                        if isinstance(row, ast.Tuple) and isinstance(row.elts[i], ast.Constant):
                            found[row.elts[i].value] = kind
    return {n: k for n, k in found.items() if isinstance(n, str) and n.startswith("oxyd_")}


def exposed_metrics() -> set[str]:
    """Every sample name /metrics can show: the code's metrics with their suffixes, and the
    process collector's (namespace oxyd)."""
    from prometheus_client import ProcessCollector

    names = {n + s for n, kind in defined_metrics().items() for s in SUFFIXES[kind]}
    for family in ProcessCollector(namespace="oxyd", registry=None).collect():
        names |= {sample.name for sample in family.samples}
    return names


def test_metric_names_found_in_the_code() -> None:
    defined = defined_metrics()
    # The scan must see the metrics it checks against, or every check below passes vacuously.
    assert {"oxyd_tenants", "oxyd_sends", "oxyd_http_requests", "oxyd_reconnects"} <= set(defined)
    assert defined["oxyd_reconnects"] == "counter" and defined["oxyd_tenants"] == "gauge"


def test_every_metric_mentioned_exists() -> None:
    exposed = exposed_metrics()
    problems = [
        f"{rel(doc)}: {name}"
        for doc in ALL_DOCS
        for name in sorted(set(re.findall(r"\boxyd_[a-z0-9_]*[a-z0-9]", doc.read_text())))
        if name not in exposed
    ]
    assert not problems, "metrics named in the docs that /metrics never shows:\n" + "\n".join(
        problems
    )


def test_every_metric_is_documented() -> None:
    text = "\n".join(d.read_text() for d in GUIDES)
    missing = [
        name
        for name, kind in sorted(defined_metrics().items())
        if not any(re.search(rf"\b{name}{s}\b", text) for s in SUFFIXES[kind])
    ]
    assert not missing, f"metrics the docs never mention: {missing}"


# ---- config keys ----


def config_keys() -> dict[str, set[str]]:
    tree = Config().as_dict(mask=False)
    return {sec: set(keys) for sec, keys in tree.items() if isinstance(keys, dict)}


# `section.field` spellings that are not config keys: fields of the message object and of
# request bodies that share a name with a config section, the systemd credential `backup.key`,
# and the misspelt key of the config error example.
NOT_CONFIG = {"media.type", "media.status", "media.data_b64", "backup.key", "http.portt"}
FILE_SUFFIXES = {"md", "py", "yaml", "yml", "toml", "json", "html", "service", "sqlite3", "tar"}


def test_every_config_key_mentioned_exists() -> None:
    keys = config_keys()
    assert {"http", "supervisor", "neonize", "backup"} <= set(keys)
    dotted = re.compile(rf"(?<![\w./-])({'|'.join(keys)})\.([a-z_][a-z0-9_]*)\b(?!\()")
    problems = []
    for doc in [*GUIDES, ROOT / "config.example.yaml"]:
        text = doc.read_text()
        for section, key in set(dotted.findall(text)):
            if key in FILE_SUFFIXES or f"{section}.{key}" in NOT_CONFIG:
                continue  # a file name (media.md, backup.py) or a documented exception
            if key not in keys[section]:
                problems.append(f"{rel(doc)}: {section}.{key}")
    assert not problems, "config keys that do not exist:\n" + "\n".join(sorted(problems))


def test_yaml_examples_use_real_keys() -> None:
    """A YAML block in the docs that looks like oxyd's config uses only its keys."""
    keys = config_keys()
    problems = []
    for doc in GUIDES:
        for block in re.findall(r"^```ya?ml\n(.*?)^```", doc.read_text(), re.M | re.S):
            data = yaml.safe_load(block)
            if not isinstance(data, dict) or not set(data) & set(keys):
                continue
            for section, body in data.items():
                if section == "data_dir":
                    continue
                if section not in keys:
                    problems.append(f"{rel(doc)}: {section}")
                    continue
                unknown = [k for k in body or {} if k not in keys[section]]
                problems += [f"{rel(doc)}: {section}.{k}" for k in unknown]
    assert not problems, "\n".join(problems)


def _code_strings() -> set[str]:
    found: set[str] = set()
    for top in ("oxyd", "tests", "bench"):
        for path in (ROOT / top).rglob("*.py"):
            found |= set(re.findall(r"[\"'](OXYD_[A-Z0-9_]+)[\"']", path.read_text()))
    return found


def test_every_environment_variable_mentioned_exists() -> None:
    """OXYD_<SECTION>_<KEY> names a config key; other OXYD_* names are read somewhere."""
    keys = config_keys()
    known = {f"OXYD_{s}_{k}".upper() for s, ks in keys.items() for k in ks}
    known |= {"OXYD_DATA_DIR"} | set(RESERVED_ENV) | _code_strings()
    problems = [
        f"{rel(doc)}: {name}"
        for doc in ALL_DOCS
        for name in sorted(set(re.findall(r"\bOXYD_[A-Z0-9_]*[A-Z0-9]\b", doc.read_text())))
        if name not in known and not name.startswith("OXYD_<")
    ]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("doc", GUIDES, ids=rel)
def test_commands_use_the_virtualenv(doc: Path) -> None:
    """Shell examples call the checkout's tools as `.venv/bin/...` or after activating, never a
    bare `pip`/`pytest`/`python -m` of whatever is on the PATH first."""
    bad = re.compile(r"^\s*(?:pip|pytest|mkdocs|ruff|schemathesis)\b", re.M)
    for block in re.findall(r"^```(?:sh|bash|console)?\n(.*?)^```", doc.read_text(), re.M | re.S):
        assert not bad.search(block), f"{rel(doc)}: {bad.search(block).group(0)!r}"


def test_module_map_names_real_modules() -> None:
    """docs/development.md's module map: every package and module it names exists (a file named
    in a package's description is looked for in that package)."""
    page = (DOCS / "development.md").read_text()
    block = re.search(r"^## Module map\n+```\n(.*?)^```", page, re.M | re.S)
    assert block, "docs/development.md lost its module map"
    entries: list[tuple[str, str]] = []  # (entry, its description incl. continuation lines)
    for line in block.group(1).splitlines():
        m = re.match(r"^  (\S+)\s*(.*)$", line)
        if m:
            entries.append((m.group(1), m.group(2)))
        elif entries and line.startswith("   "):
            entries[-1] = (entries[-1][0], entries[-1][1] + " " + line.strip())
    assert len(entries) > 10
    problems = []
    for entry, text in entries:
        base = ROOT / "oxyd" / entry.rstrip("/")
        if not base.exists():
            problems.append(entry)
            continue
        where = base if base.is_dir() else base.parent
        for group in re.findall(r"[\w*]+(?:/[\w*]+)*\.py", text):
            for name in group.split("/"):
                name = name if name.endswith(".py") else name + ".py"
                if not list(where.glob(name)):
                    problems.append(f"{entry}: {name}")
    assert not problems, "module map names what does not exist: " + ", ".join(problems)
