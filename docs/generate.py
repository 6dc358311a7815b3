"""The parts of the docs made from the package and the repository, written into the pages so that
they read the same on a forge or in an editor as in the built docs, and cannot drift from what
they show:

- the options and fixtures tables, the markers list and the fixtures' docstrings, from
  ``options.OPTIONS``, the fixtures of ``plugin.py`` and ``markers.MARKERS``;
- the API reference of every class the package exports, from the classes themselves (their
  docstrings, signatures and ``#:`` comments, inherited members included);
- each example: the text of a file the tests run (``docs/examples/``, ``examples/``);
- the changelog, from ``CHANGELOG.md``.

Each part is written into its page between two comments; an argument follows the kind when it
has one (a fixture, a class, a file relative to the page and what part of it to show)::

    <!-- generated: http-options-table -->
    ...
    <!-- end generated -->
    <!-- generated: example examples/test_first.py -->
    <!-- generated: example ../examples/pytest.ini --start-at=[pytest] --end-at=http_root -->
    <!-- generated: api HttpServerHandle -->

After changing an option, a fixture's docstring, a marker, an exported class, an example or the
changelog, rewrite them::

    python docs/generate.py            # rewrite the stale parts
    python docs/generate.py --check    # exit 1 naming the stale pages, write nothing

The docs test (tests/test_docs_and_packaging.py) and the Sphinx build (docs/conf.py) fail on a
stale part too. This module imports the package, never Sphinx.
"""

from __future__ import annotations

import ast
import inspect
import os
import re
import shlex
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

DOCS = Path(__file__).resolve().parent
TOP = DOCS.parent
sys.path.insert(0, str(TOP))

import pytest_jumpstarter_http  # noqa: E402
from pytest_jumpstarter_http import markers, options, plugin  # noqa: E402

FIXTURES = ("served_dir", "http_server", "http_url", "http_server_factory", "http_exporter_client")
#: The page that holds the API reference, one section per exported class (``## HttpServerHandle``).
API_PAGE = DOCS / "api.md"
#: The exported classes a user constructs; the others come from fixtures and handle methods, so
#: their constructors' arguments are no business of users.
CONSTRUCTED = ("LoopbackServer",)
DEFAULT = re.compile(r"\s*\(default: (?P<default>[^)]*(?:\([^)]*\))?[^)]*)\)\s*$")
#: A generated part of a page: its kind, its argument (a fixture, a class, a file), and what is
#: written now.
PART = re.compile(
    r"(?P<open><!-- generated: (?P<kind>[\w-]+)(?: (?P<argument>[^\n]*?))? -->\n)"
    r"(?P<body>.*?)"
    r"(?P<close><!-- end generated -->)",
    re.DOTALL,
)
#: The fence language of an example, by its file's suffix.
LANGUAGES = {".py": "python", ".ini": "ini", ".toml": "toml", ".yaml": "yaml", ".yml": "yaml", ".cfg": "ini"}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _function(name: str) -> Callable[..., object]:
    definition = getattr(plugin, name)
    # pytest >= 8.4 wraps fixture functions; the wrapped one has the annotations and the docstring.
    function: Callable[..., object] = getattr(definition, "_get_wrapped_function", lambda: definition)()
    return function


def _link(here: Path, target: Path, anchor: str = "") -> str:
    """The relative link from a page in ``here`` to ``target`` (a page), as a forge and MyST read it."""
    return os.path.relpath(target, here).replace(os.sep, "/") + (f"#{anchor}" if anchor else "")


# --- options, fixtures, markers --------------------------------------------------------------


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


def options_table(argument: str | None, here: Path) -> list[str]:
    lines = ["| Command line | ini key | Default | What it does |", "|---|---|---|---|"]
    for flag, ini, default, text in option_rows():
        lines.append(f"| `{flag}` | `{ini}` | {_cell(default)} | {_cell(text)} |")
    return lines


def fixtures_table(argument: str | None, here: Path) -> list[str]:
    """The fixtures table; ``members`` adds, for a fixture that yields an exported class, the
    names of that class's members (the README's table, which is all a reader of it may see)."""
    if argument not in (None, "members"):
        raise ValueError(f"http-fixtures-table takes no argument or 'members', not {argument!r}")
    lines = ["| Fixture | pytest scope | Yields | What it is |", "|---|---|---|---|"]
    for name, scope, returns, doc in fixture_rows():
        more = (
            f" {members_sentence(returns, here)}"
            if argument and returns in pytest_jumpstarter_http.__all__
            else ""
        )
        lines.append(f"| `{name}` | {scope} | `{returns}` | {_cell(doc + more)} |")
    return lines


