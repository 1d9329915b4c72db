"""The documentation holds together: links, files it names, the API reference, the README.

Plain file parsing: neither mkdocs nor a Markdown library is needed. ``mkdocs build
--strict`` (in ``.ci/run``) checks the rendered site; these tests keep the sources honest
where a reader meets them first, on GitHub.
"""

from __future__ import annotations

import importlib
import re
import tomllib
import unicodedata
from typing import TYPE_CHECKING

import pytest
from _helpers import ROOT

import batched

if TYPE_CHECKING:
    from pathlib import Path

DOCS = ROOT / "docs"
README = ROOT / "README.md"
REFERENCE = DOCS / "reference.md"
PAGES = sorted(DOCS.glob("*.md"))
SOURCES = [README, *PAGES]

# The README's first code block; .ci/run greps for the second command's test command.
COMMANDS = (
    "python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[demo]'"
    " && python -m batched demo\n"
    "python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[test]'"
    ' && python -m pytest -q -p no:cacheprovider -m "not slow"\n'
)
TEST_COMMAND = 'python -m pytest -q -p no:cacheprovider -m "not slow"'

_FENCE = re.compile(r"^( {0,8})(`{3,}|~{3,})(.*)$")
_INLINE_LINK = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]"  # [text], which may hold [brackets]
    r"\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)"  # (target "title")
)
_REFERENCE_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_FILE_NAMED = re.compile(r"\b((?:examples|tests|benchmarks)/[\w./-]+\.py)(?:::(\w+))?")


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def split_fences(text: str) -> tuple[list[str], list[tuple[str, str]]]:
    """The lines outside fenced code blocks (fenced lines blanked, so numbering stays), and
    the fenced blocks as (info string, content), in order."""
    prose: list[str] = []
    blocks: list[tuple[str, str]] = []
    fence: str | None = None
    info = ""
    body: list[str] = []
    for line in text.splitlines():
        match = _FENCE.match(line)
        if fence is None:
            if match:
                fence, info, body = match.group(2), match.group(3).strip(), []
                prose.append("")
            else:
                prose.append(line)
        else:
            prose.append("")
            if match and match.group(2).startswith(fence) and not match.group(3).strip():
                blocks.append((info, "".join(f"{part}\n" for part in body)))
                fence = None
            else:
                body.append(line)
    return prose, blocks


def links(text: str) -> list[str]:
    """Every link target in Markdown prose: inline links and reference definitions."""
    prose, _ = split_fences(text)
    found: list[str] = []
    for line in prose:
        definition = _REFERENCE_DEF.match(line)
        if definition:
            found.append(definition.group(1))
            continue
        found += _INLINE_LINK.findall(_CODE_SPAN.sub("", line))
    return found


def slugify(heading: str) -> str:
    """A heading's anchor, as mkdocs' ``toc`` extension (and, for plain headings, GitHub)
    makes it."""
    text = re.sub(r"<[^>]+>", "", heading).replace("`", "")
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link: its text
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(text: str) -> set[str]:
    """The anchors of a page's headings (a repeated heading gets ``_1``, ``_2``, ...)."""
    prose, _ = split_fences(text)
    seen: dict[str, int] = {}
    found: set[str] = set()
    for line in prose:
        match = _HEADING.match(line)
        if not match:
            continue
        slug = slugify(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}_{count}")
    return found


def reference_blocks(text: str) -> dict[str, list[str] | None]:
    """Each ``::: module`` block of the API reference, and its ``members:`` list (None:
    the block lists none, so it documents the module's public names)."""
    blocks: dict[str, list[str] | None] = {}
    current: str | None = None
    in_members = False
    members_indent = 0
    for line in text.splitlines():
        block = re.match(r"^:::\s+(\S+)\s*$", line)
        if block:
            current = block.group(1)
            blocks[current] = None
            in_members = False
            continue
        if current is None:
            continue
        if line.strip() and not line.startswith((" ", "\t")):
            current, in_members = None, False  # the block's options have ended
            continue
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if stripped == "members:":
            blocks[current] = []
            in_members, members_indent = True, indent
        elif in_members and stripped.startswith("- ") and indent >= members_indent:
            members = blocks[current]
            assert members is not None
            members.append(stripped[2:].strip())
        elif stripped:
            in_members = False
    return blocks


