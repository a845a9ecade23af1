"""One lab relay, rendered from the NixOS module's data into its Debian 13 tree before it boots.

Everything comes from evaluating tests/lab/relay.nix (the module's pure configuration
files with the lab's Debian paths): chatmail.ini, Postfix's main.cf and master.cf, Dovecot,
OpenDKIM, nginx, unbound, coturn, and every chatmaild unit, timer, tmpfiles rule and one-shot
of config/units.nix, written as unit files. Debian's own units run Postfix, Dovecot, nginx,
OpenDKIM, unbound and coturn with that configuration; drop-ins add what NixOS's units do
where it matters (start-up order, OpenDKIM's restarts, coturn's secret). lego runs as the
acme-<domain> unit, as on NixOS. Nothing is started by hand: the relay boots.
"""

from __future__ import annotations

import json
import shlex
import shutil
import tomllib
from pathlib import Path

import render
import rootfs
import units
from fixtures import APPVERSIONS, LAB_SETTINGS, WWW_SOURCE
from hosts import DNS, Host, chroot_run, merged, run, write
from pki import ACME_DIRECTORY

HERE = Path(__file__).resolve().parent
CHECKOUT = HERE.parent.parent
CHATMAILD = CHECKOUT / "python/chatmaild"

# Debian units the relays do not want: package timers that reach for the network, and
# helpers that rewrite resolv.conf.
MASKED = ["apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer", "fstrim.timer",
          "unbound-resolvconf.service", "postfix-resolvconf.service", "postfix-resolvconf.path"]


def evaluate(relay: Host) -> dict:
    """The relay's configuration from the module's data; the IP-literal relay in NixOS's
    defaults for such a domain (a self-signed certificate, no DKIM)."""
    assert relay.domain
    extra = ["--argstr", "tlsMode", "self-signed", "--arg", "dkim", "false"] if relay.ip_literal else []
    out = run(["nix-instantiate", "--eval", "--strict", "--json", str(HERE / "relay.nix"),
               "--argstr", "domain", relay.domain, "--argstr", "settingsJSON", json.dumps(LAB_SETTINGS), *extra],
              capture=True).stdout
    return json.loads(out)


def chatmaild_commands(paths: dict) -> dict[str, str]:
    """A small executable per console script of chatmaild's pyproject, running this
    checkout's source (mounted read-only) with the tree's Python and dependencies.

    Why wrappers and not an install: the relays have no network and no build backend, and
    the source must stay the checkout's, unchanged, for every test run; a wrapper is what a
    console script is (import, call main), pointed at the mounted source."""
    scripts = tomllib.loads((CHATMAILD / "pyproject.toml").read_text())["tool"]["poetry"]["scripts"]
    out = {}
    for name, target in scripts.items():
        module, func = target.split(":")
        out[f"{paths['binDir']}/{name}"] = (
            "#!/bin/sh\n"
            f"PYTHONPATH={paths['chatmaildSource']}/src PYTHONDONTWRITEBYTECODE=1 exec {rootfs.VENV}/bin/python -c "
            f"'import sys; from {module} import {func}; sys.argv[0] = \"{name}\"; sys.exit({func}())' \"$@\"\n"
        )
    return out


def binds(cfg: dict) -> dict[str, str]:
    """What the relay's container mounts read-only from this machine."""
    return {str(CHATMAILD): cfg["paths"]["chatmaildSource"]}


def write_units(root: Path, cfg: dict) -> None:
    paths = cfg["paths"]
    unit_dir = root / paths["unitDir"].lstrip("/")
    rendered = [units.service(name, unit, paths["scriptDir"]) for name, unit in cfg["units"]["services"].items()]
    rendered += [units.socket_unit(name, unit) for name, unit in cfg["units"]["sockets"].items()]
    for r in rendered:
        for fname, text in r.files.items():
            write(root, f"{paths['unitDir']}/{fname}", text)
        for path, text in r.scripts.items():
            write(root, path, text, 0o755)
        for target, fname, kind in r.links:
            link = unit_dir / f"{target}.{kind}" / fname
            link.parent.mkdir(parents=True, exist_ok=True)
            link.unlink(missing_ok=True)
            link.symlink_to(f"../{fname}")
    write(root, paths["tmpfiles"], "".join(line + "\n" for line in cfg["units"]["tmpfiles"]))
    for name in MASKED:
        link = unit_dir / name
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")


def mask(root: Path, cfg: dict, unit: str) -> None:
    link = root / cfg["paths"]["unitDir"].lstrip("/") / unit
    link.unlink(missing_ok=True)
    link.symlink_to("/dev/null")


