"""The NUT line format, the error types and the credentials file -- no sockets, no processes."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hecate.adapters.nut import (
    NutAccessDenied,
    NutClient,
    NutDataStale,
    NutDriverNotConnected,
    NutError,
    NutProtocolError,
    NutTimeout,
    NutUnknownUps,
    NutUnreachable,
    parse_line,
    quote,
    read_credentials_file,
)


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ('VAR pyrphoros ups.status "OL"', ["VAR", "pyrphoros", "ups.status", "OL"]),
        ('VAR pyrphoros ups.status "OB DISCHRG"', ["VAR", "pyrphoros", "ups.status", "OB DISCHRG"]),
        ('VAR u ups.model "A \\"quoted\\" name"', ["VAR", "u", "ups.model", 'A "quoted" name']),
        ('VAR u x "back\\\\slash"', ["VAR", "u", "x", "back\\slash"]),
        ('VAR u x "ends in backslash\\\\"', ["VAR", "u", "x", "ends in backslash\\"]),
        ('VAR u x "\\\\\\""', ["VAR", "u", "x", '\\"']),
        ('VAR u x ""', ["VAR", "u", "x", ""]),
        ('UPS pyrphoros "Hecate lab UPS"', ["UPS", "pyrphoros", "Hecate lab UPS"]),
        ("BEGIN LIST VAR pyrphoros", ["BEGIN", "LIST", "VAR", "pyrphoros"]),
        ("ERR DATA-STALE", ["ERR", "DATA-STALE"]),
        ("OK TRACKING 1bd31808-cb49-4aec-9d75-d056e6f018d2",
         ["OK", "TRACKING", "1bd31808-cb49-4aec-9d75-d056e6f018d2"]),
        ("  spaced\tout  ", ["spaced", "out"]),
        ("", []),
        ('VAR u x "utf-8 ünïcode"', ["VAR", "u", "x", "utf-8 ünïcode"]),
    ],
)
def test_parse_line(line: str, words: list[str]) -> None:
    assert parse_line(line) == words


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('VAR u x "unterminated', "unterminated"),
        ('VAR u x "escaped end\\"', "unterminated"),
        ("VAR u x dangling\\", "backslash"),
        ('VAR u x "a"b', "closing quote"),
    ],
)
def test_parse_line_rejects_malformed_lines(line: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_line(line)


@given(st.text(alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=["Cs"])))
def test_quote_round_trips(value: str) -> None:
    assert parse_line(quote(value)) == [value]
    assert parse_line(f"VAR ups var {quote(value)}") == ["VAR", "ups", "var", value]


def test_quote_escapes_and_refuses_line_breaks() -> None:
    assert quote('say "hi" \\o/') == '"say \\"hi\\" \\\\o/"'
    with pytest.raises(ValueError, match="line break"):
        quote("two\nlines")


def test_error_messages_name_ups_address_and_code() -> None:
    err = NutDataStale("data stale", address="127.0.0.1:3493", ups="pyrphoros", code="DATA-STALE")
    assert str(err) == "pyrphoros@127.0.0.1:3493: data stale (ERR DATA-STALE)"
    assert (err.ups, err.address, err.code) == ("pyrphoros", "127.0.0.1:3493", "DATA-STALE")
    assert str(NutUnreachable("cannot connect: Connection refused", address="10.0.0.5:3493")) == (
        "10.0.0.5:3493: cannot connect: Connection refused"
    )


def test_stale_and_reachable_tell_the_trigger_what_happened() -> None:
    kinds = [NutUnreachable, NutTimeout, NutDataStale, NutDriverNotConnected, NutUnknownUps,
             NutAccessDenied, NutProtocolError]
    assert all(issubclass(kind, NutError) for kind in kinds)
    assert {k.__name__ for k in kinds if k.stale} == {"NutDataStale", "NutDriverNotConnected"}
    assert {k.__name__ for k in kinds if not k.upsd_reachable} == {"NutUnreachable", "NutTimeout"}


@pytest.mark.parametrize(
    ("code", "kind", "message"),
    [
        ("DATA-STALE", NutDataStale, "data stale"),
        ("DRIVER-NOT-CONNECTED", NutDriverNotConnected, "driver not connected"),
        ("UNKNOWN-UPS", NutUnknownUps, "unknown UPS"),
        ("ACCESS-DENIED", NutAccessDenied, "access denied"),
        ("USERNAME-REQUIRED", NutAccessDenied, "username required"),
        ("PASSWORD-REQUIRED", NutAccessDenied, "password required"),
        ("INVALID-PASSWORD", NutAccessDenied, "invalid password"),
        ("INVALID-USERNAME", NutAccessDenied, "invalid username"),
        ("CMD-NOT-SUPPORTED", NutProtocolError, "cmd not supported"),
        ("VAR-NOT-SUPPORTED", NutProtocolError, "var not supported"),
        ("SOMETHING-NEW", NutProtocolError, "something new"),
    ],
)
def test_err_codes_map_to_error_types(code: str, kind: type[NutError], message: str) -> None:
    client = NutClient("127.0.0.1", 3493)
    err = client._err(["ERR", code], "pyrphoros")
    assert type(err) is kind
    assert err.code == code
    assert str(err) == f"pyrphoros@127.0.0.1:3493: {message} (ERR {code})"


def test_err_extra_words_are_kept_and_a_bare_err_is_malformed() -> None:
    client = NutClient("::1", 3493)
    err = client._err(["ERR", "INVALID-ARGUMENT", "bad", "value"], None)
    assert str(err) == "[::1]:3493: invalid argument: bad value (ERR INVALID-ARGUMENT)"
    bare = client._err(["ERR"], "u")
    assert type(bare) is NutProtocolError
    assert bare.code is None


def test_client_needs_both_or_neither_credential() -> None:
    with pytest.raises(ValueError, match="both"):
        NutClient("127.0.0.1", username="hecate")
    with pytest.raises(ValueError, match="both"):
        NutClient("127.0.0.1", password="secret")


@pytest.mark.parametrize("name", ["", "two words", "new\nline", 'qu"ote', "back\\slash", "tab\tbed"])
async def test_names_that_could_inject_protocol_lines_are_refused(name: str) -> None:
    client = NutClient("127.0.0.1", 1)  # never connected: validation comes first
    with pytest.raises(ValueError, match="not a valid NUT"):
        await client.list_vars(name)
    with pytest.raises(ValueError, match="not a valid NUT"):
        await client.get_var("ups", name)
    with pytest.raises(ValueError, match="not a valid NUT"):
        await client.instcmd("ups", name)


async def test_a_request_without_a_connection_is_unreachable() -> None:
    client = NutClient("127.0.0.1", 1)
    with pytest.raises(NutUnreachable, match="not connected"):
        await client.list_ups()
    await client.aclose()  # closing a never-opened client is fine


def test_read_credentials_file(tmp_path: Path) -> None:
    path = tmp_path / "nut.credentials"
    path.write_text("hecate:pass:with:colons  \nignored:line\n")
    assert read_credentials_file(path) == ("hecate", "pass:with:colons")
    path.write_text("  monuser:secret\n")
    assert read_credentials_file(str(path)) == ("monuser", "secret")


@pytest.mark.parametrize("text", ["", "\n", "no-colon\n", ":password-only\n", "user-only:\n", "  :  \n"])
def test_read_credentials_file_names_the_file_when_malformed(tmp_path: Path, text: str) -> None:
    path = tmp_path / "nut.credentials"
    path.write_text(text)
    with pytest.raises(ValueError, match=r"nut\.credentials: expected 'username:password'") as info:
        read_credentials_file(path)
    assert "password-only" not in str(info.value)


def test_read_credentials_file_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_credentials_file(tmp_path / "absent")
