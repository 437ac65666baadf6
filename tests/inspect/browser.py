"""Headless Chromium (Debian's package) from the tests: DOM dumps, screenshots, a tiny DOM.

No Python browser driver: ``chromium --headless --dump-dom`` prints the DOM after the page's
scripts ran, ``--screenshot`` writes a PNG. ``find()`` is None when no Chromium is installed
(``make test`` installs it where the machine allows; the tests skip with a message otherwise).
"""

import html.parser
import os
import shutil
import subprocess
import tempfile

# Chromium flags for a quiet, offline, throw-away browser (no sandbox: CI runs as root).
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--virtual-time-budget=5000",
)
SKIP_MESSAGE = (
    "Chromium is not installed: the browser tests need Debian's chromium package "
    "(`apt-get install chromium`, which `make test` runs when it may), or set "
    "GEMMASCOPE_CHROMIUM to a Chromium binary"
)


def find() -> str | None:
    """The Chromium binary: $GEMMASCOPE_CHROMIUM, else chromium or chromium-browser on PATH."""
    named = os.environ.get("GEMMASCOPE_CHROMIUM")
    if named:
        return named
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _run(binary, *args) -> str:
    with tempfile.TemporaryDirectory(prefix="chromium_profile_") as profile:
        result = subprocess.run(
            [binary, *FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    if result.returncode != 0:
        raise RuntimeError(f"chromium failed ({result.returncode}): {result.stderr[-2000:]}")
    return result.stdout


def dump_dom(binary, url: str) -> str:
    """The page's DOM, serialised after its scripts ran."""
    return _run(binary, "--dump-dom", url)


def screenshot(binary, url: str, path, size=(1280, 1400)) -> None:
    """A PNG of the page at ``size`` (width, height)."""
    _run(binary, f"--window-size={size[0]},{size[1]}", f"--screenshot={path}", url)


class Node:
    """An element: ``tag``, ``attrs`` (dict), ``children``; ``text`` joins the text below it."""

    def __init__(self, tag, attrs, parent=None):
        self.tag, self.attrs, self.parent, self.children = tag, dict(attrs), parent, []

    @property
    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text for c in self.children)

    def classes(self) -> set[str]:
        return set((self.attrs.get("class") or "").split())

    def find_all(self, tag=None, cls=None, id=None):  # noqa: A002 (DOM vocabulary)
        found = []
        for child in self.children:
            if isinstance(child, str):
                continue
            if (
                (tag is None or child.tag == tag)
                and (cls is None or cls in child.classes())
                and (id is None or child.attrs.get("id") == id)
            ):
                found.append(child)
            found.extend(child.find_all(tag, cls, id))
        return found

    def find(self, tag=None, cls=None, id=None):  # noqa: A002
        found = self.find_all(tag, cls, id)
        assert found, f"no <{tag or '*'} class={cls} id={id}> in the DOM"
        return found[0]


_VOID = {"meta", "link", "br", "img", "input", "hr", "col", "source", "wbr"}


class _Builder(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = self.current = Node("#document", {})

    def handle_starttag(self, tag, attrs):
        node = Node(tag, attrs, self.current)
        self.current.children.append(node)
        if tag not in _VOID:
            self.current = node

    def handle_endtag(self, tag):
        node = self.current
        while node is not self.root and node.tag != tag:
            node = node.parent
        if node is not self.root:
            self.current = node.parent

    def handle_data(self, data):
        self.current.children.append(data)


def parse(text: str) -> Node:
    """A DOM tree of serialised HTML (enough for the pages' structure)."""
    builder = _Builder()
    builder.feed(text)
    return builder.root
