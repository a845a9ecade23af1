"""The address parser on friendly and hostile header values.

Every verdict here must be the same on every supported Python: the parser
is ours, so nothing depends on the email package's changing rules.
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatmaild.addrparse import (
    MAX_HEADER_CHARS,
    AddressError,
    Mailbox,
    domain_literal_ip,
    parse_addr_spec,
    parse_mailbox,
    parse_mailbox_list,
)

HYPOTHESIS = settings(
    max_examples=200, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck)
)

VALID = [
    ("a@b.example", ["a@b.example"]),
    ("<a@b.example>", ["a@b.example"]),
    ("Name <a@b.example>", ["a@b.example"]),
    ('"Last, First" <a@b.example>', ["a@b.example"]),
    ("John Q. Public <jqp@b.example>", ["jqp@b.example"]),
    ("=?utf-8?q?J=C3=B6rg?= <j@b.example>", ["j@b.example"]),
    ("a@b.example (comment)", ["a@b.example"]),
    ("(c) a@b.example", ["a@b.example"]),
    ("Name (nested (comment)) <a@b.example>", ["a@b.example"]),
    ("a.b.c@d.example", ["a.b.c@d.example"]),
    ("a+tag@d.example", ["a+tag@d.example"]),
    ('"a b"@d.example', ['"a b"@d.example']),
    ('"a"@d.example', ["a@d.example"]),
    ('"a\\"b"@d.example', ['"a\\"b"@d.example']),
    ("x@[192.0.2.1]", ["x@[192.0.2.1]"]),
    ("<x@[IPv6:2001:db8::1]>", ["x@[IPv6:2001:db8::1]"]),
    ("x@[ipv6:::1]", ["x@[ipv6:::1]"]),
    ("x@[IPv6:::ffff:192.0.2.1]", ["x@[IPv6:::ffff:192.0.2.1]"]),
    ("Relay <x@[192.0.2.1]>", ["x@[192.0.2.1]"]),
    ("<a@b.example>, <c@d.example>", ["a@b.example", "c@d.example"]),
    ("a@b.example,c@d.example", ["a@b.example", "c@d.example"]),
    ("Müller <müller@bücher.example>", ["müller@bücher.example"]),
    ("a@_test.example", ["a@_test.example"]),
    ("a@xn--bcher-kva.example", ["a@xn--bcher-kva.example"]),
    ("Name\r\n <a@b.example>", ["a@b.example"]),
    ("Name <a@b.example>\r\n\t", ["a@b.example"]),
    ("a @ b.example", ["a@b.example"]),
    ("!#$%&'*+-/=?^_`{|}~@b.example", ["!#$%&'*+-/=?^_`{|}~@b.example"]),
    ("a@localhost", ["a@localhost"]),
]

INVALID = [
    "",
    " ",
    "<>",
    "a",
    "a@",
    "@b.example",
    "a@@b.example",
    "a@b@c.example",
    "a@b.example <c@d.example>",
    "<a@b.example> <c@d.example>",
    "<a@b.example",
    "a@b.example>",
    "<<a@b.example>>",
    "<a@b.example>,",
    ",<a@b.example>",
    "<a@b.example>,,<c@d.example>",
    "group: a@b.example;",
    "undisclosed-recipients:;",
    "<@route.example:a@b.example>",
    "a..b@c.example",
    ".a@c.example",
    "a.@c.example",
    "a@b..example",
    "a@.b.example",
    "a@b.example.",
    "a@-b.example",
    "a@b-.example",
    "a@b_c!.example",
    "a b@c.example",
    "a@b example",
    "a@b. example",
    "a@[192.0.2.1",
    "a@192.0.2.1]",
    "a@[192.0.2.256]",
    "a@[192.0.2]",
    "a@[1.2.3.04]",
    "a@[2001:db8::1]",
    "a@[IPv6:192.0.2.1]",
    "a@[IPv6:fe80::1%eth0]",
    "a@[IPv6:2001:db8::1::2]",
    "a@[general:literal]",
    "a@[ 192.0.2.1]",
    "a@[192.0.2.1\\]",
    "a@b.example\x00",
    "a\x00@b.example",
    "a@b.ex\x7fample",
    "a@b.example\r\nBcc: x@y.example",
    "a@b.example\nX: y",
    "a@b.example\r",
    '"unterminated@b.example',
    '"a\nb"@c.example',
    "(unterminated <a@b.example>",
    "a@b.example (unterminated",
    "(" * 40 + "x" + ")" * 40 + " a@b.example",
    "\\a@b.example",
    "a\\@b.example",
    "Name <a@b.example> trailing",
    ". <a@b.example>",
    '"" @b.example',
    '""@b.example',
    "a@b.example\udcff",
    "\u0085a@b.example",
    "a" * 65 + "@b.example",
    "a@" + "b" * 250 + ".example",
    "x" * (MAX_HEADER_CHARS + 1),
    "a@[]",
    "a@[IPv6:]",
    "<a@b.example>;",
    "a@b.example:",
]


@pytest.mark.parametrize(("text", "addresses"), VALID)
def test_valid_address_headers_give_exactly_their_mailboxes(text, addresses):
    assert [mailbox.addr_spec for mailbox in parse_mailbox_list(text)] == addresses


@pytest.mark.parametrize("text", INVALID)
def test_hostile_or_malformed_address_headers_are_refused(text):
    with pytest.raises(AddressError):
        parse_mailbox_list(text)


def test_a_list_of_two_is_not_one_mailbox():
    with pytest.raises(AddressError, match="expected one address, found 2"):
        parse_mailbox("<a@b.example>, <c@d.example>")


@pytest.mark.parametrize(
    ("literal", "address"),
    [
        ("[192.0.2.1]", "192.0.2.1"),
        ("[IPv6:2001:db8::1]", "2001:db8::1"),
        ("[ipv6:2001:DB8:0::1]", "2001:db8::1"),
        ("[192.0.2.01]", None),
        ("[IPv4:192.0.2.1]", None),
        ("[2001:db8::1]", None),
        ("192.0.2.1", None),
        ("[٣.0.2.1]", None),
        ("[IPv6:fe80::1%1]", None),
    ],
)
def test_only_rfc5321_ip_literals_are_domain_literals(literal, address):
    expected = ipaddress.ip_address(address) if address else None
    assert domain_literal_ip(literal) == expected


@pytest.mark.parametrize(
    ("text", "addr"),
    [("a@b.example", "a@b.example"), ("<a@b.example>", "a@b.example"), ('"a"@b.example', "a@b.example")],
)
def test_envelope_addresses_are_bare_addr_specs(text, addr):
    assert parse_addr_spec(text).addr_spec == addr


@pytest.mark.parametrize("text", ["Name <a@b.example>", "a@b.example (c)", "a @b.example", "", "<>", "a@b, c@d"])
def test_envelope_addresses_allow_no_display_name_comment_or_space(text):
    with pytest.raises(AddressError):
        parse_addr_spec(text)


def test_mailboxes_compare_without_regard_to_ascii_case_only():
    one = parse_addr_spec("Sender@Chat.Example.org")
    assert one.same_address(parse_addr_spec("sender@chat.example.org"))
    assert not one.same_address(parse_addr_spec("sеnder@chat.example.org"))  # Cyrillic е


# --- generated input --------------------------------------------------------

header_chars = st.characters(codec="utf-8", exclude_categories=("Cs",)) | st.sampled_from(
    list('<>@,;:.[]()"\\ \t\r\n\x00') + ["\r\n ", "IPv6:", "192.0.2.1", "=?utf-8?q?", "\udcff"]
)


@HYPOTHESIS
@given(st.lists(header_chars, max_size=80).map("".join))
def test_arbitrary_header_text_gives_mailboxes_or_address_error_and_nothing_else(text):
    try:
        mailboxes = parse_mailbox_list(text)
    except AddressError:
        return
    for mailbox in mailboxes:
        assert "@" in mailbox.addr_spec
        assert not any(char in mailbox.addr_spec for char in "\r\n\x00")
        # What we read is what we would write: parsing the canonical form gives the same mailbox.
        assert parse_addr_spec(mailbox.addr_spec) == Mailbox(mailbox.local, mailbox.domain)


atom = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-/=?^_`{|}~", min_size=1, max_size=8)
label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,6}[a-z0-9])?", fullmatch=True)


@HYPOTHESIS
@given(
    st.lists(atom, min_size=1, max_size=3).map(".".join),
    st.lists(label, min_size=1, max_size=3).map(".".join) | st.ip_addresses(v=4).map(lambda ip: f"[{ip}]"),
    st.sampled_from(["", "Name ", '"Quoted, Name" ', "(comment) "]),
)
def test_generated_mailboxes_round_trip(local, domain, display):
    text = f"{display}<{local}@{domain}>"
    mailbox = parse_mailbox(text)
    assert (mailbox.local, mailbox.domain) == (local, domain)
    assert parse_mailbox(mailbox.addr_spec).addr_spec == f"{local}@{domain}"
