"""The repository documents itself: nothing it tracks names a Markdown file it does not have,
points outside it, or links to a file that is not there. No database needed."""

from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parents[1]
OUTSIDE = "../" + "shared"  # spelled apart, or this file would mention it

# A file name ending in `.md`, with the path written before it, if any.
MD_MENTION = re.compile(r"[\w.$/-]*[\w-]\.md\b")
# [text](target) and ![alt](target); the target ends at a space (a title may follow) or ")".
MD_LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")

# Named where a tool writes them when it runs, not files of the repository.
WRITTEN_WHEN_RUN = {
    "pass1.md",  # scripts/conformance's summaries
    "pass2.md",
    "conf.md",  # docs/conformance.md's example `--summary` path
    "attacks-NAME.md",  # bench.attacks's report, named by --label
    "attacks-LABEL.md",
}


@cache
def tracked() -> frozenset[str]:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the tracked files are unknown")
    listing = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z"], check=True, capture_output=True
    ).stdout
    return frozenset(name for name in listing.decode().split("\0") if name)


def tracked_text() -> dict[str, str]:
    texts = {}
    for name in sorted(tracked()):
        try:
            texts[name] = (ROOT / name).read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
            continue  # binary, or deleted in the work tree
    return texts


def in_repository(base: str, target: str, *, from_root: bool = True) -> str | None:
    """The tracked path `target`, written in file `base`, names (from that file's folder, or
    else from the root); None when it names none, or leaves the repository."""
    starts = [PurePosixPath(base).parent] + ([PurePosixPath()] if from_root else [])
    for start in starts:
        parts: list[str] = []
        for part in (start / target).parts:
            if part == "..":
                if not parts:
                    return None
                parts.pop()
            elif part != ".":
                parts.append(part)
        path = "/".join(parts)
        if is_tracked(path):
            return path
    return None


def is_tracked(path: str) -> bool:
    """A tracked file, or a folder holding one."""
    return path in tracked() or any(name.startswith(path.rstrip("/") + "/") for name in tracked())


def missing_mentions(name: str, text: str) -> list[str]:
    """The `*.md` names in `text` (of tracked file `name`) that the repository lacks."""
    markdown = {PurePosixPath(n).name for n in tracked() if n.endswith(".md")}
    missing = []
    for line_number, line in enumerate(text.splitlines(), 1):
        for match in MD_MENTION.finditer(line):
            written = match.group()
            if line[: match.start()].endswith(":"):
                continue  # a web address: not a file of this repository or another's checkout
            base = PurePosixPath(written).name
            if base in WRITTEN_WHEN_RUN:
                continue
            # A path is checked as a path (`docs/x.md`, `../x.md`); `$OUT/x.md` and
            # `/tmp/x.md` are places a command writes to, checked by their name only.
            path = "/" in written and not written.startswith(("/", "$"))
            if base not in markdown or (path and in_repository(name, written) is None):
                missing.append(f"{name}:{line_number}: {written}")
    return missing


def broken_links(name: str, text: str) -> list[str]:
    broken = []
    for line_number, line in enumerate(text.splitlines(), 1):
        for match in MD_LINK.finditer(line):
            target = match.group(1).split("#", 1)[0].split("?", 1)[0]
            if not target or URL_SCHEME.match(target):
                continue  # an anchor in the same page, or a web address
            # Markdown resolves a link from the linking file's folder only.
            if target.startswith("/") or in_repository(name, target, from_root=False) is None:
                broken.append(f"{name}:{line_number}: {match.group(1)}")
    return broken


def test_no_tracked_file_points_outside_the_repository() -> None:
    offenders = [
        f"{name}:{number}"
        for name, text in tracked_text().items()
        for number, line in enumerate(text.splitlines(), 1)
        if OUTSIDE in line
    ]
    assert not offenders, f"these name {OUTSIDE}, outside the repository: {offenders}"


def test_every_markdown_file_named_is_in_the_repository() -> None:
    texts = tracked_text()
    del texts["tests/test_docs.py"]  # its examples name missing files on purpose
    missing = [m for name, text in texts.items() for m in missing_mentions(name, text)]
    assert not missing, f"Markdown files named but not in the repository: {missing}"


def test_relative_links_of_the_docs_reach_tracked_files() -> None:
    docs = [n for n in tracked() if n == "README.md" or re.fullmatch(r"docs/[^/]+\.md", n)]
    assert "docs/protocol.md" in docs
    broken = [b for name in sorted(docs) for b in broken_links(name, (ROOT / name).read_text())]
    assert not broken, f"links to files that are not in the repository: {broken}"


@pytest.mark.parametrize(
    ("name", "text", "found"),
    [
        ("README.md", "see `docs/protocol.md`", []),
        ("README.md", "see `protocol.md`", []),  # a bare name: any folder
        ("docs/protocol.md", "see `nowhere.md`", ["docs/protocol.md:1: nowhere.md"]),
        ("README.md", "see `docs/README.md`", ["README.md:1: docs/README.md"]),  # wrong folder
        ("bench/x.py", '"$OUT/pass1.md", `attacks-*.md`, f"{label}.md"', []),
        ("README.md", "https://example.com/a.md", []),
        ("README.md", f"{OUTSIDE}/attach.md", [f"README.md:1: {OUTSIDE}/attach.md"]),
    ],
)
def test_mentions_are_found(name: str, text: str, found: list[str]) -> None:
    assert missing_mentions(name, text) == found


@pytest.mark.parametrize(
    ("name", "text", "found"),
    [
        ("docs/pusher.md", "[the protocol](protocol.md#handshake)", []),
        ("README.md", "[p](docs/protocol.md) ![w](docs/screenshots/wall.png)", []),
        ("README.md", "[x](https://example.com/a.md) [y](#contents)", []),
        ("README.md", "[a](docs/attach.md)", []),
        ("README.md", "[a](docs/none.md)", ["README.md:1: docs/none.md"]),
        ("README.md", f"[a]({OUTSIDE}/attach.md)", [f"README.md:1: {OUTSIDE}/attach.md"]),
        ("docs/protocol.md", "[r](../README.md)", []),
        ("docs/protocol.md", "[a](docs/attach.md)", ["docs/protocol.md:1: docs/attach.md"]),
    ],
)
def test_links_are_found(name: str, text: str, found: list[str]) -> None:
    assert broken_links(name, text) == found
