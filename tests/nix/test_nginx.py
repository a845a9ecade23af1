"""nginx as the module configures it: where it listens, what reloads with the certificate,
the proxy settings the lab shares with NixOS, and gixy (which nixpkgs runs on nginx.conf at
build time) on the rendered configuration."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "nixos/modules/chatmail/config"
sys.path.insert(0, str(ROOT / "tests/lab"))

import render  # noqa: E402

DOMAIN = "relay1.test"


def evaluate(settings: dict | None = None, tls_mode: str = "acme") -> dict:
    """The lab's relay (tests/lab/relay.nix) with chatmail.ini settings and a TLS mode."""
    expr = f"""
      let
        relay = import {ROOT}/tests/lab/relay.nix {{
          domain = "{DOMAIN}";
          settingsJSON = {json.dumps(json.dumps(settings or {}))};
        }};
        paths = relay.paths // {{ tlsMode = "{tls_mode}"; }};
      in relay // {{
        nginx = import {CONFIG}/nginx.nix {{ inherit (relay) settings; inherit paths; }};
      }}
    """
    out = subprocess.run(["nix-instantiate", "--eval", "--strict", "--json", "-E", expr],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def nginx_conf(relay: dict) -> str:
    paths = relay["paths"]
    return render.nginx_conf(relay["nginx"], DOMAIN, paths["httpsPort"], paths["tlsCert"],
                             paths["tlsKey"], paths["acmeWebroot"])


def listens(conf: str) -> list[str]:
    return re.findall(r"^\s*listen ([^;]+);", conf, re.MULTILINE)


VARIANTS = {
    "acme": ({}, "acme"),
    "self-signed": ({}, "self-signed"),
    "ipv4-only": ({"disable_ipv6": True}, "acme"),
}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request) -> tuple[str, dict]:
    settings, tls_mode = VARIANTS[request.param]
    return request.param, evaluate(settings, tls_mode)


def test_with_disable_ipv6_no_virtual_host_and_no_stream_listens_on_ipv6():
    relay = evaluate({"disable_ipv6": True})
    assert all(not entry["addr"].startswith("[") for entry in relay["nginx"]["defaultListen"])
    addresses = listens(nginx_conf(relay))
    assert addresses and not [a for a in addresses if "[" in a], addresses


def test_with_ipv6_plain_http_and_the_multiplexer_listen_on_ipv6_too():
    addresses = listens(nginx_conf(evaluate()))
    assert "[::]:80" in addresses and "[::]:443" in addresses, addresses


def test_the_https_site_listens_on_loopback_only_behind_the_multiplexer():
    relay = evaluate()
    tls_side = [entry["addr"] for entry in relay["nginx"]["defaultListen"] if entry["ssl"]]
    assert tls_side == ["127.0.0.1"]
    port = relay["paths"]["httpsPort"]
    tls_listens = [a for a in listens(nginx_conf(relay)) if " ssl" in a]
    assert tls_listens == [f"127.0.0.1:{port} ssl proxy_protocol"]
    assert f"default 127.0.0.1:{port};" in relay["nginx"]["streamConfig"]


def test_the_certificate_reloads_postfix_and_dovecot_and_leaves_nginx_to_its_own_module():
    # nixpkgs' nginx module adds nginx.service to reloadServices for a vhost with useACMEHost;
    # listing it here as well would name it twice.
    reload = evaluate()["acme"]["reloadServices"]
    assert sorted(reload) == ["dovecot.service", "postfix.service"]


def test_the_lab_proxies_with_http_1_1_like_nixpkgs_recommended_proxy_settings():
    conf = nginx_conf(evaluate())
    http = conf[conf.index("http {"):conf.index("  server {")]
    assert "proxy_http_version 1.1;" in http
    assert 'proxy_set_header "Connection" "";' in http
    mxdeliv = conf[conf.index("location = /mxdeliv {"):]
    mxdeliv = mxdeliv[:mxdeliv.index("  }")]
    # A location with its own proxy_set_header lines loses the http block's: NixOS repeats them.
    assert "proxy_set_header X-Forwarded-Server $hostname;" in mxdeliv
    assert "proxy_request_buffering off;" in mxdeliv


def test_the_site_sends_hsts_and_serves_nothing_beyond_its_locations_but_the_site_directory():
    relay = evaluate()
    extra = relay["nginx"]["extraConfig"]
    assert re.search(r'add_header Strict-Transport-Security "max-age=\d+" always;', extra)
    # Everything that is not one of the relay's own locations comes from the web site's
    # directory (a missing file: 404), never from anywhere else on the machine.
    roots = re.findall(r"^\s*(?:root|alias) ([^;]+);", nginx_conf(relay), re.MULTILINE)
    www = relay["paths"]["wwwFiles"]
    assert roots and all(r.startswith(www + "/") or r == relay["paths"]["acmeWebroot"] for r in roots), roots
    assert relay["nginx"]["locations"]["/"]["extraConfig"].startswith(f"root {www}/site;")