def fixture_doc(argument: str | None, here: Path) -> list[str]:
    """The whole docstring of the fixture ``argument``, as in ``generated: http-fixture-doc served_dir``,
    and the members of the class it yields when the package exports that class."""
    if argument not in FIXTURES:
        raise ValueError(f"http-fixture-doc {argument!r} is no fixture of the plugin; give one of {FIXTURES}")
    _, scope, returns, _ = next(row for row in fixture_rows() if row[0] == argument)
    lines = [f"*pytest scope:* {scope}. *Yields:* `{returns}`.", ""]
    lines += inspect.cleandoc(_function(argument).__doc__ or "").splitlines()
    if returns in pytest_jumpstarter_http.__all__:
        lines += ["", members_sentence(returns, here)]
    return lines


def markers_list(argument: str | None, here: Path) -> list[str]:
    lines: list[str] = []
    for line in markers.MARKERS:
        signature, _, text = line.partition(": ")
        lines += [f"`@pytest.mark.{signature}`", f": {text[0].upper()}{text[1:]}.", ""]
    return lines[:-1]


# --- the API reference -----------------------------------------------------------------------


class Member(NamedTuple):
    """One public member of an exported class, as the reference shows it."""

    name: str
    kind: str  # "attribute", "property" or "method"
    owner: type  # the class that defines it
    doc: str
    signature: str = ""  # a method's parameters and return, an attribute's or property's type

    @property
    def label(self) -> str:
        return f"{self.name}()" if self.kind == "method" else self.name


class _Raw(str):
    """An annotation kept as the source spells it (the package postpones its annotations)."""

    def __repr__(self) -> str:
        return str(self)


def _signature(function: Callable[..., object]) -> str:
    signature = inspect.signature(function)
    parameters = [
        parameter.replace(
            annotation=_Raw(parameter.annotation)
            if isinstance(parameter.annotation, str)
            else parameter.annotation
        )
        for parameter in signature.parameters.values()
        if parameter.name not in ("self", "cls")
    ]
    returns = signature.return_annotation
    returns = _Raw(returns) if isinstance(returns, str) else returns
    return str(signature.replace(parameters=parameters, return_annotation=returns))


def _code(name: str, signature: str) -> list[str]:
    """``name(signature)`` in a Python fence, one parameter a line when it is long, as black writes it."""
    if len(name + signature) <= 88:
        return ["```python", name + signature, "```"]
    inside, _, returns = signature[1:].rpartition(")")
    parameters, depth, start = [], 0, 0
    for at, char in enumerate(inside):
        depth += (char in "([{") - (char in ")]}")
        if char == "," and depth == 0:
            parameters.append(inside[start:at].strip())
            start = at + 1
    parameters.append(inside[start:].strip())
    return ["```python", f"{name}(", *(f"    {parameter}," for parameter in parameters), f"){returns}", "```"]


def _markdown(doc: str) -> list[str]:
    """A docstring (reST as the package writes them) as Markdown: ``x`` and :role:`x` as code,
    a ``::`` literal block as a Python fence."""
    doc = re.sub(r":(?:meth|func):`~?(?:[\w.]*\.)?(\w+)`", r"`\1()`", doc)
    doc = re.sub(r":\w+:`~?(?:[\w.]*\.)?(\w+)`", r"`\1`", doc)
    doc = re.sub(r"``(.+?)``", r"`\1`", doc)
    lines: list[str] = []
    block: list[str] | None = None
    for text in doc.splitlines():
        line = text
        if block is not None:
            if line.strip() and not line.startswith(" "):
                lines += ["```python", *textwrap.dedent("\n".join(block)).strip("\n").splitlines(), "```", ""]
                block = None
            else:
                block.append(line)
                continue
        if line.endswith("::"):
            line, block = line[:-1], []
        lines.append(line)
    if block is not None:
        lines += ["```python", *textwrap.dedent("\n".join(block)).strip("\n").splitlines(), "```"]
    return lines