def undocumented(names: list[str], reference: str) -> list[str]:
    """The names missing from the reference: neither a member of its ``::: batched`` block,
    nor a module with a block of its own, nor (with a ``::: batched`` block that lists no
    members) a name the block documents by itself."""
    blocks = reference_blocks(reference)
    root = blocks.get("batched", [])  # no root block at all: nothing is documented by it
    missing = []
    for name in names:
        if f"batched.{name}" in blocks:
            continue  # a submodule with a block of its own (batched.aio)
        if root is None:
            continue  # `::: batched` without members: every public name is rendered
        if name not in root:
            missing.append(name)
    return missing


def _resolves(dotted: str) -> bool:
    """Whether a dotted path names an importable module or an attribute of one."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for part in parts[cut:]:
                obj = getattr(obj, part)
        except AttributeError:
            return False
        return True
    return False


def reference_anchor_ok(anchor: str, reference: str) -> bool:
    """An anchor of the API reference: an object path that imports and that a block
    documents (mkdocstrings names its anchors after the object's path)."""
    if anchor in anchors(reference):
        return True
    if not anchor.startswith("batched") or not _resolves(anchor):
        return False
    for module, members in reference_blocks(reference).items():
        if anchor == module:
            return True
        if not anchor.startswith(f"{module}."):
            continue
        first = anchor[len(module) + 1 :].split(".")[0]
        if members is None:
            public = getattr(importlib.import_module(module), "__all__", None)
            if public is None or first in public:
                return True
        elif first in members:
            return True
    return False


# -- the tests -------------------------------------------------------------------------


@pytest.mark.parametrize("source", SOURCES, ids=_rel)
def test_relative_links_point_at_files_and_anchors(source: Path) -> None:
    text = source.read_text(encoding="utf-8")
    broken = []
    for target in links(text):
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):
            continue  # https:, mailto:, ...: not a file of this repository
        path_part, _, anchor = target.partition("#")
        path = (source.parent / path_part).resolve() if path_part else source
        if not path.exists():
            broken.append(f"{target} (no file {path})")
            continue
        if not anchor or path.suffix != ".md":
            continue
        page = path.read_text(encoding="utf-8")
        ok = reference_anchor_ok(anchor, page) if path == REFERENCE else anchor in anchors(page)
        if not ok:
            broken.append(f"{target} (no anchor #{anchor} in {_rel(path)})")
    assert not broken, f"{_rel(source)}: broken links: {broken}"


@pytest.mark.parametrize("source", SOURCES, ids=_rel)
def test_files_named_in_the_docs_exist(source: Path) -> None:
    # examples/*.py above all, and the tests and benchmarks the pages point to.
    text = source.read_text(encoding="utf-8")
    missing = []
    for path, name in _FILE_NAMED.findall(text):
        file = ROOT / path
        if not file.is_file():
            missing.append(path)
        elif name and not re.search(rf"^\s*(async\s+)?def {name}\b", file.read_text(), re.M):
            missing.append(f"{path}::{name}")
    assert not missing, f"{_rel(source)} names what does not exist: {missing}"


def test_the_file_finder_finds_the_examples() -> None:
    named = {
        path
        for source in SOURCES
        for path, _ in _FILE_NAMED.findall(source.read_text(encoding="utf-8"))
    }
    assert "examples/quickstart.py" in named  # the finder finds what it must


