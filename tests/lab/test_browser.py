"""The relays' web pages as a person sees them: rendered by headless Chromium on the client
host at a phone's and a desktop's width (and in its phone emulation), in light and dark
mode, with the invite's QR code read back from the screenshot by zbar.

Which pages there are comes from what each relay serves (the .html files of its site
directory), not from a list here: relay1 and relay3 (no domain, self-signed) have the
relay's own pages; relay2 has an operator's own index page and style sheet over them
(services.chatmail.www.source; the lab's copy is tests/lab/www-operator)."""

from __future__ import annotations

import pytest

import browser
from conftest import labmod, relay_file
from fixtures import WWW_SOURCE

RELAYS = ["relay1", "relay2", "relay3"]


def domain(relay: str) -> str:
    return labmod.BY_NAME[relay].domain


def base(relay: str) -> str:
    return f"https://{domain(relay)}"


def invite(relay: str) -> str:
    return f"DCACCOUNT:https://{domain(relay)}/new"


def site_pages(relay: str) -> list[str]:
    """The URL path of every HTML page the relay serves from its site directory."""
    site = relay_file(relay, labmod.paths(relay)["wwwFiles"] + "/site")
    names = sorted(p.name for p in site.glob("*.html"))
    assert "index.html" in names, f"{relay} serves no index page: {names}"
    return ["/" if n == "index.html" else f"/{n}" for n in names]


@pytest.fixture(scope="module")
def rendered(lab) -> dict[tuple[str, str], browser.Page]:
    """Every page of every relay, as Chromium built it."""
    return {(relay, path): browser.dom(base(relay) + path) for relay in RELAYS for path in site_pages(relay)}


def test_every_relay_serves_an_index_an_info_and_a_privacy_page(lab):
    for relay in RELAYS:
        assert {"/", "/info.html", "/privacy.html"} <= set(site_pages(relay)), relay


def test_every_page_has_a_title_a_language_and_a_phone_viewport(rendered):
    for (relay, path), page in rendered.items():
        where = f"{base(relay)}{path}"
        assert page.title.strip(), f"{where}: no <title>"
        assert page.lang and len(page.lang) >= 2, f"{where}: <html> has no lang attribute"
        assert page.viewport and "width=device-width" in page.viewport, f"{where}: viewport {page.viewport!r}"


def test_every_page_fits_a_phone_screen_without_sideways_scrolling_or_tiny_text(lab):
    """In Chromium's phone emulation (390 px wide, the page's viewport meta honoured): the
    page is laid out at the phone's width, nothing sticks out sideways, body text is at
    least 16 px and no text is under 12 px."""
    for relay in RELAYS:
        for path in site_pages(relay):
            seen = browser.on_phone(base(relay) + path, browser.PHONE_LAYOUT)
            where = f"{base(relay)}{path}"
            assert seen["layoutWidth"] == browser.PHONE[0], f"{where} is laid out {seen['layoutWidth']} px wide"
            assert seen["contentWidth"] <= browser.PHONE[0], f"{where} scrolls sideways: {seen}"
            assert seen["bodyFont"] >= 16 and seen["smallestFont"] >= 12, f"{where}: {seen}"


def test_every_page_links_every_other_page_of_its_relay(rendered):
    for (relay, path), page in rendered.items():
        others = set(site_pages(relay)) - {path}
        linked = {href.removeprefix(base(relay)) for href in page.links}
        assert others <= linked, f"{base(relay)}{path} does not link {sorted(others - linked)}"


def test_every_page_names_its_relay_and_loads_nothing_from_elsewhere(rendered):
    for (relay, path), page in rendered.items():
        where = f"{base(relay)}{path}"
        assert domain(relay) in page.title + page.text, f"{where} does not name {domain(relay)}"
        assert page.scripts == 0, f"{where} runs scripts"
        foreign = [load for load in page.loads if not load[2].startswith("/") or load[2].startswith("//")]
        assert not foreign, f"{where} loads from elsewhere: {foreign}"


def test_the_info_page_states_the_relays_limits_in_words(rendered):
    settings = labmod.relay_config("relay1")["settings"]
    text = rendered["relay1", "/info.html"].text
    for words in [f"{settings['delete_mails_after']} days after it arrived",
                  f"{settings['delete_inactive_users_after']} days",
                  f"Storage per address: {settings['max_mailbox_size'].removesuffix('M')} MiB",
                  f"{settings['max_message_size'] // 1048576} MiB",
                  f"{settings['max_user_send_per_minute']} per minute",
                  f"Unencrypted messages can only be sent to these addresses, for example to reach the operator: "
                  f"{settings['passthrough_recipients']}"]:
        assert words in text, f"info page lacks {words!r}"


