"""The documentation and the release artefacts: the docs build, their examples run, the wheel works.

Each example the docs show is a file under docs/examples/ (or examples/) that these tests run,
so a page cannot show code that no longer works. The packaging test builds the sdist and wheel,
installs the wheel into a fresh virtual environment and runs an example against the installed
copy; deselect it with ``-k "not wheel"`` (it needs ``build`` and ``twine``, and PyPI).
"""

from __future__ import annotations

import ast
import html.parser
import importlib.util
import re
import shutil
import sys
import urllib.parse
import zipfile
from pathlib import Path

import pytest
from jumpstarter_helpers import jmp_shell, require
from subprocess_runs import JUnit, clean_env, python_pytest, run

import pytest_jumpstarter_http
from pytest_jumpstarter_http import markers, options

TOP = Path(__file__).resolve().parent.parent
DOCS = TOP / "docs"
DOC_EXAMPLES = DOCS / "examples"
PACKAGE = TOP / "pytest_jumpstarter_http"
FIXTURES = ("served_dir", "http_server", "http_url", "http_server_factory", "http_exporter_client")
#: The doc example of a JumpstarterTest class kept runnable on loopback (docs/recipes.md).
BOARD_CLASS = "board_class.test_board_class.TestBoard"
#: The recipe's test of each real client, by the command it runs (docs/examples/test_ca_clients.py).
CA_CLIENTS = {
    "test_ca_clients::test_bmaptool_takes_the_ca_only_from_ssl_cert_file": "bmaptool",
    "test_ca_clients::test_git_takes_the_ca_from_git_ssl_cainfo_or_http_sslcainfo": "git",
    "test_ca_clients::test_ostree_takes_the_ca_from_the_remotes_tls_ca_path": "ostree",
    "test_ca_clients::test_apt_takes_the_ca_from_acquire_https_cainfo": "/usr/lib/apt/apt-helper",
    "test_ca_clients::test_curl_and_wget_take_the_one_client_cert_file_twice_for_mutual_tls": "wget",
}
#: A pytest-httpserver suite and its port to this plugin, test by test (docs/from-pytest-httpserver.md).
ORIGINAL = "test_pytest_httpserver_original.py"
PORT = "test_from_pytest_httpserver.py"
#: A user's install, then the developers' (.ci/run runs what the README says).
README_COMMANDS = (
    "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/pytest examples",
    "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/pytest",
)


def run_doc_examples(
    *args: str, junit: Path, shell: Path | None = None, allowed: tuple[str, ...] = ("passed", "skipped")
) -> JUnit:
    """Run pytest on the doc examples in a subprocess, in ``jmp shell`` on ``shell`` if given.

    Every test must end in one of the ``allowed`` outcomes.

    A subprocess: the examples start servers and event-loop threads of their own, and a
    `jmp shell` run must be a separate process anyway.
    """
    command = python_pytest(*args, junit=junit)
    if shell is None:
        done = run(command, cwd=DOC_EXAMPLES, timeout=180)
    else:
        done = jmp_shell(shell, command, cwd=DOC_EXAMPLES, timeout=180)
    report = JUnit(junit, done.stdout)
    failed = {name: kind for name, kind in report.outcomes().items() if kind not in allowed}
    assert not failed, f"{failed}\n{done.stdout}"
    return report


# --- the doc examples run -------------------------------------------------------------------


def pop_absent_clients(result: dict[str, str]) -> None:
    """Take out the client recipes whose tool this machine lacks: those, and only those, skip."""
    for test, tool in CA_CLIENTS.items():
        if shutil.which(tool) is None or (tool == "wget" and shutil.which("curl") is None):
            assert result.pop(test) == "skipped", test


def files_of(folder: Path) -> set[Path]:
    return {path for path in folder.rglob("*") if path.is_file() and "__pycache__" not in path.parts}