def _attributes(klass: type) -> Iterator[tuple[str, str, str]]:
    """(name, type, ``#:`` comment) of the attributes a class of the package defines in its body or
    sets in its ``__init__``, in source order."""
    source = inspect.getsource(klass)
    lines = textwrap.dedent(source).splitlines()
    tree = ast.parse(textwrap.dedent(source))
    (body,) = tree.body
    assert isinstance(body, ast.ClassDef)
    found: list[tuple[int, str, str]] = []
    for node in body.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            found.append((node.lineno, node.target.id, ast.unparse(node.annotation)))
        if isinstance(node, ast.FunctionDef) and node.name == "__init__":
            for statement in ast.walk(node):
                targets = statement.targets if isinstance(statement, ast.Assign) else []
                if isinstance(statement, ast.AnnAssign):
                    targets = [statement.target]
                for target in targets:
                    if isinstance(target, ast.Attribute) and getattr(target.value, "id", "") == "self":
                        found.append((statement.lineno, target.attr, ""))
    for lineno, name, annotation in found:
        comment: list[str] = []
        for line in reversed(lines[: lineno - 1]):
            if not line.strip().startswith("#:"):
                break
            comment.insert(0, line.strip()[2:].strip())
        yield name, annotation, " ".join(comment)


def _is_public(name: str) -> bool:
    return not name.startswith("_") or name == "__call__"


def members(name: str) -> list[Member]:
    """The public members of the exported class ``name``, inherited ones included, in the order
    the package's classes define them (a base class's first); methods and properties without a
    docstring are left out, as autodoc leaves them out."""
    if name not in pytest_jumpstarter_http.__all__:
        raise ValueError(
            f"api {name!r} is no class the package exports; give one of {pytest_jumpstarter_http.__all__}"
        )
    cls = getattr(pytest_jumpstarter_http, name)
    ours = [
        klass for klass in reversed(cls.__mro__) if klass.__module__.startswith("pytest_jumpstarter_http")
    ]
    found: dict[str, Member] = {}
    for klass in ours:
        for attribute, annotation, doc in _attributes(klass):
            if _is_public(attribute) and not isinstance(
                inspect.getattr_static(cls, attribute, None), property
            ):
                old = found.get(attribute)
                found[attribute] = Member(
                    attribute,
                    "attribute",
                    klass,
                    doc or (old.doc if old else ""),
                    annotation or (old.signature if old else ""),
                )
        for attribute in vars(klass):
            if not _is_public(attribute):
                continue
            value = inspect.getattr_static(cls, attribute)  # the most derived definition
            owner = next(k for k in cls.__mro__ if attribute in vars(k))
            doc = inspect.getdoc(value) or ""
            if isinstance(value, property) and doc:
                returns = inspect.signature(value.fget).return_annotation if value.fget else ""
                found[attribute] = Member(
                    attribute,
                    "property",
                    owner,
                    doc,
                    "" if returns is inspect.Parameter.empty else str(returns),
                )
            elif isinstance(value, (staticmethod, classmethod)) and doc:
                found[attribute] = Member(
                    attribute, "method", owner, doc, _signature(getattr(cls, attribute))
                )
            elif inspect.isfunction(value) and doc:
                found[attribute] = Member(attribute, "method", owner, doc, _signature(value))
    return list(found.values())


def members_sentence(name: str, here: Path) -> str:
    """One sentence naming every member of the exported class ``name``, linked to its reference."""
    labels = ", ".join(f"`{member.label}`" for member in members(name))
    return f"[`{name}`]({_link(here, API_PAGE, name.lower())}) has {labels}."


def api(argument: str | None, here: Path) -> list[str]:
    """The reference of the exported class ``argument``: its docstring, then each member."""
    name = argument or ""
    all_members = members(name)
    cls = getattr(pytest_jumpstarter_http, name)
    exported = pytest_jumpstarter_http.__all__
    bases = [base.__name__ for base in cls.__bases__ if base.__name__ in exported]
    head = f"`from pytest_jumpstarter_http import {name}`"
    if bases:
        head += ", a subclass of " + ", ".join(f"[`{base}`](#{base.lower()})" for base in bases)
    lines = [head + ".", ""]
    if name in CONSTRUCTED:
        lines += [*_code(name, _signature(cls.__init__).removesuffix(" -> None")), ""]
    lines += _markdown(inspect.getdoc(cls) or "")
    for member in all_members:
        lines += ["", f"### `{member.label}`", ""]
        owner = member.owner.__name__
        inherited = (
            f"Inherited from [`{owner}`](#{owner.lower()})." if owner in exported and owner != name else ""
        )
        if member.kind == "method":
            lines += [*_code(member.name, member.signature), ""]
            lines += [inherited, ""] if inherited else []
        else:
            typed = f": `{member.signature}`" if member.signature else ""
            lines += [f"*{member.kind}*{typed}. {inherited}".rstrip(), ""]
        lines += _markdown(member.doc) if member.doc else []
        while lines[-1] == "":
            lines.pop()
    return lines


