"""nginx proxies like NixOS's: HTTP/1.1 to the upstreams (recommendedProxySettings), so a
relay that streams its /mxdeliv request with chunked transfer encoding reaches filtermail
as it is sent, and the message is delivered."""

from __future__ import annotations

from conftest import labmod, relay_file


def test_nginx_speaks_http_1_1_to_the_upstreams_as_nixos_recommended_proxy_settings_do(lab):
    conf = relay_file("relay2", labmod.paths("relay2")["nginxConf"]).read_text()
    http = conf[conf.index("http {"):]
    assert "proxy_http_version 1.1;" in http
    mxdeliv = http[http.index("location = /mxdeliv {"):]
    mxdeliv = mxdeliv[:mxdeliv.index("}")]
    assert "proxy_request_buffering off;" in mxdeliv


def test_a_chunked_mxdeliv_body_passes_nginx_and_is_delivered(client, account):
    bob, bob_pw = account("relay2.test")
    key = str(labmod.STATE / "ca/relay1.test.dkim.key")
    # mailcheck sends 512-byte chunks: a real message takes several.
    sent = client("mxdeliv", "--host", "relay2.test", "--from", "alice0001@relay1.test", "--to", bob,
                  "--dkim-key", key, "--chunked")
    assert sent["chunks"] > 1, sent
    assert (sent["status"], sent["body"]) == (200, "250 OK"), sent
    assert client("wait", bob, bob_pw, "--token", sent["token"])["ok"]
    print(f"POST https://relay2.test/mxdeliv, {sent['size']} bytes in {sent['chunks']} chunks: {sent['status']} {sent['body']}")