def test_the_doc_examples_pass_on_loopback_and_leave_their_folder_as_it_was(tmp_path):
    before = files_of(DOC_EXAMPLES)
    result = run_doc_examples("-rs", junit=tmp_path / "report.xml").outcomes()
    assert files_of(DOC_EXAMPLES) == before
    assert result.pop("test_markers::test_only_on_a_board") == "skipped"
    # The JumpstarterTest recipe: its board test skips, the rest of its class runs on loopback.
    assert result.pop(f"{BOARD_CLASS}::test_the_board_serves_its_image") == "skipped"
    assert result[f"{BOARD_CLASS}::test_the_boot_script_is_served"] == "passed"
    pop_absent_clients(result)
    assert result
    assert set(result.values()) == {"passed"}
    assert "override.test_override::test_serves_this_folders_images" in result


def test_the_lab_network_recipe_serves_on_every_interface_under_xdist(tmp_path):
    pytest.importorskip("xdist")
    # lab.ini binds 0.0.0.0 on a port range; the URL host is overridden to one this machine answers on.
    args = ("-c", "lab.ini", "-o", "http_url_host=127.0.0.1", "-n", "2", ".")
    result = run_doc_examples(*args, junit=tmp_path / "report.xml").outcomes()
    pop_absent_clients(result)
    assert list(result.values()).count("passed") == len(result) - 2  # the two board-only tests


def test_the_hardware_ini_errors_every_exporter_test_without_its_lab_client_config(tmp_path):
    # No client config "lab" here. The ini file asks for hardware, so not reaching it is an error
    # in every test bound to an exporter, never a green run of skips (issue 11, item 12).
    report = run_doc_examples(
        "-c", "hardware.ini", ".", junit=tmp_path / "report.xml", allowed=("passed", "error")
    )
    assert report["test_flash_board::test_the_board_flashes_a_fresh_build"].outcome == "error"
    assert report[f"{BOARD_CLASS}::test_the_board_serves_its_image"].outcome == "error"
    assert report["test_factory::test_two_servers_with_different_images"].outcome == "passed"
    errors = [case.message for case in report.cases.values() if case.outcome == "error"]
    assert errors
    assert all("no Jumpstarter client config 'lab'" in message for message in errors), errors
    skipped = {name: case.outcome for name, case in report.cases.items() if case.outcome == "skipped"}
    pop_absent_clients(skipped)
    assert not skipped


def test_the_jmp_shell_recipe_runs_the_doc_examples_on_the_documented_exporter(tmp_path):
    require()
    # The documented config, with its root_dir moved to a temporary directory.
    config = (DOC_EXAMPLES / "exporter.yaml").read_text()
    assert "root_dir: /home/lab/jumpstarter-http" in config
    exporter = tmp_path / "exporter.yaml"
    exporter.write_text(config.replace("/home/lab/jumpstarter-http", str(tmp_path / "www")))
    # The stock driver scripts no replies: the port of a pytest-httpserver suite runs on the
    # RecordingHttpServer below instead.
    result = run_doc_examples(f"--ignore={PORT}", junit=tmp_path / "report.xml", shell=exporter).outcomes()
    pop_absent_clients(result)
    assert result["test_markers::test_only_on_a_board"] == "passed", result
    assert result[f"{BOARD_CLASS}::test_the_board_serves_its_image"] == "passed", result
    assert set(result.values()) == {"passed"}
    assert (tmp_path / "www" / "pytest-jumpstarter-http").is_dir()