def test_every_public_name_is_in_the_api_reference() -> None:
    reference = REFERENCE.read_text(encoding="utf-8")
    missing = undocumented(list(batched.__all__), reference)
    assert not missing, f"add these to docs/reference.md (the `::: batched` members): {missing}"


def test_the_reference_lists_no_stale_name() -> None:
    members = reference_blocks(REFERENCE.read_text(encoding="utf-8")).get("batched") or []
    stale = [name for name in members if name not in batched.__all__]
    assert not stale, f"docs/reference.md lists names batched does not export: {stale}"
    assert len(members) == len(set(members)), "a name is listed twice"


def test_the_reference_check_can_fail() -> None:
    reference = "::: batched\n    options:\n      members:\n        - Batcher\n\n::: batched.aio\n"
    assert reference_blocks(reference) == {"batched": ["Batcher"], "batched.aio": None}
    assert undocumented(["Batcher", "aio", "Fifo"], reference) == ["Fifo"]
    assert undocumented(["Fifo"], "# API reference\n\nFifo\n") == ["Fifo"]
    assert undocumented(["Fifo"], "::: batched\n") == []  # no members list: all rendered


def test_the_readme_commands_are_its_first_code_block() -> None:
    _, blocks = split_fences(README.read_text(encoding="utf-8"))
    assert blocks, "README.md has no code block"
    info, content = blocks[0]
    assert info == "bash"
    assert content == COMMANDS
    assert f"&& {TEST_COMMAND}" in content  # what .ci/run greps for


def test_the_nav_lists_every_page_and_only_pages_that_exist() -> None:
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    nav = config.split("\nnav:\n", 1)[1].split("\n\n", 1)[0]
    listed = re.findall(r"^\s+- [^:]+:\s+(\S+\.md)\s*$", nav, re.M)
    assert listed, "mkdocs.yml has no nav"
    assert sorted(listed) == sorted(page.name for page in PAGES)


def test_the_link_and_anchor_finders_work() -> None:
    text = (
        "See [a](docs/a.md#x) and [b][ref], `[not](code.md)`.\n"
        "```python\n[not](fenced.md)\n```\n"
        "[ref]: docs/b.md\n"
    )
    assert links(text) == ["docs/a.md#x", "docs/b.md"]
    page = (
        "# Title\n## The cut: rules, strategy and length budget\n"
        "### `async with embed:`\n## Title\n"
    )
    assert anchors(page) == {
        "title",
        "the-cut-rules-strategy-and-length-budget",
        "async-with-embed",
        "title_1",
    }


def test_the_readme_links_work_on_pypi() -> None:
    # PyPI shows README.md away from the repository: a relative link or image breaks there.
    # So every link is absolute, and those into the repository name files that exist.
    repo = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "urls"
    ]["Repository"]
    blob = f"{repo}/blob/main/"
    raw = repo.replace("https://github.com/", "https://raw.githubusercontent.com/") + "/main/"
    text = README.read_text(encoding="utf-8")
    broken = []
    for target in links(text):
        if not re.match(r"^https?://", target):
            broken.append(f"{target} (relative)")
            continue
        for prefix in (blob, raw):
            if target.startswith(prefix):
                path_part, _, anchor = target[len(prefix) :].partition("#")
                path = ROOT / path_part
                if not path.exists():
                    broken.append(f"{target} (no file {path_part})")
                elif anchor and anchor not in anchors(path.read_text(encoding="utf-8")):
                    broken.append(f"{target} (no anchor #{anchor} in {path_part})")
    prose, _ = split_fences(text)
    images = re.findall(r"!\[[^\]]*\]\(\s*(\S+?)\s*\)", "\n".join(prose))
    assert images, "README.md shows no image: the image check below checks nothing"
    broken += [f"{image} (not served raw: {raw}...)" for image in images if raw not in image]
    assert not broken, f"README.md: links that break on PyPI: {broken}"
    assert any(target.startswith(blob) for target in links(text))  # the check checked some
