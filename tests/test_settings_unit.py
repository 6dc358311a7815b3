"""The pure parse functions of options.py, called directly: each value, each message."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_jumpstarter_http.options import (
    PortRange,
    Source,
    _host,
    _keep,
    _port,
    _url_host,
    parse_root,
    parse_selector,
)


@pytest.fixture
def source(tmp_path: Path) -> Source:
    return Source("--http-x (command line)", tmp_path)


def refused(call: object, *args: object) -> str:
    """The one sentence a parse function refuses a value with."""
    assert callable(call)
    with pytest.raises(pytest.UsageError) as info:
        call(*args)
    message = str(info.value)
    assert message.endswith(".")
    assert "\n" not in message
    return message


def test_a_port_is_a_fixed_range(source):
    assert _port("8080", source) == PortRange(8080, 8080)
    assert _port("8080", source).fixed


def test_a_range_keeps_both_ends(source):
    assert _port(" 8000-8099 ", source) == PortRange(8000, 8099)


def test_port_zero_means_any_free_port(source):
    assert _port("0", source) is None


def test_a_reversed_port_range_is_refused_with_the_right_order(source):
    assert refused(_port, "9000-8000", source) == (
        "--http-x (command line): '9000-8000' is not valid; the range is reversed; write it as 8000-9000."
    )


@pytest.mark.parametrize("value", ["eighty", "0-10", "70000", "1-2-3", "", "-5"])
def test_a_port_that_is_no_number_in_range_is_refused(source, value):
    assert refused(_port, value, source).endswith(
        "give 0 (any free port), a port N or a range A-B within 1-65535."
    )


def test_a_root_is_resolved_against_the_source_base(source, tmp_path):
    (tmp_path / "images").mkdir()
    assert parse_root("images", source) == (tmp_path / "images").resolve()


def test_a_root_may_be_a_path_object(source, tmp_path):
    assert parse_root(tmp_path, source) == tmp_path.resolve()


def test_an_empty_root_means_a_temporary_one(source):
    assert parse_root("", source) is None


@pytest.mark.parametrize("value", [123, 1.5, None, ["images"], b"images"])
def test_a_root_that_is_no_path_is_refused_naming_its_type(source, value):
    assert refused(parse_root, value, source) == (
        f"--http-x (command line): {value!r} is not valid; give the directory as a str or a pathlib.Path."
    )


def test_a_root_longer_than_any_path_is_refused_and_shown_shortened(source):
    message = refused(parse_root, "a" * 5000, source)
    assert message == (
        "--http-x (command line): '" + "a" * 47 + "…" + "a" * 47 + "' (5000 characters) is not valid; "
        "the path is too long for this system (a name over 255 or a path over 4096 characters); "
        "give an existing directory."
    )


def test_a_root_with_a_name_over_255_characters_is_refused(source):
    assert "the path is too long for this system" in refused(parse_root, "b" * 300, source)


def test_a_root_with_a_nul_character_is_refused(source):
    assert refused(parse_root, "ima\0ges", source) == (
        "--http-x (command line): 'ima\\x00ges' is not valid; a path cannot hold a NUL character; "
        "give an existing directory."
    )


def test_a_root_through_a_file_is_refused_naming_the_file(source, tmp_path):
    (tmp_path / "file.txt").write_text("")
    assert "a part of the path on the way to it is a file" in refused(parse_root, "file.txt/images", source)


def test_a_root_in_a_loop_of_symbolic_links_is_refused(source, tmp_path):
    (tmp_path / "one").symlink_to(tmp_path / "two")
    (tmp_path / "two").symlink_to(tmp_path / "one")
    assert "it goes round a loop of symbolic links" in refused(parse_root, "one", source)


def test_a_bracketed_ipv6_host_is_bound_without_its_brackets(source):
    assert _host("[::1]", source) == "::1"
    assert _host(" 127.0.0.1 ", source) == "127.0.0.1"


def test_brackets_around_anything_but_ipv6_are_refused(source):
    assert refused(_host, "[localhost]", source) == (
        "--http-x (command line): '[localhost]' is not valid; brackets enclose only an IPv6 address; "
        "write localhost."
    )


@pytest.mark.parametrize(
    ("value", "url_host"),
    [
        ("build.lab", "build.lab"),
        ("10.0.0.5", "10.0.0.5"),
        ("my_host-1.example.", "my_host-1.example."),
        ("::1", "::1"),
        ("[fe80::1]", "fe80::1"),
        ("[2001:db8::20]", "2001:db8::20"),
        ("localhost", "localhost"),
    ],
)
def test_a_url_host_may_be_a_name_an_ipv4_or_an_ipv6_address(source, value, url_host):
    assert _url_host(value, source) == url_host


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("http://10.0.0.1", "give the host alone, without a scheme, like 10.0.0.1."),
        ("host:8080", "give the host alone, like host; a URL's port is its server's own."),
        ("[::1]:8080", "give the host alone, like [::1]; a URL's port is its server's own."),
        ("a b", "give a host name, an IPv4 address or an IPv6 address, like 10.0.0.5 or build.lab."),
        ("x/y?", "give a host name, an IPv4 address or an IPv6 address, like 10.0.0.5 or build.lab."),
        ("300.1.1.1", "give a host name, an IPv4 address or an IPv6 address, like 10.0.0.5 or build.lab."),
        ("-board", "give a host name, an IPv4 address or an IPv6 address, like 10.0.0.5 or build.lab."),
        (
            "a" * 64 + ".lab",
            "give a host name, an IPv4 address or an IPv6 address, like 10.0.0.5 or build.lab.",
        ),
    ],
)
def test_a_url_host_that_is_no_host_is_refused_saying_what_to_give(source, value, valid):
    message = refused(_url_host, value, source)
    assert message.startswith("--http-x (command line): ")
    assert message.endswith(f" is not valid; {valid}")


@pytest.mark.parametrize(
    "selector",
    ["board=rpi4", "board=rpi4,!busy", "a in (x,y)", "a notin (x, y),b!=c", "site", "board==qemu"],
)
def test_a_label_selector_jumpstarter_reads_is_kept(source, selector):
    assert parse_selector(f" {selector} ", source) == selector


@pytest.mark.parametrize(
    ("selector", "part"), [("!!!=,=", "!!!="), ("board=rpi4,=x", "=x"), ("a in x", "a in x")]
)
def test_a_selector_part_jumpstarter_would_skip_is_refused_by_name(source, selector, part):
    assert refused(parse_selector, selector, source) == (
        f"--http-x (command line): {selector!r} is not valid; {part!r} is no label requirement; "
        "give requirements separated by commas, like board=rpi4,!busy or board in (rpi4,rpi5)."
    )


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("all", "all"),
        ("yes", "all"),
        ("On", "all"),
        ("1", "all"),
        ("failed", "failed"),
        ("false", "none"),
        ("", "none"),
    ],
)
def test_keep_reads_all_failed_none_and_the_usual_true_and_false_words(source, text, value):
    assert _keep(text, source) == value


def test_a_keep_value_that_is_no_policy_is_refused_naming_the_equals_form(source):
    assert refused(_keep, "tests", source) == (
        "--http-x (command line): 'tests' is not valid; use all, failed or none (on the command "
        "line --http-keep=failed; alone, it keeps all)."
    )