def test_the_port_of_a_pytest_httpserver_suite_runs_unchanged_in_jmp_shell_on_a_recording_server(tmp_path):
    # docs/from-pytest-httpserver.md promises the port runs on both backends: on loopback it runs
    # with every other example; here it runs on the documented RecordingHttpServer config.
    require()
    config = (DOC_EXAMPLES / "exporter-recording.yaml").read_text()
    served = "root_dir: /home/lab/jumpstarter-http, host: 203.0.113.1, port: 8080"
    assert served in config
    exporter = tmp_path / "exporter.yaml"
    exporter.write_text(config.replace(served, f"root_dir: {tmp_path / 'www'}, host: 127.0.0.1, port: 0"))
    report = run_doc_examples(PORT, junit=tmp_path / "report.xml", shell=exporter)
    assert "jumpstarter-http: backend=exporter (jmp shell at " in report.output
    names = [name.partition("::")[2] for name in report.outcomes()]
    original = re.findall(r"^def (test_\w+)", (DOC_EXAMPLES / ORIGINAL).read_text(), re.MULTILINE)
    assert sorted(names) == sorted(original), "the port has the original's tests, by name"
    assert len(names) >= 12
    assert set(report.outcomes().values()) == {"passed"}
    assert (tmp_path / "www" / "pytest-jumpstarter-http").is_dir()


# --- the pages show only tested code --------------------------------------------------------


def pages() -> list[Path]:
    return sorted(
        path for path in DOCS.rglob("*.md") if "_build" not in path.parts and "examples" not in path.parts
    )


def without_generated_parts(text: str) -> str:
    """A page as its author wrote it: every generated part emptied."""
    return load_generator().PART.sub(lambda m: m["open"] + m["close"], text)


def test_every_code_example_in_the_docs_is_a_generated_copy_of_a_tested_file():
    inline = re.compile(r"^(```|:::)\s*(\{code-block\}\s*)?(python|py|ini|toml|yaml|yml)\b", re.MULTILINE)
    for page in (*pages(), TOP / "README.md"):
        found = inline.search(without_generated_parts(page.read_text()))
        assert not found, f"{page.name}: show a tested file with <!-- generated: example PATH --> instead"


def test_every_doc_example_is_shown_in_a_page_as_its_current_text():
    # A page shows each example file's text itself, so that it reads the same unbuilt on a forge
    # (issue 27); the stale check rewrites it from the file, and this checks it was.
    generate = load_generator()
    shown = {}
    for page in (*pages(), TOP / "README.md"):
        for part in generate.PART.finditer(page.read_text()):
            if part["kind"] == "example":
                path = generate.example_file(part["argument"], page.parent)
                assert generate.body("example", part["argument"], page.parent) == part["body"], page.name
                shown.setdefault(path, part["body"])
    examples = {
        path.resolve()
        for path in DOC_EXAMPLES.rglob("*")
        if path.suffix in (".py", ".ini", ".yaml")
        and "__pycache__" not in path.parts
        and path.name != "pytest.ini"
    }
    assert examples - set(shown) == set(), "doc examples no page shows"
    first = DOC_EXAMPLES / "test_first.py"
    assert f"```python\n{first.read_text()}```" in shown[first]


def test_no_page_needs_a_build_to_show_its_content():
    # A forge shows a directive's arguments as text and nothing of what it would include; only the
    # hidden table of contents is left to the build, beside the list of links a forge shows.
    forbidden = re.compile(
        r"^(```+|:::+)\s*\{(?!toctree\})[\w-]+\}|\{(download|doc|ref|include)\}`|autoclass::", re.M
    )
    for page in pages():
        found = [match[0] for match in forbidden.finditer(without_generated_parts(page.read_text()))]
        # A diagram is a ```mermaid fence, which a forge draws and MyST maps to the directive.
        assert not found, f"{page.name}: {found} shows nothing on a forge"
    assert "autodoc" not in (DOCS / "conf.py").read_text()


