"""The relay's web pages as config/www.nix and config/nginx.nix make them: every page named,
in a language, fit for a phone, linking the others; the limits and the privacy facts taken
from the relay's settings; the operator's values escaped; the site served from its own
directory without an access log. The lab renders the same pages in a browser
(tests/lab/test_browser.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "nixos/modules/chatmail/config"
sys.path.insert(0, str(ROOT / "tests/lab"))

import browser  # noqa: E402

DOMAIN = "chat.example.org"
PAGES = {"index.html": "/", "info.html": "/info.html", "privacy.html": "/privacy.html"}


def evaluate(settings: dict | None = None, journal: dict | None = None, turn: bool = True) -> dict:
    """The lab relay's settings and paths (tests/lab/relay.nix) with changes, through
    config/nginx.nix as the NixOS module calls it."""
    journal_arg = "" if journal is None else f"journal = builtins.fromJSON {json.dumps(json.dumps(journal))};"
    turn_file = "relay.paths.metadataTurnSecretFile" if turn else "null"
    expr = f"""
      let
        relay = import {ROOT}/tests/lab/relay.nix {{
          domain = "{DOMAIN}";
          settingsJSON = {json.dumps(json.dumps(settings or {}))};
        }};
        paths = relay.paths // {{ metadataTurnSecretFile = {turn_file}; }};
      in import {CONFIG}/nginx.nix {{ inherit (relay) settings; inherit paths; {journal_arg} }}
    """
    out = subprocess.run(["nix-instantiate", "--eval", "--strict", "--json", "-E", expr],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def pages(**kw) -> dict[str, browser.Page]:
    return {name: browser.parse(text) for name, text in evaluate(**kw)["pages"].items() if name.endswith(".html")}


def test_every_page_has_a_title_naming_the_relay_a_language_and_a_phone_viewport():
    for name, page in pages().items():
        assert DOMAIN in page.title, name
        assert page.lang == "en", name
        assert page.viewport == "width=device-width, initial-scale=1", name


def test_every_page_links_the_other_pages_and_loads_only_the_shared_style_sheet_and_icon():
    for name, page in pages().items():
        assert set(PAGES.values()) - {PAGES[name]} <= set(page.links), name
        assert page.scripts == 0, name
        assert [load for load in page.loads if load[0] != "img"] == [
            ("link", "href", "/favicon.svg"), ("link", "href", "/style.css")], name


def test_the_style_sheet_has_a_dark_variant_and_the_qr_code_stays_dark_on_white():
    css = evaluate()["pages"]["style.css"]
    assert "@media (prefers-color-scheme: dark)" in css and "color-scheme: light dark" in css
    qr_rule = css[css.index(".qr {"):]
    assert "background: #ffffff" in qr_rule[:qr_rule.index("}")]


def test_the_index_offers_the_invite_as_a_link_and_as_the_qr_code_image():
    index = pages()["index.html"]
    assert f"DCACCOUNT:https://{DOMAIN}/new" in index.links
    assert ("img", "src", "/qr-invite.svg") in index.loads
    assert evaluate()["qrText"] == f"DCACCOUNT:https://{DOMAIN}/new"


def test_the_info_page_puts_the_settings_into_words():
    info = pages(settings={"delete_mails_after": 5, "delete_large_after": 1, "delete_inactive_users_after": 30,
                           "max_mailbox_size": "2G", "max_message_size": 52428800, "max_user_send_per_minute": 30,
                           "max_user_send_burst_size": 4})["info.html"].text
    for words in ["deleted 5 days after it arrived", "deleted 1 day after they arrived", "30 days",
                  "Storage per address: 2 GiB", "attachments included: 50 MiB",
                  "up to 4 messages at once, then 30 per minute"]:
        assert words in info, words
    assert "Unencrypted messages can only be sent to" not in info


def test_the_privacy_page_shows_the_operators_contacts_escaped():
    contacts = {"privacy_mail": "privacy@example.org", "privacy_postal": "Example <Ltd> & Co, Main St 1",
                "privacy_pdo": "", "privacy_supervisor": "The Data Authority"}
    privacy = evaluate(settings=contacts)["pages"]["privacy.html"]
    assert "Example &lt;Ltd&gt; &amp; Co, Main St 1" in privacy and "<Ltd>" not in privacy
    page = browser.parse(privacy)
    assert "mailto:privacy@example.org" in page.links
    assert "The Data Authority" in page.text
    # The one left empty says so, rather than showing nothing.
    assert page.text.count("has not filled this in yet") == 1


def test_the_privacy_page_states_how_long_logs_are_kept_as_configured():
    default = pages()["privacy.html"].text
    assert "Logs are kept in memory only (never written to disk), and deleted after 3 days" in default
    on_disk = pages(journal={"volatile": False, "maxRetention": "12h"})["privacy.html"].text
    assert "Logs are kept on the server's disk, and deleted after 12 hours." in on_disk
    unlimited = pages(journal={"volatile": False, "maxRetention": None})["privacy.html"].text
    assert "until the system's log size limit pushes them out" in unlimited


def test_the_privacy_page_names_the_push_service_and_what_calls_use():
    privacy = pages(settings={"notification_url": "https://push.example.net/notify"})["privacy.html"].text
    assert "to the notification service at push.example.net" in privacy
    assert "this relay's TURN server" in privacy
    assert "offers no server for calls" in pages(turn=False)["privacy.html"].text


def test_the_site_is_served_from_its_own_directory_without_an_access_log():
    nginx = evaluate()
    site = nginx["locations"]["/"]["extraConfig"]
    assert "root /etc/chatmail/www/site;" in site and "index index.html;" in site
    # A missing file (a browser's /favicon.ico) puts no visitor's address into the error log.
    assert "log_not_found off;" in site
    assert "favicon.svg" in nginx["pages"]
    assert "access_log off;" in nginx["httpConfig"]
    # The relay's own files keep their fixed locations outside the operator's reach.
    assert "site/" not in nginx["locations"]["= /robots.txt"]["alias"]
    assert not set(nginx["files"]) & set(nginx["pages"])