def drop_in(root: Path, cfg: dict, unit: str, unit_section: dict, service: dict) -> None:
    write(root, f"{cfg['paths']['unitDir']}/{unit}.d/chatmail.conf", units.drop_in(unit_section, service))


def write_acme_unit(root: Path, cfg: dict) -> None:
    """acme-<domain>: lego against the lab's ACME server, HTTP-01 through nginx's webroot,
    as NixOS's security.acme runs it; the certificate goes where the services read it,
    and nginx reloads."""
    acme, paths = cfg["acme"], cfg["paths"]
    names = [acme["domain"], *acme["extraDomainNames"]]
    lego = ["lego", "--accept-tos", "--path", paths["legoDir"], "--server", ACME_DIRECTORY,
            "--email", f"postmaster@{acme['domain']}", "--key-type", acme["keyType"],
            "--http", "--http.webroot", acme["webroot"], *[a for n in names for a in ("-d", n)], "run"]
    issued = f"{paths['legoDir']}/certificates/{acme['domain']}"
    unit = {
        "description": f"ACME certificate for {acme['domain']}",
        "after": ["network.target", "nginx.service", cfg["paths"]["resolverUnit"]],
        "wants": ["nginx.service"],
        "wantedBy": ["multi-user.target"],
        "serviceConfig": {
            "Type": "oneshot",
            "Environment": f"LEGO_CA_CERTIFICATES={paths['caTrustDir']}/chatmail-lab.crt",
            "ExecStart": lego,
        },
        "script": None,
    }
    r = units.service(paths["tlsUnit"].removesuffix(".service"), unit, paths["scriptDir"])
    text = r.files[paths["tlsUnit"]]
    text += "".join(f"ExecStartPost={units.exec_args(argv)}\n" for argv in [
        ["install", "-m", "0644", f"{issued}.crt", paths["tlsCert"]],
        ["install", "-m", "0600", f"{issued}.key", paths["tlsKey"]],
        ["systemctl", "reload", "nginx.service"],
    ])
    write(root, f"{paths['unitDir']}/{paths['tlsUnit']}", text)
    link = root / paths["unitDir"].lstrip("/") / "multi-user.target.wants" / paths["tlsUnit"]
    link.parent.mkdir(parents=True, exist_ok=True)
    link.unlink(missing_ok=True)
    link.symlink_to(f"../{paths['tlsUnit']}")


def write_selfsigned_unit(root: Path, cfg: dict, key_group: str) -> None:
    """chatmail-tls-selfsigned: the certificate of NixOS's self-signed mode (nixos/modules/
    chatmail/tls.nix), made once on first boot, before Postfix, Dovecot and nginx start."""
    paths, domain = cfg["paths"], cfg["settings"]["mail_domain"]
    cert, key = paths["tlsCert"], paths["tlsKey"]
    san = f"IP:{domain}" if cfg["identity"]["ipv4"] else ",".join(f"DNS:{n}" for n in [domain, *cfg["acme"]["extraDomainNames"]])
    q = shlex.quote
    script = (f"if [ ! -e {q(cert)} ]; then\n"
              f"  install -d -m 0750 {q(str(Path(cert).parent))}\n"
              f"  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 36500 -subj {q('/CN=' + domain)}"
              f" -addext {q('subjectAltName=' + san)} -addext 'basicConstraints=critical,CA:FALSE'"
              f" -addext 'extendedKeyUsage=serverAuth,clientAuth' -keyout {q(key + '.tmp')} -out {q(cert + '.tmp')}\n"
              f"  chgrp {q(key_group)} {q(key + '.tmp')} {q(cert + '.tmp')} {q(str(Path(cert).parent))}\n"
              f"  mv {q(key + '.tmp')} {q(key)}\n  mv {q(cert + '.tmp')} {q(cert)}\nfi\n")
    r = units.service(paths["tlsUnit"].removesuffix(".service"), {
        "description": "self-signed certificate for the chatmail relay",
        "wantedBy": ["multi-user.target"],
        "serviceConfig": {"Type": "oneshot", "RemainAfterExit": True, "UMask": "0027", "PrivateNetwork": True,
                          "PrivateTmp": True, "ProtectHome": True, "NoNewPrivileges": True},
        "script": script,
    }, paths["scriptDir"])
    for fname, text in r.files.items():
        write(root, f"{paths['unitDir']}/{fname}", text)
    for path, text in r.scripts.items():
        write(root, path, text, 0o755)
    link = root / paths["unitDir"].lstrip("/") / "multi-user.target.wants" / paths["tlsUnit"]
    link.parent.mkdir(parents=True, exist_ok=True)
    link.unlink(missing_ok=True)
    link.symlink_to(f"../{paths['tlsUnit']}")