def test_the_api_reference_lists_every_public_member_inherited_ones_too():
    # autodoc dropped inherited members silently (issue 27); the reference is made from the class.
    generate = load_generator()
    api = (DOCS / "api.md").read_text()
    for name in pytest_jumpstarter_http.__all__:
        assert f"<!-- generated: api {name} -->" in api
    labels = {
        name: {member.label for member in generate.members(name)} for name in pytest_jumpstarter_http.__all__
    }
    assert {"path", "hits", "active", "clear()"} <= labels["Fault"]
    assert {"hits", "active", "clear()"} <= labels["Reply"]
    assert {"name", "size", "sha256", "method", "read_bytes()"} <= labels["Upload"]
    assert {"url", "ca_cert", "client_cert", "stage()", "wait_for_request()"} <= labels["LoopbackServer"]
    assert "__call__()" in labels["HttpServerFactory"]
    with pytest.raises(ValueError, match="no class the package exports"):
        generate.members("Scripted")


def public_methods(cls: type) -> set[str]:
    return {name for name, value in vars(cls).items() if not name.startswith("_") and callable(value)}


def test_the_http_server_docs_and_the_readme_name_every_method_of_the_handle():
    from pytest_jumpstarter_http import HttpServerHandle

    methods = public_methods(HttpServerHandle)
    assert {"wait_for_request", "respond", "accept_uploads", "assert_requested"} <= methods
    fixtures = (DOCS / "fixtures.md").read_text()
    doc = fixtures.partition("<!-- generated: http-fixture-doc http_server -->")[2].partition("<!-- end")[0]
    table = readme().partition("<!-- generated: http-fixtures-table members -->")[2].partition("<!-- end")[0]
    for method in methods:
        assert f"`{method}()`" in doc
        assert f"`{method}()`" in table


def code_lines(page: Path) -> list[str]:
    """The command lines and inline code spans of a page, without its quoted output (text blocks)."""
    code, fence = [], None
    for line in page.read_text().splitlines():
        if opening := re.match(r"\s*(?:```|:::)\s*\{?([\w-]*)", line):
            fence = None if fence is not None else opening[1]
        elif fence is None:
            code += line.split("`")[1::2]
        elif fence not in ("text", "mermaid"):
            code.append(line)
    return code


def test_the_docs_join_every_value_option_to_its_value_with_an_equals_sign():
    # A separate value is a path to pytest while it looks for its ini file (docs/options.md).
    flags = "|".join(re.escape(option.flag) for option in options.OPTIONS if option.metavar)
    spaced = re.compile(rf"(?:{flags}) +[^\s`|(-]")
    for page in (TOP / "README.md", TOP / "bench" / "README.md", *pages()):
        found = [line for line in code_lines(page) if spaced.search(line)]
        assert not found, f"{page.name}: write --http-OPTION=VALUE in {found}"


def error_fragments() -> set[str]:
    """The literal text of every message the package raises, fails or skips with."""
    fragments = set()
    for module in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            call = node.exc if isinstance(node, ast.Raise) else node
            if not isinstance(call, ast.Call):
                continue
            name = call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", "")
            if not (isinstance(node, ast.Raise) or name in ("fail", "skip", "error", "UsageError")):
                continue
            if name == "AttributeError":  # Python's own wording, for a name the package does not export
                continue
            for arg in call.args:
                parts = arg.values if isinstance(arg, ast.JoinedStr) else [arg]
                for part in parts:
                    if isinstance(part, ast.Constant) and isinstance(part.value, str):
                        text = part.value.strip(" .;:\n")
                        if len(text) >= 12:
                            fragments.add(text)
    return fragments


def test_every_error_message_of_the_plugin_is_in_troubleshooting():
    page = (DOCS / "troubleshooting.md").read_text()
    missing = "\n".join(sorted(fragment for fragment in error_fragments() if fragment not in page))
    assert not missing, f"add these messages (cause and fix) to docs/troubleshooting.md:\n{missing}"