# --- examples and the changelog --------------------------------------------------------------


def example_file(argument: str | None, here: Path) -> Path:
    """The file an ``example`` part shows, whose path is relative to its page."""
    path = (here / shlex.split(argument or "")[0]).resolve()
    if not path.is_file():
        raise ValueError(f"'generated: example {argument}': {path} is no file")
    return path


def example(argument: str | None, here: Path) -> list[str]:
    """A file's text in a fence, or the part of it that ``--start-at``/``--start-after`` and
    ``--end-at``/``--end-before`` mark (a line holding the text, kept or not)."""
    path = example_file(argument, here)
    cuts = dict(
        re.fullmatch(r"--([\w-]+)=(.*)", word, re.DOTALL).groups() for word in shlex.split(argument or "")[1:]
    )  # type: ignore[union-attr]
    unknown = set(cuts) - {"start-at", "start-after", "end-at", "end-before"}
    if unknown:
        raise ValueError(
            f"'generated: example {argument}': no option {sorted(unknown)}; "
            "give --start-at, --start-after, --end-at or --end-before"
        )
    lines = path.read_text().splitlines()

    def line_of(option: str) -> int:
        """The first line of what is left of the file that holds the option's text."""
        at = next((i for i, line in enumerate(lines) if cuts[option] in line), None)
        if at is None:
            raise ValueError(
                f"'generated: example {argument}': no line of {path.name} holds {cuts[option]!r}"
            )
        return at

    for option, keep in (("start-at", True), ("start-after", False)):
        if option in cuts:
            at = line_of(option)
            lines = lines[at if keep else at + 1 :]
    for option, keep in (("end-at", True), ("end-before", False)):
        if option in cuts:
            at = line_of(option)
            lines = lines[: at + 1 if keep else at]
    fence = "```"
    while any(line.lstrip().startswith(fence) for line in lines):
        fence += "`"
    return [fence + LANGUAGES.get(path.suffix, "text"), *lines, fence]


def changelog(argument: str | None, here: Path) -> list[str]:
    return (TOP / "CHANGELOG.md").read_text().rstrip("\n").splitlines()


#: Every kind of generated part, by the name its comment gives.
KINDS: dict[str, Callable[[str | None, Path], list[str]]] = {
    "http-options-table": options_table,
    "http-fixtures-table": fixtures_table,
    "http-fixture-doc": fixture_doc,
    "http-markers-list": markers_list,
    "api": api,
    "example": example,
    "changelog": changelog,
}


def body(kind: str, argument: str | None, here: Path = DOCS) -> str:
    """What a part holds: a blank line, the generated lines, a blank line (Markdown ends an HTML
    comment's block at its line, and the blank lines keep the part a block of its own)."""
    if kind not in KINDS:
        raise ValueError(f"'generated: {kind}' is no kind of generated part; give one of {', '.join(KINDS)}")
    return "\n" + "\n".join(KINDS[kind](argument, here)) + "\n\n"


def render(text: str, here: Path = DOCS) -> str:
    """``text`` (a page in the folder ``here``) with every generated part as the code makes it now."""
    return PART.sub(lambda m: m["open"] + body(m["kind"], m["argument"], here) + m["close"], text)


def pages() -> list[Path]:
    """The pages that may hold generated parts: the docs and the README."""
    docs = (
        path for path in DOCS.rglob("*.md") if "_build" not in path.parts and "examples" not in path.parts
    )
    return [*sorted(docs), TOP / "README.md"]


def stale() -> list[Path]:
    """The pages whose generated parts differ from what the code makes now."""
    return [page for page in pages() if render(text := page.read_text(), page.parent) != text]


def main(argv: list[str]) -> int:
    if argv not in ([], ["--check"]):
        print(f"usage: python {Path(__file__).name} [--check]", file=sys.stderr)
        return 2
    behind = stale()
    for page in behind:
        if argv:
            print(f"{page.relative_to(TOP)}: generated parts are stale; run python docs/generate.py")
        else:
            page.write_text(render(page.read_text(), page.parent))
            print(f"rewrote the generated parts of {page.relative_to(TOP)}")
    return 1 if argv and behind else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
