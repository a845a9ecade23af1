"""`chatmail dns`: the zone, parsed back with dnspython, and `--check` against a fake resolver."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from pathlib import Path

import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.zone
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from chatmaild import admin, dnszone
from chatmaild.config import Config

DOMAIN = "chat.example.org"
ORIGIN = DOMAIN + "."
ACCOUNT = "https://acme-v02.api.letsencrypt.org/acme/acct/123456789"


def pem(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def dkim_config(make_config: Callable[..., Config], tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> Config:
    key = tmp_path / "dkim.private"
    key.write_bytes(pem(rsa_key))
    return make_config(dkim_key_file=key, dkim_selector="sel2026")


def run(config: Config, *args: str, resolve: dnszone.Resolve | None = None) -> tuple[int, str]:
    out = io.StringIO()
    code = admin.main(
        ["--config", str(config.path), "dns", "--ipv4", "192.0.2.7", "--ipv6", "2001:db8::7", *args],
        out=out,
        resolve=resolve,
        acme_accounts=config.path.parent / "no-acme",
        syslog_address=None,
    )
    return code, out.getvalue()


def parse_zone(text: str) -> dns.zone.Zone:
    return dns.zone.from_text(text, origin=ORIGIN, relativize=False, check_origin=False)


def rdatas(zone: dns.zone.Zone, name: str, rtype: str) -> list[str]:
    rdataset = zone.get_rdataset(dns.name.from_text(name), dns.rdatatype.from_text(rtype))
    return [] if rdataset is None else sorted(r.to_text() for r in rdataset)


def txt(zone: dns.zone.Zone, name: str) -> list[bytes]:
    rdataset = zone.get_rdataset(dns.name.from_text(name), dns.rdatatype.TXT)
    assert rdataset is not None, f"no TXT at {name}"
    return [b"".join(r.strings) for r in rdataset]  # type: ignore[attr-defined]


# --- the zone ----------------------------------------------------------------


def test_zone_parses_back_with_every_record_the_reference_relay_publishes(dkim_config: Config) -> None:
    code, text = run(dkim_config, "--acme-account-uri", ACCOUNT)
    assert code == 0
    zone = parse_zone(text)
    assert rdatas(zone, ORIGIN, "A") == ["192.0.2.7"]
    assert rdatas(zone, ORIGIN, "AAAA") == ["2001:db8::7"]
    assert rdatas(zone, ORIGIN, "MX") == [f"10 {ORIGIN}"]
    assert rdatas(zone, f"www.{ORIGIN}", "CNAME") == [ORIGIN]
    assert rdatas(zone, f"mta-sts.{ORIGIN}", "CNAME") == [ORIGIN]
    assert txt(zone, ORIGIN) == [b"v=spf1 a ~all"]
    assert txt(zone, f"_dmarc.{ORIGIN}") == [b"v=DMARC1;p=reject;adkim=s;aspf=s"]
    assert txt(zone, f"_adsp._domainkey.{ORIGIN}") == [b"dkim=discardable"]
    assert txt(zone, f"_smtp._tls.{ORIGIN}") == [f"v=TLSRPTv1; rua=mailto:postmaster@{DOMAIN}".encode()]
    policy_id = dnszone.mta_sts_id(dnszone.mta_sts_policy(DOMAIN))
    assert txt(zone, f"_mta-sts.{ORIGIN}") == [f"v=STSv1; id={policy_id}".encode()]
    for service, port in [("_submission", 587), ("_submissions", 465), ("_imap", 143), ("_imaps", 993)]:
        assert rdatas(zone, f"{service}._tcp.{ORIGIN}", "SRV") == [f"0 1 {port} {ORIGIN}"]
    assert rdatas(zone, ORIGIN, "CAA") == [f'0 issue "letsencrypt.org;accounturi={ACCOUNT}"']
    for rdataset in zone.iterate_rdatasets():
        assert rdataset[1].ttl == dnszone.TTL


def test_dkim_record_carries_the_public_key_of_the_configured_key_in_strings_of_at_most_255_bytes(
    dkim_config: Config, rsa_key: rsa.RSAPrivateKey
) -> None:
    _, text = run(dkim_config)
    rdataset = parse_zone(text).get_rdataset(dns.name.from_text(f"sel2026._domainkey.{ORIGIN}"), "TXT")
    assert rdataset is not None and len(rdataset) == 1
    strings = list(rdataset[0].strings)  # type: ignore[attr-defined]
    assert len(strings) > 1 and all(len(s) <= 255 for s in strings)
    tags = dict(tag.split("=", 1) for tag in b"".join(strings).decode().split(";"))
    assert tags["v"] == "DKIM1" and tags["k"] == "rsa" and tags["s"] == "email" and tags["t"] == "s"
    published = serialization.load_der_public_key(base64.b64decode(tags["p"]))
    assert isinstance(published, rsa.RSAPublicKey)
    assert published.public_numbers() == rsa_key.public_key().public_numbers()


def test_long_txt_values_are_split_into_255_byte_strings_that_join_to_the_value() -> None:
    value = "x" * 600
    quoted = dnszone.quote_txt(value)
    rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TXT, quoted)
    strings = rdata.strings  # type: ignore[attr-defined]
    assert [len(s) for s in strings] == [255, 255, 90]
    assert b"".join(strings) == value.encode()


def test_ed25519_dkim_key_is_published_as_the_bare_32_byte_key() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    value = dnszone.dkim_txt_value(pem(key))
    tags = dict(tag.split("=", 1) for tag in value.split(";"))
    assert tags["k"] == "ed25519"
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert base64.b64decode(tags["p"]) == raw


def test_mta_sts_id_follows_the_policy_text() -> None:
    policy = dnszone.mta_sts_policy(DOMAIN)
    assert "mx: chat.example.org\n" in policy and "mode: enforce" in policy
    assert dnszone.mta_sts_id(policy) == dnszone.mta_sts_id(dnszone.mta_sts_policy(DOMAIN))
    assert dnszone.mta_sts_id(policy) != dnszone.mta_sts_id(policy.replace("2419200", "86400"))
    assert dnszone.mta_sts_id(policy).isalnum() and len(dnszone.mta_sts_id(policy)) <= 32


def test_self_signed_relay_publishes_no_mta_sts_and_no_caa(
    make_config: Callable[..., Config], tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    key = tmp_path / "dkim.private"
    key.write_bytes(pem(rsa_key))
    config = make_config(mail_domain="_chat.example.org", dkim_key_file=key)
    code, text = run(config)
    assert code == 0
    assert "mta-sts" not in text and "_smtp._tls" not in text and " CAA " not in text
    assert "_chat.example.org.                       3600 IN MX    10 _chat.example.org." in text


def test_caa_names_the_ca_without_an_account_when_none_is_known_and_can_be_left_out(
    dkim_config: Config,
) -> None:
    _, text = run(dkim_config)
    assert rdatas(parse_zone(text), ORIGIN, "CAA") == ['0 issue "letsencrypt.org"']
    _, text = run(dkim_config, "--caa-issuer", "none")
    assert rdatas(parse_zone(text), ORIGIN, "CAA") == []


def test_acme_account_uri_is_found_in_legos_account_file(tmp_path: Path) -> None:
    account = tmp_path / "accounts" / "abc123" / "acme-v02.api.letsencrypt.org" / "op@example.org"
    account.mkdir(parents=True)
    (account / "account.json").write_text(
        json.dumps({"email": "op@example.org", "registration": {"uri": ACCOUNT}})
    )
    assert dnszone.find_acme_account_uri(tmp_path / "accounts") == ACCOUNT


def test_two_acme_accounts_are_ambiguous_and_give_no_uri(tmp_path: Path) -> None:
    for n, server in enumerate(["staging", "production"]):
        account = tmp_path / server / "op@example.org"
        account.mkdir(parents=True)
        (account / "account.json").write_text(json.dumps({"registration": {"uri": f"{ACCOUNT}{n}"}}))
    assert dnszone.find_acme_account_uri(tmp_path) is None


IP_JSON = json.dumps(
    [
        {"ifname": "lo", "addr_info": [{"family": "inet", "local": "127.0.0.1", "scope": "host"}]},
        {
            "ifname": "eth0",
            "addr_info": [
                {"family": "inet", "local": "192.0.2.7", "scope": "global"},
                {"family": "inet6", "local": "2001:db8::7", "scope": "global"},
                {"family": "inet6", "local": "2001:db8::beef", "scope": "global", "temporary": True},
                {"family": "inet6", "local": "fe80::1", "scope": "link"},
            ],
        },
    ]
)


def test_host_addresses_are_the_stable_global_ones() -> None:
    calls: list[list[str]] = []

    def runner(argv: object) -> str:
        calls.append(list(argv))  # type: ignore[call-overload]
        return IP_JSON

    assert dnszone.host_addresses(runner) == (["192.0.2.7"], ["2001:db8::7"])
    assert calls == [["ip", "-j", "address", "show"]]


def test_without_address_arguments_the_zone_uses_the_hosts_addresses_and_honours_disable_ipv6(
    make_config: Callable[..., Config], tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    key = tmp_path / "dkim.private"
    key.write_bytes(pem(rsa_key))
    config = make_config(dkim_key_file=key, disable_ipv6="true")
    out = io.StringIO()
    code = admin.main(
        ["--config", str(config.path), "dns"], out=out, runner=lambda argv: IP_JSON, syslog_address=None
    )
    assert code == 0
    zone = parse_zone(out.getvalue())
    assert rdatas(zone, ORIGIN, "A") == ["192.0.2.7"]
    assert rdatas(zone, ORIGIN, "AAAA") == []


def test_missing_dkim_key_is_a_usage_error_naming_the_file(
    make_config: Callable[..., Config], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = make_config(dkim_key_file=tmp_path / "absent.private")
    code, _ = run(config)
    assert code == 2
    assert "absent.private" in capsys.readouterr().err


def test_ip_literal_relay_has_no_zone(
    make_config: Callable[..., Config], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = run(make_config(mail_domain="10.77.0.13"))
    assert code == 2
    assert "IP-literal" in capsys.readouterr().err


def test_an_ipv6_address_given_as_ipv4_is_a_usage_error(
    dkim_config: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    code = admin.main(
        ["--config", str(dkim_config.path), "dns", "--ipv4", "2001:db8::1"], syslog_address=None
    )
    assert code == 2
    assert "--ipv4 2001:db8::1: not an IPv4 address" in capsys.readouterr().err


# --- the check ---------------------------------------------------------------


def zone_resolver(text: str, failing: frozenset[tuple[str, str]] = frozenset()) -> dnszone.Resolve:
    """A resolver that answers from a zone file, as an authoritative server publishing it would."""
    zone = parse_zone(text)

    def resolve(name: str, rtype: str) -> list[str]:
        if (name, rtype) in failing:
            raise dnszone.LookupFailed("SERVFAIL")
        rdataset = zone.get_rdataset(dns.name.from_text(name), dns.rdatatype.from_text(rtype))
        return [] if rdataset is None else [r.to_text() for r in rdataset]

    return resolve


def test_check_passes_when_dns_publishes_exactly_the_printed_zone(dkim_config: Config) -> None:
    _, text = run(dkim_config)
    code, table = run(dkim_config, "--check", resolve=zone_resolver(text))
    assert code == 0, table
    assert table.splitlines()[0].split() == ["record", "expected", "found", "ok"]
    assert "all 16 records are published as expected" in table


def test_check_fails_naming_the_one_removed_record(dkim_config: Config) -> None:
    _, text = run(dkim_config)
    published = "\n".join(line for line in text.splitlines() if not line.startswith("_mta-sts."))
    code, table = run(dkim_config, "--check", resolve=zone_resolver(published))
    assert code == 1
    assert "1 of 16 records missing or wrong:" in table
    bad = table.split("missing or wrong:")[1].strip().splitlines()
    assert len(bad) == 1 and bad[0].startswith(f"_mta-sts.{ORIGIN} TXT")
    row = next(line for line in table.splitlines() if line.startswith(f"_mta-sts.{ORIGIN} TXT"))
    assert row.endswith("MISSING")


def test_check_reports_a_dkim_record_of_another_key_as_wrong(dkim_config: Config) -> None:
    _, text = run(dkim_config)
    other = dnszone.quote_txt(dnszone.dkim_txt_value(pem(rsa.generate_private_key(65537, 1024))))
    published = "\n".join(
        line if not line.startswith("sel2026.") else f"sel2026._domainkey.{ORIGIN} 3600 IN TXT {other}"
        for line in text.splitlines()
    )
    code, table = run(dkim_config, "--check", resolve=zone_resolver(published))
    assert code == 1
    row = next(line for line in table.splitlines() if line.startswith(f"sel2026._domainkey.{ORIGIN} TXT"))
    assert row.endswith("WRONG")


def test_check_accepts_a_txt_value_split_differently_and_extra_records_beside_it() -> None:
    rows = dnszone.check_zone(
        [dnszone.Record(f"x.{ORIGIN}", "TXT", dnszone.quote_txt("v=spf1 a ~all"), "")],
        lambda name, rtype: ['"google-site-verification=abc"', '"v=spf1 " "a ~all"'],
    )
    assert rows[0].ok


def test_a_failed_lookup_counts_as_a_problem_and_says_so(dkim_config: Config) -> None:
    _, text = run(dkim_config)
    code, table = run(dkim_config, "--check", resolve=zone_resolver(text, frozenset({(ORIGIN, "MX")})))
    assert code == 1
    row = next(line for line in table.splitlines() if line.startswith(f"{ORIGIN} MX"))
    assert "lookup failed: SERVFAIL" in row and row.endswith("FAILED")


def test_check_reports_a_stale_address_beside_the_right_one_as_wrong(dkim_config: Config) -> None:
    _, text = run(dkim_config)
    published = text + f"{ORIGIN} 3600 IN A 198.51.100.99\n"
    code, table = run(dkim_config, "--check", resolve=zone_resolver(published))
    assert code == 1
    row = next(line for line in table.splitlines() if line.startswith(f"{ORIGIN} A "))
    assert "198.51.100.99" in row and row.endswith("WRONG")
    assert "1 of 16 records missing or wrong:" in table