def configure(relay: Host, ca: Path, acme_root: str) -> dict:
    """Write the relay's whole configuration into its tree (not yet booted)."""
    assert relay.domain
    cfg = evaluate(relay)
    root = merged(relay)
    paths = cfg["paths"]
    order = cfg["units"]["ordering"]
    (root / "etc/hostname").write_text(relay.hostname + "\n")
    write(root, paths["chatmailIni"], cfg["chatmailIni"])
    write(root, paths["authLua"], cfg["authLua"])
    write(root, paths["pushLua"], cfg["pushLua"])
    write(root, paths["dedupeSieve"], cfg["dedupeSieve"])
    write(root, paths["dovecotConf"], cfg["dovecotConf"])
    for path, text in chatmaild_commands(paths).items():
        write(root, path, text, 0o755)

    (root / paths["acmeWebroot"].lstrip("/")).mkdir(parents=True, exist_ok=True)
    write(root, f"{paths['caTrustDir']}/chatmail-lab.crt", (ca / "ca.pem").read_text())
    write(root, f"{paths['caTrustDir']}/chatmail-lab-acme.crt", acme_root)
    chroot_run(relay, ["update-ca-certificates"], capture=True)
    if paths["tlsMode"] == "self-signed":
        write_selfsigned_unit(root, cfg, "www-data")
    else:
        # Until ACME has issued the real certificate, a placeholder from the lab CA (NixOS's
        # acme-<domain> puts a self-signed one there, so the services can start).
        write(root, paths["tlsKey"], (ca / f"{relay.domain}.key").read_text(), 0o600)
        write(root, paths["tlsCert"], (ca / f"{relay.domain}.pem").read_text() + (ca / "ca.pem").read_text())
        write_acme_unit(root, cfg)

    # Postfix: main.cf and master.cf as NixOS writes them, and the start-up order.
    for name, text in cfg["postfix"]["maps"].items():
        write(root, f"{paths['postfixMaps']}/{name}", text)
    main = dict(cfg["postfix"]["main"])
    # What NixOS's postfix module adds by itself, in Debian's terms.
    version = chroot_run(relay, ["postconf", "-dh", "mail_version"], capture=True).stdout.strip()
    main.update({
        "compatibility_level": version,
        "smtp_tls_CAfile": paths["caBundle"],
        "alias_maps": "",
        "alias_database": "",
    })
    write(root, f"{paths['postfixConfDir']}/main.cf", render.main_cf(main))
    write(root, f"{paths['postfixConfDir']}/master.cf", render.master_cf(cfg["postfix"]["master"]))
    drop_in(root, cfg, paths["postfixUnit"], {"Wants": order["postfix"], "After": order["postfix"]}, {})
    # NixOS's postfix-setup one-shot makes the queue's directories, private/ included, where
    # Dovecot puts its sockets; Debian's `postfix check` does the same.
    setup = units.service("postfix-setup", {
        "description": "Setup for Postfix mail server",
        "serviceConfig": {"Type": "oneshot", "RemainAfterExit": True, "ExecStart": ["postfix", "check"]},
    }, paths["scriptDir"])
    write(root, f"{paths['unitDir']}/postfix-setup.service", setup.files["postfix-setup.service"])
    drop_in(root, cfg, "dovecot.service", {"Wants": order["dovecot"], "After": order["dovecot"]},
            cfg["units"]["dovecotService"])
    if order["nginx"]:
        drop_in(root, cfg, "nginx.service", {"Wants": order["nginx"], "After": order["nginx"]}, {})

    dk = cfg["opendkim"]
    if dk is None:
        # No DKIM (the IP-literal relay): NixOS runs no OpenDKIM, nor does the lab.
        mask(root, cfg, "opendkim.service")
    else:
        # OpenDKIM signs what the relay sends: its key, its tables, its configuration, and the
        # restarts NixOS configures.
        write(root, paths["dkimKeyFile"], (ca / f"{relay.domain}.dkim.key").read_text(), 0o600)
        write(root, paths["dkimKeyTable"], dk["keyTable"])
        write(root, paths["dkimSigningTable"], dk["signingTable"])
        conf = {**dk["settings"], "Socket": paths["dkimSocket"],
                "UserID": f"{paths['dkimUser']}:{paths['dkimUser']}", "PidFile": paths["opendkimPidFile"]}
        write(root, paths["opendkimConf"], "".join(f"{k} {v}\n" for k, v in conf.items()))
        chroot_run(relay, ["chown", f"{paths['dkimUser']}:", paths["dkimKeyFile"]])
        chroot_run(relay, ["usermod", "-a", "-G", paths["dkimUser"], "postfix"])
        drop_in(root, cfg, "opendkim.service", {}, cfg["units"]["opendkimService"])

    # nginx: the port-443 split, /new, /mxdeliv, autoconfig and MTA-STS, as NixOS lays it out.
    for name, text in cfg["nginx"]["files"].items():
        write(root, f"{paths['wwwFiles']}/{name}", text)
    # The web site in site/: the relay's pages, then the operator's files over them (NixOS:
    # services.chatmail.www.source, copied the same way in common.nix).
    site = f"{paths['wwwFiles']}/site"
    for name, text in cfg["nginx"]["pages"].items():
        write(root, f"{site}/{name}", text)
    source = WWW_SOURCE.get(relay.name)
    if source is not None:
        shutil.copytree(source, root / site.lstrip("/"), dirs_exist_ok=True)
    # The invite QR code, made from the same text and options as on NixOS (there: at build time).
    chroot_run(relay, ["qrencode", "-t", "SVG", "--svg-path", "-o", f"{paths['wwwFiles']}/qr-invite.svg",
                       cfg["nginx"]["qrText"]])
    # The iroh relay: its configuration, and (lab only) its nginx locations on port 80 too,
    # for the plain-HTTP URL the lab advertises (tests/lab/relay.nix says why).
    iroh = cfg["irohRelay"]
    write(root, paths["irohRelayConfig"], render.toml_flat(iroh["config"]))
    plain = cfg["nginx"]["irohLocations"] if iroh["url"].startswith("http://") else {}
    write(root, paths["nginxConf"], render.nginx_conf(cfg["nginx"], relay.domain, paths["httpsPort"],
                                                      paths["tlsCert"], paths["tlsKey"], paths["acmeWebroot"],
                                                      plain_http=plain))

    # The relay's own resolver (config/unbound.nix). Lab only: no root servers and no trust
    # anchor here, so .test comes from the lab's DNS host and is not DNSSEC-validated.
    write(root, paths["unboundConf"], render.unbound_conf(cfg["unbound"], {
        "server": {"chroot": '""', "domain-insecure": '"test"',
                   # unbound answers .test (RFC 6761) itself unless told not to.
                   "local-zone": '"test." nodefault'},
        "stub-zone": {"name": '"test"', "stub-addr": DNS.ip},
    }))
    (root / "etc/resolv.conf").write_text("nameserver 127.0.0.1\n")
    write(root, cfg["settings"]["appversions_file"], json.dumps(APPVERSIONS, indent=2))

    # coturn: the secret comes from the chatmail-turn-secret one-shot; coturn reads no secret
    # file, so its unit writes the configuration with the secret in it when it starts.
    placeholder = "@TURN_SECRET@"
    write(root, paths["turnConfTemplate"], render.turnserver_conf(cfg["turn"], placeholder))
    fill = (f"umask 077; secret=$(cat {paths['turnSecretFile']}); "
            f"sed \"s/{placeholder}/$secret/\" {paths['turnConfTemplate']} > {paths['turnConf']}")
    drop_in(root, cfg, "coturn.service", {}, {
        "RuntimeDirectory": Path(paths["turnConf"]).parent.name,
        "ExecStartPre": units.exec_args(["/bin/sh", "-c", fill]),
        "ExecStart": ["", units.exec_args(["/usr/bin/turnserver", "-c", paths["turnConf"], "--pidfile="])],
    })

    # The node exporter reads the metrics textfile with the flags NixOS's
    # services.prometheus.exporters.node gets from the module (config/units.nix
    # nodeExporter); NixOS runs it only with metrics on, and so does the lab.
    node = cfg["units"]["nodeExporter"]
    if node is None:
        mask(root, cfg, "prometheus-node-exporter.service")
    else:
        argv = ["/usr/bin/prometheus-node-exporter", *[f"--collector.{c}" for c in node["enabledCollectors"]],
                "--web.listen-address", f"{node['listenAddress']}:{node['port']}", *node["extraFlags"]]
        drop_in(root, cfg, "prometheus-node-exporter.service", {}, {"ExecStart": ["", units.exec_args(argv)]})

    # journald as the module configures it: in memory, for a short time.
    journald = {k: v for k, v in cfg["journald"].items() if v is not None}
    write(root, paths["journaldDropIn"], "\n".join(units.section("Journal", journald)) + "\n")
    write_units(root, cfg)
    return cfg