def load_generator():
    """docs/generate.py, which writes the parts of the pages made from the code."""
    spec = importlib.util.spec_from_file_location("docs_generate", DOCS / "generate.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_generated_parts_of_the_pages_are_what_the_code_makes_now():
    # The pages are read unbuilt on a forge too, so a generated table is written into them
    # (issue 17); a changed option, fixture or marker must be written there as well.
    generate = load_generator()
    stale = [page.name for page in generate.stale()]
    assert not stale, f"run python docs/generate.py: the generated parts of {stale} are stale"


def test_every_generated_kind_is_in_a_page_and_the_tables_name_every_option_fixture_and_marker():
    generate = load_generator()
    text = "".join(page.read_text() for page in pages())
    written = {match["kind"] for match in generate.PART.finditer(text)}
    assert written == set(generate.KINDS)
    assert "{http-" not in text, "a Sphinx-only directive shows nothing on a forge: use a generated part"
    page = (DOCS / "options.md").read_text()
    for option in options.OPTIONS:
        assert f"| `{option.flag}" in page
        assert f"`{option.ini}`" in page
    fixtures = (DOCS / "fixtures.md").read_text()
    for name in FIXTURES:
        assert f"<!-- generated: http-fixture-doc {name} -->" in fixtures
    for line in markers.MARKERS:
        assert f"`@pytest.mark.{line.partition(': ')[0]}`" in (DOCS / "markers.md").read_text()


def test_a_stale_generated_part_is_found_and_rewritten(tmp_path):
    generate = load_generator()
    page = "Intro.\n\n<!-- generated: http-options-table -->\n| old |\n<!-- end generated -->\n\nAfter.\n"
    current = generate.render(page)
    assert current != page
    assert current.startswith("Intro.\n\n<!-- generated: http-options-table -->\n\n| Command line |")
    assert current.endswith("\n\n<!-- end generated -->\n\nAfter.\n")
    assert generate.render(current) == current


def test_every_test_the_reliability_page_names_is_in_the_suite():
    # A row is a promise only while the test it names runs; a renamed test must rename its row.
    cited = set(re.findall(r"`(test_\w+)(?:`|\[)", (DOCS / "reliability.md").read_text()))
    suite = "".join(path.read_text() for path in (TOP / "tests").glob("*.py"))
    assert cited
    assert not sorted(name for name in cited if f"def {name}(" not in suite)


def test_the_auto_backend_rule_reads_as_the_help_says_in_options_and_backends():
    (backend,) = [option for option in options.OPTIONS if option.ini == "http_backend"]
    rule = re.search(r"auto picks exporter when (.*) \(default", backend.help)
    assert rule, backend.help
    for name in ("options.md", "backends.md"):
        text = " ".join((DOCS / name).read_text().replace("`", "").split())
        assert f"picks the exporter when {rule[1]}" in text, f"{name}: write the rule as --help does"


def test_the_header_lines_the_docs_show_are_those_the_plugin_prints():
    images = Path("/home/me/suite/images")
    shell = "/tmp/jumpstarter-1234/socket"
    printed = {
        options.Settings().header(),
        options.Settings(scope="session", root=images).header(),
        options.Settings(scope="session", root=images, jumpstarter_host=shell).header(),
    }
    shown = {
        line
        for page in (*pages(), TOP / "README.md")
        for line in page.read_text().splitlines()
        if line.startswith("jumpstarter-http: backend=")
    }
    assert shown
    assert shown <= printed, f"the plugin prints none of {sorted(shown - printed)}"


# --- README, changelog, license -------------------------------------------------------------


def readme() -> str:
    return (TOP / "README.md").read_text()


def test_the_readme_sets_up_with_two_commands_that_ci_reads_from_it():
    setup = readme().partition("\n## Set up\n")[2].partition("\n## ")[0]
    assert re.findall(r"^python3 -m venv .*$", setup, re.MULTILINE) == list(README_COMMANDS)
    assert setup.count("```console") == 2
    # .ci/run picks the section's `python3 -m venv` lines out of the README and runs them.
    ci = (TOP / ".ci" / "run").read_text()
    assert "README.md" in ci
    assert "python3 -m venv" in ci
    assert "-p no:jumpstarter_http" in readme()


def test_the_readme_example_is_the_tested_first_example():
    example = (DOC_EXAMPLES / "test_first.py").read_text()
    assert f"```python\n{example}```" in readme()
    assert len(example.strip().splitlines()) <= 10


def test_the_readme_lists_every_fixture_option_and_marker():
    README = readme()
    for name in FIXTURES:
        assert f"`{name}`" in README
    for option in options.OPTIONS:
        default = re.search(r"\(default: (.*)\)$", option.help)
        assert default, f"{option.flag}: its help does not end with (default: ...)"
        row = rf"\| `{option.flag}[^`]*` \| `{option.ini}` \| {re.escape(default[1])} \|"
        assert re.search(row, README), f"README: no options row for {option.flag}"
    for line in markers.MARKERS:
        assert line.partition(":")[0] in README


def test_the_changelog_has_an_unreleased_section_and_the_license_is_apache():
    assert "\n## Unreleased\n" in (TOP / "CHANGELOG.md").read_text()
    license_text = (TOP / "LICENSE").read_text()
    for line in ("Apache License", "Version 2.0, January 2004", "END OF TERMS AND CONDITIONS"):
        assert line in license_text


# --- the docs build -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built_docs(tmp_path_factory):
    """The HTML docs as ``sphinx-build -W`` makes them, once for the tests that read them."""
    if importlib.util.find_spec("sphinx") is None or importlib.util.find_spec("myst_parser") is None:
        pytest.skip("sphinx is not installed: pip install -e '.[docs]'")
    out = tmp_path_factory.mktemp("docs")
    html = out / "html"
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html"]
    done = run([*command, "-d", str(out / "doctrees"), str(DOCS), str(html)], timeout=300)
    return done, html


def test_the_docs_build_without_warnings(built_docs):
    done, html = built_docs
    assert done.returncode == 0, done.stdout
    page = (html / "options.html").read_text()
    for option in options.OPTIONS:
        assert option.ini in page
        assert option.flag in page
    fixtures = (html / "fixtures.html").read_text()
    for name in FIXTURES:
        assert name in fixtures
    api = (html / "api.html").read_text()
    for name in pytest_jumpstarter_http.__all__:
        assert f'id="{name.lower()}"' in api
    # The diagrams are drawn at build time, as files of the site.
    drawn = (html / "lab-network.html").read_text()
    assert drawn.count('<object data="_images/mermaid-') == 2
    assert "flowchart LR" not in drawn.partition("<object")[0]


#: The attribute by which each HTML or SVG element loads what it shows.
LOADING = {
    "script": "src",
    "link": "href",
    "img": "src",
    "object": "data",
    "iframe": "src",
    "embed": "src",
    "source": "src",
    "video": "src",
    "audio": "src",
    "image": "href",
    "use": "href",
}


def css_urls(text: str) -> list[str]:
    return [
        url or imported
        for url, imported in re.findall(r"url\(\s*['\"]?([^'\")]+)|@import\s+['\"]([^'\"]+)", text)
    ]


class Loads(html.parser.HTMLParser):
    """The URLs a page loads by itself (scripts, styles, images, frames), not the links it shows."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        wanted = LOADING.get(tag)
        for name, value in attrs:
            if value and name in (wanted, "xlink:href", "srcset"):
                self.urls.append(value)
            if value and name == "style":
                self.urls += css_urls(value)

    def handle_data(self, data: str) -> None:
        self.urls += css_urls(data)


def remote(url: str) -> bool:
    return bool(urllib.parse.urlsplit(url.strip()).netloc)


def test_no_page_of_the_built_docs_loads_anything_from_another_host(built_docs):
    # An offline build must show everything, diagrams included, and a reader's browser must not
    # fetch anything from a CDN (issue 27).
    done, html = built_docs
    assert done.returncode == 0, done.stdout
    found = {}
    for path in html.rglob("*"):
        if path.suffix in (".html", ".svg"):
            parser = Loads()
            parser.feed(path.read_text())
            urls = parser.urls
        elif path.suffix == ".css":
            urls = css_urls(path.read_text())
        else:
            continue
        if bad := [url for url in urls if remote(url)]:
            found[str(path.relative_to(html))] = bad
    assert not found
    assert list((html / "_images").glob("mermaid-*.svg"))


def test_a_remote_resource_is_found_in_a_page():
    parser = Loads()
    parser.feed(
        '<script src="https://cdn.example/m.js"></script><a href="https://jumpstarter.dev">x</a>'
        '<link rel="stylesheet" href="_static/a.css"><style>@import "//fonts.example/f.css";</style>'
    )
    assert [url for url in parser.urls if remote(url)] == [
        "https://cdn.example/m.js",
        "//fonts.example/f.css",
    ]


# --- the release artefacts ------------------------------------------------------------------


def without_the_checkout() -> dict[str, str]:
    """The clean environment without PYTHONPATH, which may hold this checkout: a build or a venv sees only
    what it installs."""
    env = clean_env(PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.pop("PYTHONPATH", None)
    return env


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """The sdist and the wheel built from it, as `python -m build` makes them for a release."""
    for module in ("build", "twine"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed: pip install build twine")
    out = tmp_path_factory.mktemp("dist")
    done = run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(TOP)],
        env=without_the_checkout(),
        timeout=300,
    )
    assert done.returncode == 0, done.stdout
    return out


def test_the_wheel_and_sdist_pass_twine_check(dist):
    files = sorted(str(path) for path in dist.iterdir())
    assert len(files) == 2, files
    done = run([sys.executable, "-m", "twine", "check", "--strict", *files], timeout=300)
    assert done.returncode == 0, done.stdout


def test_the_wheel_carries_the_entry_point_the_types_marker_and_the_license(dist):
    wheel = next(dist.glob("*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        info = next(name.rsplit("/", 1)[0] for name in names if name.endswith(".dist-info/METADATA"))
        entry_points = archive.read(f"{info}/entry_points.txt").decode()
        metadata = archive.read(f"{info}/METADATA").decode()
    assert "pytest_jumpstarter_http/py.typed" in names
    assert re.search(r"\[pytest11\]\s+jumpstarter_http = pytest_jumpstarter_http.plugin", entry_points)
    assert any(name.endswith("LICENSE") for name in names)
    assert "License-Expression: Apache-2.0" in metadata
    assert "Classifier: Framework :: Pytest" in metadata
    assert "pytest-jumpstarter-http" in metadata.split("\n\n", 1)[1]  # the README is the description


def test_the_installed_wheel_runs_the_example_suite_in_a_fresh_venv(dist, tmp_path):
    venv = tmp_path / "venv"
    env = without_the_checkout()
    assert run([sys.executable, "-m", "venv", str(venv)], env=env, timeout=120).returncode == 0
    python = venv / "bin" / "python"
    wheel = next(dist.glob("*.whl"))
    install = run([str(python), "-m", "pip", "install", "-q", str(wheel)], env=env, timeout=600)
    assert install.returncode == 0, install.stdout
    # A copy of the examples, ini included, away from the checkout, so only the installed plugin
    # can serve them, in an environment with nothing but the wheel and what it requires.
    work = tmp_path / "examples"
    shutil.copytree(TOP / "examples", work, ignore=shutil.ignore_patterns("__pycache__"))
    where = run(
        [str(python), "-c", "import pytest_jumpstarter_http.plugin as p; print(p.__file__)"],
        cwd=work,
        env=env,
    )
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout
    done = run([str(python), "-m", "pytest", "-p", "no:cacheprovider"], cwd=work, env=env, timeout=120)
    assert done.returncode == 0, done.stdout
    assert "jumpstarter-http: backend=loopback" in done.stdout
    assert re.search(r"\b7 passed", done.stdout), done.stdout
