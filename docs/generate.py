"""The parts of the docs made from the package: the options and fixtures tables, the markers list
and the fixtures' docstrings, from ``options.OPTIONS``, the fixtures of ``plugin.py`` and
``markers.MARKERS``, so they cannot drift from the code.

Each part is written into its page between two comments, so that the page reads the same on a
forge or in an editor as in the built docs::

    <!-- generated: http-options-table -->
    ...
    <!-- end generated -->

After changing an option, a fixture's docstring or a marker, rewrite them::

    python docs/generate.py            # rewrite the stale parts
    python docs/generate.py --check    # exit 1 naming the stale pages, write nothing

The docs test (tests/test_docs_and_packaging.py) and the Sphinx build (docs/conf.py) fail on a
stale part too. This module imports the package, never Sphinx.
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Callable
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))

from pytest_jumpstarter_http import markers, options, plugin  # noqa: E402

FIXTURES = ("served_dir", "http_server", "http_url", "http_server_factory", "http_exporter_client")
DEFAULT = re.compile(r"\s*\(default: (?P<default>[^)]*(?:\([^)]*\))?[^)]*)\)\s*$")
#: A generated part of a page: its kind, its argument (a fixture's name), and what is written now.
PART = re.compile(
    r"(?P<open><!-- generated: (?P<kind>[\w-]+)(?: (?P<argument>\w+))? -->\n)"
    r"(?P<body>.*?)"
    r"(?P<close><!-- end generated -->)",
    re.DOTALL,
)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _function(name: str) -> Callable[..., object]:
    definition = getattr(plugin, name)
    # pytest >= 8.4 wraps fixture functions; the wrapped one has the annotations and the docstring.
    function: Callable[..., object] = getattr(definition, "_get_wrapped_function", lambda: definition)()
    return function


def option_rows() -> list[tuple[str, str, str, str]]:
    """(command line, ini key, default, help) for every option, in the order pytest lists them."""
    rows = []
    for option in options.OPTIONS:
        match = DEFAULT.search(option.help)
        default = match["default"] if match else ""
        text = option.help[: match.start()] if match else option.help
        flag = option.flag if option.metavar is None else f"{option.flag}={option.metavar}"
        rows.append((flag, option.ini, default, text))
    return rows


def fixture_rows() -> list[tuple[str, str, str, str]]:
    """(name, pytest scope, yielded type, first sentence of the docstring) for every public fixture."""
    rows = []
    for name in FIXTURES:
        function = _function(name)
        marker = getattr(getattr(plugin, name), "_fixture_function_marker", None)
        scope = getattr(marker, "scope", "function")
        returns = str(inspect.signature(function).return_annotation)
        returns = re.sub(r"^Iterator\[(.*)\]$", r"\1", returns)
        doc = inspect.cleandoc(function.__doc__ or "")
        rows.append((name, scope, returns, doc.split("\n\n")[0].replace("\n", " ")))
    return rows


def options_table(argument: str | None = None) -> list[str]:
    lines = ["| Command line | ini key | Default | What it does |", "|---|---|---|---|"]
    for flag, ini, default, text in option_rows():
        lines.append(f"| `{flag}` | `{ini}` | {_cell(default)} | {_cell(text)} |")
    return lines


def fixtures_table(argument: str | None = None) -> list[str]:
    lines = ["| Fixture | pytest scope | Yields | What it is |", "|---|---|---|---|"]
    for name, scope, returns, doc in fixture_rows():
        lines.append(f"| `{name}` | {scope} | `{returns}` | {_cell(doc)} |")
    return lines


def fixture_doc(argument: str | None = None) -> list[str]:
    """The whole docstring of the fixture ``argument``, as in ``generated: http-fixture-doc served_dir``."""
    if argument not in FIXTURES:
        raise ValueError(f"http-fixture-doc {argument!r} is no fixture of the plugin; give one of {FIXTURES}")
    _, scope, returns, _ = next(row for row in fixture_rows() if row[0] == argument)
    lines = [f"*pytest scope:* {scope}. *Yields:* `{returns}`.", ""]
    return lines + inspect.cleandoc(_function(argument).__doc__ or "").splitlines()


def markers_list(argument: str | None = None) -> list[str]:
    lines: list[str] = []
    for line in markers.MARKERS:
        signature, _, text = line.partition(": ")
        lines += [f"`@pytest.mark.{signature}`", f": {text[0].upper()}{text[1:]}.", ""]
    return lines[:-1]


#: Every kind of generated part, by the name its comment gives.
KINDS: dict[str, Callable[[str | None], list[str]]] = {
    "http-options-table": options_table,
    "http-fixtures-table": fixtures_table,
    "http-fixture-doc": fixture_doc,
    "http-markers-list": markers_list,
}


def body(kind: str, argument: str | None) -> str:
    """What a part holds: a blank line, the generated lines, a blank line (Markdown ends an HTML
    comment's block at its line, and the blank lines keep the part a block of its own)."""
    if kind not in KINDS:
        raise ValueError(f"'generated: {kind}' is no kind of generated part; give one of {', '.join(KINDS)}")
    return "\n" + "\n".join(KINDS[kind](argument)) + "\n\n"


def render(text: str) -> str:
    """``text`` (a page) with every generated part as the code makes it now."""
    return PART.sub(lambda m: m["open"] + body(m["kind"], m["argument"]) + m["close"], text)


def pages() -> list[Path]:
    return sorted(
        path for path in DOCS.rglob("*.md") if "_build" not in path.parts and "examples" not in path.parts
    )


def stale() -> list[Path]:
    """The pages whose generated parts differ from what the code makes now."""
    return [page for page in pages() if render(text := page.read_text()) != text]


def main(argv: list[str]) -> int:
    if argv not in ([], ["--check"]):
        print(f"usage: python {Path(__file__).name} [--check]", file=sys.stderr)
        return 2
    behind = stale()
    for page in behind:
        if argv:
            print(f"{page.relative_to(DOCS.parent)}: generated parts are stale; run python docs/generate.py")
        else:
            page.write_text(render(page.read_text()))
            print(f"rewrote the generated parts of {page.relative_to(DOCS.parent)}")
    return 1 if argv and behind else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