def gixy() -> str:
    """gixy from the test environment (tools/install-deps puts it beside this Python)."""
    found = shutil.which("gixy", path=str(Path(sys.executable).parent)) or shutil.which("gixy")
    assert found, "gixy is missing: tools/install-deps installs gixy-ng into the test venv"
    return found


def test_gixy_finds_nothing_in_the_rendered_nginx_conf(variant, tmp_path):
    name, relay = variant
    conf = tmp_path / "nginx.conf"
    conf.write_text(nginx_conf(relay))
    result = subprocess.run([gixy(), str(conf)], capture_output=True, text=True)
    assert result.returncode == 0, f"{name}:\n{result.stdout}\n{result.stderr}"
    assert ">> Problem" not in result.stdout, f"{name}:\n{result.stdout}"


def test_the_site_sees_each_client_behind_the_multiplexer_and_limits_new_per_client():
    """Behind the port-443 multiplexer every HTTPS client would be 127.0.0.1: one shared
    rate limit for everybody. The multiplexer sends a PROXY header; the site takes the
    client's address from it (only from loopback), and IMAP and SMTP get it taken off."""
    relay = evaluate()
    conf = nginx_conf(relay)
    stream = conf[conf.index("stream {"):conf.index("http {")]
    mux = stream[stream.index("listen 443;"):]
    assert "proxy_protocol on;" in mux[:mux.index("}")]
    ports = relay["nginx"]["alpnPorts"]
    for port, upstream in ((ports["smtp"], 465), (ports["imap"], 993)):
        assert re.search(rf"listen 127\.0\.0\.1:{port} proxy_protocol;\s*proxy_pass 127\.0\.0\.1:{upstream};", stream)
    http = conf[conf.index("http {"):]
    assert "set_real_ip_from 127.0.0.1;" in http and "real_ip_header proxy_protocol;" in http
    assert "limit_req_zone $binary_remote_addr zone=chatmail_new:10m rate=2r/s;" in http
    for path in ("/new", "/cgi-bin/newemail.py"):
        block = http[http.index(f"location = {path} {{"):]
        block = block[:block.index("proxy_set_header Host")]
        assert "limit_req zone=chatmail_new burst=5 nodelay;" in block and "limit_req_status 429;" in block
        assert "proxy_set_header X-Real-IP $remote_addr;" in http[http.index(f"location = {path} {{"):]


def location(conf: str, name: str) -> str:
    block = conf[conf.index(f"location {name} {{"):]
    return block[:block.index("  }")]


def test_the_iroh_relay_paths_reach_its_loopback_port_and_the_relay_connection_is_upgraded():
    relay = evaluate()
    conf = nginx_conf(relay)
    upstream = f"proxy_pass http://{relay['irohRelay']['listen']};"
    for path in ("= /relay", "= /ping", "= /generate_204"):
        assert upstream in location(conf, path)
    connection = location(conf, "= /relay")
    assert "proxy_set_header Upgrade $http_upgrade;" in connection
    assert "proxy_set_header Connection $connection_upgrade;" in connection
    # The map nixpkgs' nginx module writes for proxyWebsockets.
    assert "map $http_upgrade $connection_upgrade {" in conf


def test_without_an_iroh_relay_on_the_host_the_site_has_no_iroh_paths():
    expr = f"""
      let relay = import {ROOT}/tests/lab/relay.nix {{ domain = "{DOMAIN}"; }};
      in import {CONFIG}/nginx.nix {{ inherit (relay) settings; paths = relay.paths // {{ irohRelayExe = null; }}; }}
    """
    out = subprocess.run(["nix-instantiate", "--eval", "--strict", "--json", "-E", expr],
                         check=True, capture_output=True, text=True).stdout
    nginx = json.loads(out)
    assert nginx["irohLocations"] == {}
    assert not {"= /relay", "= /ping", "= /generate_204"} & set(nginx["locations"])


def test_the_lab_serves_the_iroh_relay_on_port_80_too_and_nothing_else_there():
    relay = evaluate()
    conf = render.nginx_conf(relay["nginx"], DOMAIN, 8443, "/c", "/k", "/w", plain_http=relay["nginx"]["irohLocations"])
    http = conf[conf.index("listen 0.0.0.0:80;"):conf.index("listen 127.0.0.1:8443")]
    assert re.findall(r"location (\S+ \S+|\S+) \{", http) == [
        "/", "^~ /.well-known/acme-challenge/", "= /generate_204", "= /ping", "= /relay"]


def test_the_iroh_relay_configuration_file_reads_back_as_its_data():
    import tomllib

    config = evaluate()["irohRelay"]["config"]
    assert tomllib.loads(render.toml_flat(config)) == config
    assert config["http_bind_addr"].startswith("127.0.0.1:") and config["metrics_bind_addr"].startswith("127.0.0.1:")