def test_the_privacy_page_says_what_is_kept_where_and_for_how_long(rendered):
    text = rendered["relay1", "/privacy.html"].text
    for words in ["in memory only (never written to disk), and deleted after 3 days",  # the lab's journald
                  "Push notification tokens", "to the notification service at 10.77.0.100",  # the lab's push proxy
                  "The web server keeps no access log", "this relay's TURN server",
                  "has not filled this in yet", "Your rights", "Deleting your data"]:
        assert words in text, f"privacy page lacks {words!r}"


@pytest.mark.parametrize("relay", ["relay1", "relay3"])
@pytest.mark.parametrize("dark", [False, True], ids=["light", "dark"])
def test_the_invite_qr_code_on_a_phone_screen_reads_as_the_invite_link(lab, relay, dark, tmp_path):
    shot = browser.screenshot(base(relay) + "/", tmp_path / f"{relay}-phone.png", browser.PHONE, dark=dark)
    print(f"{relay} on a phone ({'dark' if dark else 'light'}): {shot}")
    assert browser.qr_codes(shot) == [invite(relay)]
    assert invite(relay) in browser.dom(base(relay) + "/").links


def test_the_invite_qr_code_on_a_desktop_screen_reads_as_the_invite_link(lab, tmp_path):
    shot = browser.screenshot(base("relay1") + "/", tmp_path / "relay1-desktop.png", browser.DESKTOP)
    print(f"relay1 on a desktop: {shot}")
    assert browser.qr_codes(shot) == [invite("relay1")]


@pytest.mark.parametrize("path", ["/", "/privacy.html"])
def test_the_pages_follow_the_readers_light_or_dark_preference(lab, path, tmp_path):
    """The background beside the text column is light when the reader prefers light and
    dark when they prefer dark, at a phone's and at a desktop's width."""
    for size in (browser.PHONE, browser.DESKTOP):
        seen = {}
        for dark in (False, True):
            shot = browser.screenshot(base("relay1") + path, tmp_path / f"{dark}-{size[0]}.png", size, dark=dark)
            picture = browser.read_png(shot)
            seen[dark] = picture.luminance(picture.width - 3, picture.height // 2)
        print(f"{path} at {size[0]} px: background luminance light {seen[False]:.2f}, dark {seen[True]:.2f}")
        assert seen[False] > 0.85 and seen[True] < 0.2, seen


def test_an_operators_own_files_replace_the_relays_by_name_and_add_to_them(lab, client, rendered, tmp_path):
    source = WWW_SOURCE["relay2"]
    # Their index page replaces the relay's; the relay's other pages stay, in their style.
    assert rendered["relay2", "/"].title == "Harbour Chat on relay2.test"
    assert rendered["relay2", "/info.html"].title.startswith("Usage and limits")
    assert ("link", "href", "/style.css") in rendered["relay2", "/info.html"].loads
    css = client("http", "GET", base("relay2") + "/style.css")
    assert css["status"] == 200 and css["body"] == (source / "style.css").read_text()
    # A file of their own is served beside the pages; the relay's endpoints stay the relay's.
    logo = client("http", "GET", base("relay2") + "/harbour.svg")
    assert logo["status"] == 200 and logo["content_type"].startswith("image/svg+xml")
    auto = client("http", "GET", base("relay2") + "/.well-known/autoconfig/mail/config-v1.1.xml")
    assert auto["status"] == 200 and "<hostname>relay2.test</hostname>" in auto["body"]
    # In the browser: their page shows the relay's QR code, and their colours reach the
    # relay's own pages (Harbour Chat's background is #fbf3e1).
    shot = browser.screenshot(base("relay2") + "/", tmp_path / "relay2-phone.png", browser.PHONE)
    assert browser.qr_codes(shot) == [invite("relay2")]
    info = browser.read_png(browser.screenshot(base("relay2") + "/info.html", tmp_path / "info.png", browser.PHONE))
    assert info.pixel(info.width - 3, info.height // 2) == (0xFB, 0xF3, 0xE1)


def test_a_visit_leaves_no_trace_in_the_web_servers_logs(lab, client, rendered):
    """As the privacy page says: after every page was fetched in a browser (`rendered`),
    one over port 80 and a missing one, no relay has logged a request, and its error log
    names no file of the site (a browser's /favicon.ico used to be a line with the
    visitor's address in it)."""
    assert client("http", "GET", "http://relay1.test/info.html")["status"] == 301
    assert client("http", "GET", "https://relay1.test/no-such-page.html")["status"] == 404
    for relay in RELAYS:
        access = relay_file(relay, "/var/log/nginx/access.log")
        assert not access.exists() or access.stat().st_size == 0, f"{relay}: {access.read_text()[:300]}"
        error = relay_file(relay, "/var/log/nginx/error.log")
        site = labmod.paths(relay)["wwwFiles"] + "/site"
        lines = [line for line in (error.read_text().splitlines() if error.exists() else []) if site in line]
        assert not lines, f"{relay}: {lines[:3]}"
