from __future__ import annotations

import asyncio
import json
import string
from collections.abc import Callable
from urllib.parse import parse_qs, unquote, urlsplit

import aiohttp
import pytest
from aiohttp import web

from chatmaild import newemail
from chatmaild.config import Config
from chatmaild.newemail import PASSWORD_ALPHABET, make_app, new_credentials


def test_credentials_have_the_configured_lengths_and_alphabets(make_config: Callable[..., Config]) -> None:
    config = make_config(username_max_length=12, password_min_length=10)

    answer = new_credentials(config)

    user, domain = answer["email"].split("@")
    assert set(answer) == {"email", "password"}
    assert domain == "chat.example.org"
    assert len(user) == 12
    assert set(user) <= set(string.ascii_lowercase + string.digits)
    assert len(answer["password"]) == 13
    assert set(answer["password"]) <= set(PASSWORD_ALPHABET)


def test_every_answer_is_new_and_uses_the_whole_alphabet(config: Config) -> None:
    answers = [new_credentials(config) for _ in range(500)]

    assert len({a["email"] for a in answers}) == 500
    assert len({a["password"] for a in answers}) == 500
    used = set("".join(a["email"].split("@")[0] for a in answers))
    assert used == set(string.ascii_lowercase + string.digits)
    assert len(set("".join(a["password"] for a in answers))) > 80


def test_acme_and_external_certificates_get_no_dclogin_url(make_config: Callable[..., Config]) -> None:
    acme = make_config()
    external = make_config(tls_external_cert_and_key="/c.pem /k.pem")

    assert "dclogin_url" not in new_credentials(acme)
    assert "dclogin_url" not in new_credentials(external)


def test_ip_relay_gets_a_bracketed_address_and_a_dclogin_url_with_hosts(
    make_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = make_config(mail_domain="192.0.2.7")
    password = 'a@b+c%d&e f"\\'

    def fixed(alphabet: str, length: int) -> str:
        return password if alphabet == PASSWORD_ALPHABET else "abcdefghi"

    monkeypatch.setattr(newemail, "random_string", fixed)

    answer = new_credentials(config)

    assert answer["email"] == "abcdefghi@[192.0.2.7]"
    assert answer["dclogin_url"] == (
        "dclogin:abcdefghi@[192.0.2.7]?p=a%40b%2Bc%25d%26e%20f%22%5C&v=1&ih=192.0.2.7&sh=192.0.2.7&ic=3"
    )


def test_self_signed_mode_on_an_ordinary_domain_gets_a_dclogin_url(make_config: Callable[..., Config]) -> None:
    # The NixOS module writes tls_cert_mode from services.chatmail.tls.mode: the domain's
    # shape must not overrule it.
    config = make_config(mail_domain="chat.example.org", tls_cert_mode="self-signed")

    assert "ic=3" in new_credentials(config)["dclogin_url"]
    assert "dclogin_url" not in new_credentials(make_config(tls_cert_mode="acme"))


def test_self_signed_domain_gets_a_dclogin_url_that_round_trips(make_config: Callable[..., Config]) -> None:
    config = make_config(mail_domain="_test.example.org")

    answer = new_credentials(config)
    url = urlsplit(answer["dclogin_url"])
    query = parse_qs(url.query)

    assert url.scheme == "dclogin"
    assert unquote(url.path) == answer["email"]
    assert query["p"] == [answer["password"]]
    assert query["v"] == ["1"] and query["ic"] == ["3"]
    assert "ih" not in query and "sh" not in query


def test_service_answers_post_and_get_on_both_paths_with_json(config: Config) -> None:
    async def scenario() -> list[tuple[int, str, str, dict[str, str]]]:
        runner = web.AppRunner(make_app(config))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        results = []
        try:
            async with aiohttp.ClientSession() as session:
                for method, path in (("POST", "/new"), ("GET", "/new"), ("POST", "/cgi-bin/newemail.py")):
                    async with session.request(method, f"http://127.0.0.1:{port}{path}") as resp:
                        results.append(
                            (resp.status, resp.content_type, resp.headers["Cache-Control"], await resp.json())
                        )
                async with session.put(f"http://127.0.0.1:{port}/new") as resp:
                    results.append((resp.status, "", "", {}))
        finally:
            await runner.cleanup()
        return results

    results = asyncio.run(scenario())

    for status, content_type, cache, body in results[:3]:
        assert (status, content_type, cache) == (200, "application/json", "no-store")
        assert body["email"].endswith("@chat.example.org")
    assert len({body["email"] for *_, body in results[:3]}) == 3
    assert results[3][0] == 405


def test_json_is_one_line(config: Config) -> None:
    text = json.dumps(new_credentials(config))

    assert "\n" not in text
    assert json.loads(text).keys() == {"email", "password"}


def test_cli_names_a_bad_listen_address(config: Config, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        newemail.main([str(config.path), "--listen", "nowhere"])

    assert "invalid listen address 'nowhere'" in capsys.readouterr().err


def run_client(app: web.Application, scenario) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    async def main() -> None:
        async with TestClient(TestServer(app)) as client:
            await scenario(client)

    asyncio.run(main())


def test_a_client_over_the_rate_limit_gets_429_with_retry_after(config: Config) -> None:
    from chatmaild.ratelimit import RateLimiter

    now = [1_800_000_000.0]
    app = make_app(config, RateLimiter(per_minute=6, burst=3, clock=lambda: now[0]))

    async def scenario(client) -> None:
        one = {"X-Real-IP": "198.51.100.7"}
        for _ in range(3):
            assert (await client.post("/new", headers=one)).status == 200
        refused = await client.post("/new", headers=one)
        assert refused.status == 429
        assert refused.headers["Retry-After"] == "10"
        assert "try again after 2027-01-15T08:00:10Z" in await refused.text()
        assert (await client.post("/new", headers={"X-Real-IP": "198.51.100.8"})).status == 200
        now[0] += 10
        assert (await client.post("/new", headers=one)).status == 200

    run_client(app, scenario)


def test_ipv6_clients_are_limited_per_64_block(config: Config) -> None:
    from chatmaild.ratelimit import RateLimiter

    app = make_app(config, RateLimiter(per_minute=1, burst=2, clock=lambda: 1_800_000_000.0))

    async def scenario(client) -> None:
        for host in ("2001:db8:1:2::1", "2001:db8:1:2:ffff::9"):
            assert (await client.get("/new", headers={"X-Real-IP": host})).status == 200
        assert (await client.get("/new", headers={"X-Real-IP": "2001:db8:1:2::77"})).status == 429
        assert (await client.get("/new", headers={"X-Real-IP": "2001:db8:1:3::1"})).status == 200

    run_client(app, scenario)


def test_the_default_limit_stops_a_flood_from_one_address(config: Config) -> None:
    async def scenario(client) -> None:
        statuses = [(await client.post("/new", headers={"X-Real-IP": "203.0.113.5"})).status for _ in range(30)]
        assert statuses.count(200) == newemail.NEW_BURST
        assert set(statuses[newemail.NEW_BURST :]) == {429}

    run_client(make_app(config), scenario)
