"""The relay's units as data (nixos/modules/chatmail/config/units.nix): what NixOS and the
lab both build their systemd units from."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "nixos/modules/chatmail/config"
sys.path.insert(0, str(ROOT / "tests/lab"))

import units as unitfiles  # noqa: E402

# The NixOS paths (config/paths-nixos.nix) of an example relay, with selector "default";
# each test overrides what it is about.
BASE = f'import {CONFIG}/paths-nixos.nix {{ domain = "chat.example.org"; dkimSelector = "default"; }}'


def evaluate(**overrides) -> dict:
    expr = (
        f"import {CONFIG}/units.nix {{ settings = (import {CONFIG}/defaults.nix).settings // "
        f'{{ mail_domain = "chat.example.org"; }}; '
        f"paths = ({BASE}) // builtins.fromJSON {json.dumps(json.dumps(overrides))}; "
        f'exe = n: "/bin/${{n}}"; }}'
    )
    out = subprocess.run(["nix-instantiate", "--eval", "--strict", "--json", "-E", expr],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def test_a_given_dkim_key_is_used_as_it_is_and_no_other_key_is_generated():
    services = evaluate(dkimKeyGenerated=False, dkimKeyFile="/run/secrets/dkim.private")["services"]
    assert not [name for name, unit in services.items() if "opendkim-genkey" in unit.get("script", "")]


def test_without_a_given_key_one_one_shot_makes_exactly_the_key_opendkim_reads():
    unit = evaluate()["services"]["chatmail-dkim-key"]
    assert unit["requiredBy"] == ["opendkim.service"] and unit["before"] == ["opendkim.service"]
    assert "if [ ! -s '/var/lib/opendkim/keys/default.private' ]" in unit["script"]
    assert "mv '/var/lib/opendkim/keys/default.private.tmp' '/var/lib/opendkim/keys/default.private'" in unit["script"]


def test_one_shot_scripts_quote_every_path_for_the_shell():
    unit = evaluate(turnSecretFile="/var/lib/it's here/secret")["services"]["chatmail-turn-secret"]
    assert "'/var/lib/it'\\''s here/secret'" in unit["script"]
    r = subprocess.run(["sh", "-n", "-c", unit["script"]], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_every_daemon_has_its_command_line_as_a_list_of_arguments():
    for name, unit in evaluate()["services"].items():
        if "script" not in unit:
            assert isinstance(unit["serviceConfig"]["ExecStart"], list), name
            assert unit["serviceConfig"]["ExecStart"][0].startswith("/bin/"), name


def test_exec_arguments_are_quoted_as_nixpkgs_escape_systemd_exec_args_quotes_them():
    # utils.escapeSystemdExecArg: toJSON, then % -> %% and $ -> $$.
    argv = ["/bin/x", "two words", "100%", "$HOME", 'say "hi"', "back\\slash"]
    assert unitfiles.exec_args(argv) == (
        '"/bin/x" "two words" "100%%" "$$HOME" "say \\"hi\\"" "back\\\\slash"'
    )


def test_with_acme_nginx_starts_before_the_certificate_unit_and_postfix_after_it():
    ordering = evaluate()["ordering"]
    assert ordering["nginx"] == []
    assert "acme-chat.example.org.service" in ordering["postfix"]
    assert evaluate(tlsMode="self-signed", tlsUnit="chatmail-tls-selfsigned.service")["ordering"]["nginx"] == [
        "chatmail-tls-selfsigned.service"]


def test_the_mailboxes_parent_is_made_for_the_mail_user_before_the_mailboxes():
    assert evaluate()["tmpfiles"][:2] == [
        "d /home/vmail/mail 0700 vmail vmail - -",
        "d /home/vmail/mail/chat.example.org 0700 vmail vmail - -",
    ]


def test_opendkim_restarts_daily_and_after_a_crash():
    assert evaluate()["opendkimService"] == {"Restart": "always", "RestartSec": "5s", "RuntimeMaxSec": "1d"}


def test_the_metadata_socket_belongs_to_systemd_so_it_stays_open_while_the_daemon_restarts():
    data = evaluate()
    sock = data["sockets"]["chatmail-metadata"]
    assert sock["listenStreams"] == ["/run/chatmail-metadata/metadata.socket"]
    assert sock["socketConfig"]["SocketUser"] == "vmail" and sock["socketConfig"]["SocketMode"] == "0660"
    assert sock["wantedBy"] == ["sockets.target"]
    service = data["services"]["chatmail-metadata"]
    assert service["requires"] == ["chatmail-metadata.socket"] and "chatmail-metadata.socket" in service["after"]
    # A RuntimeDirectory would be removed, socket and all, each time the daemon stops.
    assert "RuntimeDirectory" not in service["serviceConfig"]
    assert "chatmail-metadata.socket" in data["ordering"]["dovecot"]
    text = unitfiles.socket_unit("chatmail-metadata", sock).files["chatmail-metadata.socket"]
    assert "ListenStream=/run/chatmail-metadata/metadata.socket\n" in text and "Backlog=1024\n" in text


def test_a_dovecot_restart_stops_only_its_master_so_deliveries_in_progress_finish():
    assert evaluate()["dovecotService"] == {"KillMode": "process"}
    conf = (CONFIG / "dovecot.nix").read_text()
    assert "\n  shutdown_clients = no\n" in conf


COUNTING = ["filtermail", "filtermail-incoming", "doveauth", "chatmail-metadata", "chatmail-expire"]


def test_every_counting_daemon_writes_into_the_metrics_dir_that_chatmail_ini_names():
    ini = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "-E",
         f"(import {CONFIG}/chatmail-ini.nix {{ settings = {{ }}; paths = {BASE}; }}).keys.metrics_dir"],
        check=True, capture_output=True, text=True).stdout
    services = evaluate()["services"]
    for name in COUNTING:
        sc = services[name]["serviceConfig"]
        assert "/var/lib/" + sc["StateDirectory"] == json.loads(ini), name
        # The same mode in every unit that shares it (systemd sets it at each start), and one
        # the node exporter, another user, can enter.
        assert sc["StateDirectoryMode"] == "0755", name


def test_without_metrics_there_is_no_textfile_writer_and_no_exporter():
    data = evaluate()
    assert "chatmail-metrics" not in data["services"]
    assert data["nodeExporter"] is None


def test_with_metrics_a_timer_writes_the_textfile_where_the_node_exporter_reads_it():
    data = evaluate(metricsTextfileDir="/var/lib/chatmail-metrics", metricsInterval="2min")
    unit = data["services"]["chatmail-metrics"]
    assert unit["serviceConfig"]["ExecStart"] == [
        "/bin/chatmail", "--config", "/etc/chatmail/chatmail.ini", "metrics", "--textfile", "/var/lib/chatmail-metrics"]
    assert unit["serviceConfig"]["Type"] == "oneshot"
    assert unit["timerConfig"]["OnUnitActiveSec"] == "2min"
    assert "ReadWritePaths" not in unit["serviceConfig"], "its own StateDirectory is writable already"
    assert data["nodeExporter"]["extraFlags"] == ["--collector.textfile.directory=/var/lib/chatmail-metrics"]
    assert data["nodeExporter"]["enabledCollectors"] == ["textfile"]
    assert data["nodeExporter"]["listenAddress"] == "127.0.0.1"
    text = unitfiles.service("chatmail-metrics", unit, "/x").files["chatmail-metrics.timer"]
    assert "OnUnitActiveSec=2min\n" in text


def test_a_textfile_directory_of_the_operators_own_is_made_for_the_mail_user_and_writable():
    data = evaluate(metricsTextfileDir="/var/lib/node-exporter-text", metricsInterval="1min")
    assert data["services"]["chatmail-metrics"]["serviceConfig"]["ReadWritePaths"] == ["/var/lib/node-exporter-text"]
    assert "d /var/lib/node-exporter-text 0755 vmail vmail - -" in data["tmpfiles"]
    assert data["nodeExporter"]["extraFlags"] == ["--collector.textfile.directory=/var/lib/node-exporter-text"]


IROH = {"irohRelayExe": "/bin/iroh-relay", "irohRelayConfig": "/etc/chatmail/iroh-relay.toml"}


def test_the_iroh_relay_runs_only_on_a_relay_that_has_one_and_nginx_starts_after_it():
    assert "iroh-relay" not in evaluate()["services"]
    data = evaluate(**IROH)
    unit = data["services"]["iroh-relay"]
    assert unit["serviceConfig"]["ExecStart"] == ["/bin/iroh-relay", "--config-path", "/etc/chatmail/iroh-relay.toml"]
    assert unit["wantedBy"] == ["multi-user.target"]
    assert "iroh-relay.service" in data["ordering"]["nginx"]


def test_the_iroh_relay_has_a_user_of_its_own_and_reaches_nothing_but_loopback():
    config = evaluate(**IROH)["services"]["iroh-relay"]["serviceConfig"]
    assert config["DynamicUser"] is True and config["User"] == "iroh-relay"
    assert config["IPAddressDeny"] == "any" and config["IPAddressAllow"] == "localhost"
    # Errors only: no addresses or keys of the devices in the journal.
    assert "Environment" not in config


def test_daemons_used_now_and_then_are_started_by_their_socket_and_leave_when_idle():
    data = evaluate()
    assert sorted(data["sockets"]) == ["chatmail-lastlogin", "chatmail-metadata", "chatmail-newemail"]
    for name, sock in data["sockets"].items():
        service = data["services"][name]
        assert service["requires"] == [f"{name}.socket"] and f"{name}.socket" in service["after"], name
        config = service["serviceConfig"]
        # Leaving when idle is a clean exit: Restart=always would start it again at once.
        assert config["Restart"] == "on-failure", name
        assert config["ExecStart"][-2:] == ["--exit-when-idle", "300"], name
        # A RuntimeDirectory would be removed, socket and all, each time the daemon leaves.
        assert "RuntimeDirectory" not in config, name
        assert sock["wantedBy"] == ["sockets.target"], name
    # Only the metadata daemon starts at boot too (pushes queued before a restart).
    assert data["services"]["chatmail-metadata"]["wantedBy"] == ["multi-user.target"]
    assert data["services"]["chatmail-lastlogin"]["wantedBy"] == []
    assert data["services"]["chatmail-newemail"]["wantedBy"] == []
    # Always-running daemons keep restarting whatever the cause.
    for name in ("doveauth", "filtermail", "filtermail-incoming"):
        assert data["services"][name]["serviceConfig"]["Restart"] == "always", name


def test_the_last_login_socket_is_the_mail_users_and_dovecot_waits_for_it():
    data = evaluate()
    sock = data["sockets"]["chatmail-lastlogin"]
    assert sock["listenStreams"] == ["/run/chatmail-lastlogin/lastlogin.socket"]
    assert sock["socketConfig"]["SocketUser"] == "vmail" and sock["socketConfig"]["SocketMode"] == "0660"
    assert "chatmail-lastlogin.socket" in data["ordering"]["dovecot"]
    assert "chatmail-lastlogin.service" not in data["ordering"]["dovecot"]


def test_the_new_account_socket_listens_where_nginx_proxies_new():
    data = evaluate()
    assert data["sockets"]["chatmail-newemail"]["listenStreams"] == ["127.0.0.1:10091"]
    text = unitfiles.socket_unit("chatmail-newemail", data["sockets"]["chatmail-newemail"]).files[
        "chatmail-newemail.socket"]
    assert "ListenStream=127.0.0.1:10091\n" in text
