#!/usr/bin/env python3
"""The chatmail lab: two federating relays, a DNS server and a client, on one machine.

Each host runs in its own network namespace, joined by a bridge in a switch namespace.
The relays and the DNS server run chrooted in an overlay of a cached Debian 13 root
filesystem (Postfix 3.10, Dovecot 2.4), configured from the pure configuration files of
the NixOS module evaluated with nix-instantiate; chatmaild runs from this checkout's
source. The client host shares this machine's filesystem and runs Delta Chat cores.

Needs root and these Debian packages: debootstrap nix-bin iproute2 openssl.

  lab.py up        bring the lab up (safe to run again)
  lab.py status    hosts, addresses and what runs on them
  lab.py exec HOST -- CMD...
                   run a command on a host (chrooted into its filesystem for relays)
  lab.py demo      two Delta Chat users on the two relays: Secure-Join, then messages
  lab.py down      stop everything and remove every namespace, mount and file
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHECKOUT = HERE.parent.parent
sys.path.insert(0, str(HERE))

import render  # noqa: E402
import rootfs  # noqa: E402

STATE = Path(os.environ.get("CHATMAIL_LAB_STATE", "/run/chatmail-lab"))
PREFIX = os.environ.get("CHATMAIL_LAB_PREFIX", "cmlab-")
SUBNET = "10.77.0"
SWITCH = PREFIX + "sw"
FAILED_LOGS = Path("/var/log/chatmail-lab")
# This checkout's python/chatmaild, mounted read-only into every relay.
CHATMAILD_DIR = "/opt/chatmaild"
CHATMAILD_SRC = CHATMAILD_DIR + "/src"


@dataclass(frozen=True)
class Host:
    name: str
    ip: str
    domain: str | None = None  # relays only
    chrooted: bool = True

    @property
    def netns(self) -> str:
        return PREFIX + self.name


DNS = Host("dns", f"{SUBNET}.2")
RELAYS = [Host("relay1", f"{SUBNET}.11", "relay1.test"), Host("relay2", f"{SUBNET}.12", "relay2.test")]
CLIENT = Host("client", f"{SUBNET}.100", chrooted=False)
HOSTS = [DNS, *RELAYS, CLIENT]
BY_NAME = {h.name: h for h in HOSTS}


def log(msg: str) -> None:
    print(f"lab: {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], check: bool = True, capture: bool = False, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, text=True, capture_output=capture, **kw)


def merged(host: Host) -> Path:
    return STATE / host.name / "root"


def in_host(host: Host, cmd: list[str]) -> list[str]:
    """The command line that runs cmd on host (in its namespace, in its filesystem)."""
    base = ["ip", "netns", "exec", host.netns]
    if host.chrooted:
        base += ["chroot", str(merged(host))]
    return base + cmd


def host_run(host: Host, cmd: list[str], check: bool = True, capture: bool = False, **kw):
    return run(in_host(host, cmd), check=check, capture=capture, **kw)


def host_spawn(host: Host, cmd: list[str], logfile: str, user: str | None = None, env: dict | None = None) -> None:
    """Start a long-running process on a host, detached, its output in logfile (in the host)."""
    if user:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", *cmd]
    envs = [f"{k}={v}" for k, v in (env or {}).items()]
    shell = f"exec env {' '.join(map(shlex.quote, envs))} {shlex.join(cmd)} >>{shlex.quote(logfile)} 2>&1 </dev/null"
    subprocess.Popen(in_host(host, ["sh", "-c", shell]), start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def host_start(host: Host, cmd: list[str]) -> None:
    """Run a command that starts a daemon and returns (postfix start, dovecot).

    Its output goes to a file, not a pipe: the daemon it leaves behind would hold a pipe
    open for ever."""
    out = STATE / f"{host.name}-start.out"
    with out.open("w") as f:
        r = subprocess.run(in_host(host, cmd), stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        raise LabError(f"{host.name}: {shlex.join(cmd)} failed:\n{out.read_text()}")


def wait_port(host: Host, ip: str, port: int, timeout: float = 30.0) -> None:
    script = (
        "import socket,sys,time\n"
        f"end=time.time()+{timeout}\n"
        "while time.time()<end:\n"
        "    try:\n"
        f"        socket.create_connection(('{ip}',{port}),1).close(); sys.exit(0)\n"
        "    except OSError: time.sleep(0.05)\n"
        "sys.exit(1)\n"
    )
    r = run(["ip", "netns", "exec", host.netns, sys.executable, "-c", script], check=False)
    if r.returncode != 0:
        raise LabError(f"{host.name}: nothing listens on {ip}:{port} after {timeout:.0f} s")


class LabError(Exception):
    pass


# ---------------------------------------------------------------- network


def netns_exists(name: str) -> bool:
    return Path("/run/netns", name).exists()


def make_network() -> None:
    run(["ip", "netns", "add", SWITCH])
    run(["ip", "-n", SWITCH, "link", "add", "br0", "type", "bridge"])
    run(["ip", "-n", SWITCH, "link", "set", "br0", "up"])
    for h in HOSTS:
        run(["ip", "netns", "add", h.netns])
        peer = f"v-{h.name}"
        run(["ip", "link", "add", peer, "netns", SWITCH, "type", "veth", "peer", "name", "eth0", "netns", h.netns])
        run(["ip", "-n", SWITCH, "link", "set", peer, "master", "br0", "up"])
        run(["ip", "-n", h.netns, "addr", "add", f"{h.ip}/24", "dev", "eth0"])
        run(["ip", "-n", h.netns, "link", "set", "eth0", "up"])
        run(["ip", "-n", h.netns, "link", "set", "lo", "up"])


# ---------------------------------------------------------------- filesystems


def mount_host(host: Host, base: Path) -> None:
    d = STATE / host.name
    for sub in ("upper", "work", "root"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    root = merged(host)
    run(["mount", "-t", "overlay", "overlay", "-o",
         f"lowerdir={base},upperdir={d / 'upper'},workdir={d / 'work'}", str(root)])
    run(["mount", "-t", "proc", "proc", str(root / "proc")])
    run(["mount", "--bind", "/dev", str(root / "dev")])
    run(["mount", "-t", "tmpfs", "tmpfs", str(root / "run")])
    (root / "etc/hosts").write_text(
        "127.0.0.1 localhost\n" + "".join(f"{h.ip} {h.domain or h.name}\n" for h in HOSTS)
    )
    (root / "etc/resolv.conf").write_text(f"nameserver {DNS.ip}\n")


def write(root: Path, path: str, text: str, mode: int = 0o644) -> Path:
    p = root / path.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    p.chmod(mode)
    return p


# ---------------------------------------------------------------- TLS


def make_ca() -> Path:
    ca = STATE / "ca"
    ca.mkdir(parents=True, exist_ok=True)
    run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(ca / "ca.key"), "-out", str(ca / "ca.pem"), "-days", "30",
         "-subj", "/CN=chatmail lab CA"], capture=True)
    for name in [*(r.domain for r in RELAYS), ACME_HOST]:
        key, csr, crt = (ca / f"{name}.{ext}" for ext in ("key", "csr", "pem"))
        run(["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}"], capture=True)
        ext = ca / f"{name}.ext"
        ext.write_text(f"subjectAltName=DNS:{name}\nextendedKeyUsage=serverAuth\n")
        run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca / "ca.pem"), "-CAkey", str(ca / "ca.key"),
             "-CAcreateserial", "-days", "30", "-extfile", str(ext), "-out", str(crt)], capture=True)
    return ca


def make_dkim_keys(ca: Path) -> dict[str, str]:
    """One DKIM key per relay (beside the CA); returns each relay's TXT record value."""
    records = {}
    for relay in RELAYS:
        key = ca / f"{relay.domain}.dkim.key"
        run(["openssl", "genrsa", "-out", str(key), "2048"], capture=True)
        der = subprocess.run(["openssl", "rsa", "-in", str(key), "-pubout", "-outform", "DER"],
                             check=True, capture_output=True).stdout
        records[relay.domain] = "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()
    return records


def txt(value: str) -> str:
    """A TXT record's data as quoted strings of at most 255 characters (RFC 1035)."""
    return " ".join(f'"{value[i:i + 255]}"' for i in range(0, len(value), 255))


# ---------------------------------------------------------------- services


def start_dns(dkim: dict[str, str]) -> None:
    root = merged(DNS)
    records = []
    for r in RELAYS:
        records += [f'local-data: "{name}. A {r.ip}"' for name in (r.domain, f"www.{r.domain}", f"mta-sts.{r.domain}")]
        records += [f'local-data: "{r.domain}. MX 10 {r.domain}."',
                    f"local-data: 'opendkim._domainkey.{r.domain}. TXT {txt(dkim[r.domain])}'"]
    records.append(f'local-data: "{ACME_HOST}. A {DNS.ip}"')
    conf = "\n".join([
        "server:",
        f"  interface: {DNS.ip}",
        "  access-control: 0.0.0.0/0 allow",
        '  chroot: ""',
        '  username: ""',
        "  do-daemonize: no",
        "  use-syslog: no",
        "  logfile: /var/log/unbound.log",
        '  local-zone: "test." static',
        *("  " + rec for rec in records),
    ]) + "\n"
    write(root, "/etc/unbound/lab.conf", conf)
    host_spawn(DNS, ["unbound", "-d", "-c", "/etc/unbound/lab.conf"], "/var/log/unbound.out")
    wait_port(DNS, DNS.ip, 53)


def evaluate(relay: Host) -> dict:
    out = run(["nix-instantiate", "--eval", "--strict", "--json", str(HERE / "relay.nix"),
               "--argstr", "domain", relay.domain, "--argstr", "settingsJSON", json.dumps(LAB_SETTINGS)],
              capture=True).stdout
    return json.loads(out)


def configure_relay(relay: Host, ca: Path) -> dict:
    cfg = evaluate(relay)
    root = merged(relay)
    paths = cfg["paths"]
    write(root, "/etc/chatmail/chatmail.ini", cfg["chatmailIni"])
    write(root, paths["authLua"], cfg["authLua"])
    write(root, paths["pushLua"], cfg["pushLua"])
    write(root, "/etc/dovecot/dovecot.conf", cfg["dovecotConf"])
    # Until ACME has issued the real certificate, a placeholder from the lab CA (NixOS's
    # acme-<domain> unit puts a self-signed one there, so the services can start).
    write(root, paths["tlsKey"], (ca / f"{relay.domain}.key").read_text(), 0o600)
    write(root, paths["tlsCert"], (ca / f"{relay.domain}.pem").read_text() + (ca / "ca.pem").read_text())
    (root / paths["acmeWebroot"].lstrip("/")).mkdir(parents=True, exist_ok=True)
    write(root, "/usr/local/share/ca-certificates/chatmail-lab.crt", (ca / "ca.pem").read_text())
    host_run(relay, ["update-ca-certificates"], capture=True)
    for name, text in cfg["postfix"]["maps"].items():
        write(root, f"{paths['postfixMaps']}/{name}", text)
    main = dict(cfg["postfix"]["main"])
    # What NixOS's postfix module adds by itself, in Debian's terms, and lab-only logging.
    version = host_run(relay, ["postconf", "-dh", "mail_version"], capture=True).stdout.strip()
    main.update({
        "compatibility_level": version,
        "smtp_tls_CAfile": "/etc/ssl/certs/ca-certificates.crt",
        "alias_maps": "",
        "alias_database": "",
        "maillog_file": "/var/log/postfix.log",
    })
    write(root, "/etc/postfix/main.cf", render.main_cf(main))
    master = cfg["postfix"]["master"]
    replaced = {f"{e.get('name', a)}/{e.get('type', 'unix')}" for a, e in master.items()}
    stock = (rootfs.rootfs_path() / "etc/postfix/master.cf").read_text()
    write(root, "/etc/postfix/master.cf", render.master_cf(render.standard_services(stock, replaced), master))
    # OpenDKIM signs what the relay sends: its key, its tables, its configuration.
    dk = cfg["opendkim"]
    write(root, paths["dkimKeyFile"], (ca / f"{relay.domain}.dkim.key").read_text(), 0o600)
    write(root, paths["dkimKeyTable"], dk["keyTable"])
    write(root, paths["dkimSigningTable"], dk["signingTable"])
    socket = paths["dkimSocket"].removeprefix("local:")
    conf = {**dk["settings"], "Socket": paths["dkimSocket"], "UserID": "opendkim:opendkim",
            "PidFile": str(Path(socket).parent / "opendkim.pid")}
    write(root, OPENDKIM_CONF, "".join(f"{k} {v}\n" for k, v in conf.items()))
    (root / Path(socket).parent.relative_to("/")).mkdir(parents=True, exist_ok=True)
    host_run(relay, ["chown", "-R", "opendkim:opendkim", str(Path(socket).parent), paths["dkimKeyFile"]])
    host_run(relay, ["usermod", "-a", "-G", "opendkim", "postfix"])
    # nginx: the port-443 split, /new, /mxdeliv, autoconfig and MTA-STS, as NixOS lays it out.
    for name, text in cfg["nginx"]["files"].items():
        write(root, f"{paths['wwwFiles']}/{name}", text)
    # The invite QR code, made from the same text as on NixOS (there: qrencode at build time).
    host_run(relay, ["qrencode", "-t", "SVG", "-o", f"{paths['wwwFiles']}/qr-invite.svg", cfg["nginx"]["qrText"]])
    write(root, NGINX_CONF, render.nginx_conf(cfg["nginx"], relay.domain, paths["httpsPort"],
                                              paths["tlsCert"], paths["tlsKey"], paths["acmeWebroot"]))
    # Dovecot's quota warning runs this (on NixOS: the package's chatmail-quota-expire).
    write(root, paths["quotaExpire"], "#!/bin/sh\n"
          f"PYTHONPATH={CHATMAILD_SRC} PYTHONDONTWRITEBYTECODE=1 exec {rootfs.VENV}/bin/python "
          "-c 'from chatmaild.expire import quota_main; quota_main()' \"$@\"\n", 0o755)
    # The relay's own resolver (config/unbound.nix). Lab only: no root servers and no trust
    # anchor here, so .test comes from the lab's DNS host and is not DNSSEC-validated.
    write(root, UNBOUND_CONF, render.unbound_conf(cfg["unbound"], {
        "server": {"chroot": '""', "username": '""', "do-daemonize": False, "use-syslog": False,
                   "logfile": "/var/log/unbound.log", "pidfile": '""', "domain-insecure": '"test"',
                   # unbound answers .test (RFC 6761) itself unless told not to.
                   "local-zone": '"test." nodefault'},
        "stub-zone": {"name": '"test"', "stub-addr": DNS.ip},
    }))
    (root / "etc/resolv.conf").write_text("nameserver 127.0.0.1\n")
    write(root, cfg["settings"]["appversions_file"], json.dumps(APPVERSIONS, indent=2))
    # The TURN REST secret: metadata derives credentials from it, coturn checks them.
    turn_secret = secrets.token_hex(32)
    write(root, paths["turnSecretFile"], turn_secret + "\n", 0o640)
    host_run(relay, ["chown", "root:vmail", paths["turnSecretFile"]])
    write(root, TURN_CONF, render.turnserver_conf(cfg["turn"], turn_secret), 0o600)
    mailboxes = root / paths["mailboxesDir"].lstrip("/")
    mailboxes.mkdir(parents=True, exist_ok=True)
    shutil.chown(mailboxes, rootfs.VMAIL_UID, rootfs.VMAIL_UID)
    return cfg


# The chatmaild daemons of a relay: name -> (command-line arguments after the config,
# runtime directory or None). Each runs as vmail from this checkout's source.
DAEMONS: dict[str, tuple[list[str], str | None]] = {
    "doveauth": (["--token-file", "/run/doveauth/token"], "/run/doveauth"),
    "filtermail-outgoing": (["outgoing"], None),
    "filtermail-incoming": (["incoming"], None),
    "metadata": (["--socket", "/run/chatmail-metadata/metadata.socket"], "/run/chatmail-metadata"),
    "lastlogin": (["--socket", "/run/chatmail-lastlogin/lastlogin.socket"], "/run/chatmail-lastlogin"),
    "newemail": ([], None),
}
ENTRY = {
    "doveauth": "chatmaild.doveauth",
    "filtermail-outgoing": "chatmaild.filtermail",
    "filtermail-incoming": "chatmaild.filtermail",
    "metadata": "chatmaild.metadata",
    "lastlogin": "chatmaild.lastlogin",
    "newemail": "chatmaild.newemail",
}
INI = "/etc/chatmail/chatmail.ini"
OPENDKIM_CONF = "/etc/chatmail/opendkim.conf"
NGINX_CONF = "/etc/chatmail/nginx.conf"
TURN_CONF = "/etc/chatmail/turnserver.conf"
UNBOUND_CONF = "/etc/chatmail/unbound.conf"
ACME_HOST = "acme.test"
ACME_DIRECTORY = f"https://{ACME_HOST}:14000/dir"


def start_daemon(relay: Host, name: str) -> None:
    """Start one chatmaild daemon on a relay (its log: /var/log/chatmail-<name>.log)."""
    args, rundir = DAEMONS[name]
    root = merged(relay)
    if rundir and not (root / rundir.lstrip("/")).exists():
        (root / rundir.lstrip("/")).mkdir(mode=0o750)
        shutil.chown(root / rundir.lstrip("/"), rootfs.VMAIL_UID, rootfs.VMAIL_UID)
    mode_first = name.startswith("filtermail")
    argv = [INI, *args] if mode_first else [*args, INI]
    code = f"from {ENTRY[name]} import main; main()"
    env = {"PYTHONPATH": CHATMAILD_SRC, "PYTHONDONTWRITEBYTECODE": "1"}
    host_spawn(relay, [f"{rootfs.VENV}/bin/python", "-c", code, *argv], f"/var/log/chatmail-{name}.log",
               "vmail", env)


def stop_daemon(relay: Host, name: str) -> None:
    """Stop one chatmaild daemon (SIGTERM, as systemd would) and wait until it is gone."""
    code = f"from {ENTRY[name]} import main; main()"
    args = DAEMONS[name][0]
    victims = []
    for pid in pids_of(relay):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if code.encode() in cmdline and all(a.encode() in cmdline for a in args):
            victims.append(pid)
            os.kill(pid, signal.SIGTERM)
    deadline = time.time() + 10
    while time.time() < deadline and any(Path(f"/proc/{p}").exists() for p in victims):
        time.sleep(0.05)


def wait_daemon(relay: Host, cfg: dict, name: str) -> None:
    s = cfg["settings"]
    ports = {
        "doveauth": int(s["doveauth_listen"].rsplit(":", 1)[1]),
        "filtermail-outgoing": s["filtermail_smtp_port"],
        "filtermail-incoming": s["filtermail_smtp_port_incoming"],
        "newemail": int(s["newemail_listen"].rsplit(":", 1)[1]),
    }
    if name in ports:
        wait_port(relay, "127.0.0.1", ports[name])
        if name == "filtermail-incoming":  # also the HTTP receiver behind /mxdeliv
            wait_port(relay, "127.0.0.1", s["filtermail_http_port_incoming"])
        return
    wait_file(relay, DAEMONS[name][0][1])


def wait_file(relay: Host, path: str, timeout: float = 30) -> None:
    """Wait until a file (a daemon's socket) exists on a relay."""
    target = merged(relay) / path.lstrip("/")
    deadline = time.time() + timeout
    while not target.exists():
        if time.time() > deadline:
            raise LabError(f"{relay.name}: {path} does not exist after {timeout:.0f} s")
        time.sleep(0.05)


def start_relay_front(relay: Host) -> None:
    """What ACME needs first: the relay's resolver and its web server (port 80)."""
    root = merged(relay)
    src = root / CHATMAILD_DIR.lstrip("/")
    src.mkdir(parents=True, exist_ok=True)
    run(["mount", "--bind", "-o", "ro", str(CHECKOUT / "python/chatmaild"), str(src)])
    host_spawn(relay, ["unbound", "-d", "-c", UNBOUND_CONF], "/var/log/unbound.out")
    wait_port(relay, "127.0.0.1", 53)
    host_start(relay, ["nginx", "-c", NGINX_CONF])
    wait_port(relay, relay.ip, 80)


def obtain_certificate(relay: Host, cfg: dict) -> None:
    """Run lego against the lab's ACME server as NixOS's security.acme runs it (HTTP-01
    through nginx's webroot), install the result where the services read it, reload nginx."""
    acme, paths = cfg["acme"], cfg["paths"]
    names = [acme["domain"], *acme["extraDomainNames"]]
    cmd = ["env", "LEGO_CA_CERTIFICATES=/usr/local/share/ca-certificates/chatmail-lab.crt",
           "lego", "--accept-tos", "--path", "/var/lib/acme/.lego", "--server", ACME_DIRECTORY,
           "--email", f"postmaster@{acme['domain']}", "--key-type", acme["keyType"],
           "--http", "--http.webroot", acme["webroot"], *[a for n in names for a in ("-d", n)], "run"]
    host_start(relay, cmd)
    root = merged(relay)
    issued = root / "var/lib/acme/.lego/certificates"
    write(root, paths["tlsCert"], (issued / f"{acme['domain']}.crt").read_text())
    write(root, paths["tlsKey"], (issued / f"{acme['domain']}.key").read_text(), 0o600)
    host_start(relay, ["nginx", "-c", NGINX_CONF, "-s", "reload"])


def trust_acme_roots(ca: Path) -> None:
    """The ACME server's root (new each run) becomes trusted by the relays, which verify
    each other's certificates, and by the lab's clients (the CA file they are given)."""
    script = ("import ssl,sys,urllib.request; ctx=ssl.create_default_context(cafile=sys.argv[1]); "
              "sys.stdout.write(urllib.request.urlopen(sys.argv[2], context=ctx).read().decode())")
    root_pem = run(["ip", "netns", "exec", CLIENT.netns, sys.executable, "-c", script, str(ca / "ca.pem"),
                    f"https://{ACME_HOST}:15000/roots/0"], capture=True).stdout
    for relay in RELAYS:
        write(merged(relay), "/usr/local/share/ca-certificates/chatmail-lab-acme.crt", root_pem)
        host_run(relay, ["update-ca-certificates"], capture=True)
    with (ca / "ca.pem").open("a") as f:
        f.write(root_pem)


def start_relay(relay: Host, cfg: dict) -> None:
    for name in DAEMONS:
        start_daemon(relay, name)
    host_spawn(relay, ["opendkim", "-f", "-l", "-x", OPENDKIM_CONF], "/var/log/opendkim.log")
    host_spawn(relay, ["turnserver", "-c", TURN_CONF, "--log-file=stdout", "--no-stdout-log=false"],
               "/var/log/turnserver.log")
    # Postfix first: it creates the private/ directory where Dovecot puts its sockets.
    host_start(relay, ["postfix", "check"])
    host_start(relay, ["postfix", "start"])
    host_start(relay, ["dovecot", "-c", "/etc/dovecot/dovecot.conf"])
    for name in DAEMONS:
        wait_daemon(relay, cfg, name)
    wait_file(relay, cfg["paths"]["dkimSocket"].removeprefix("local:"))
    for port in (25, 587, 465, 993, 143, 80, 443):
        wait_port(relay, relay.ip, port)


def start_acme_server(ca: Path) -> None:
    """pebble, the ACME test server, on the DNS host: the relays get real ACME certificates."""
    root = merged(DNS)
    write(root, "/etc/pebble/cert.pem", (ca / f"{ACME_HOST}.pem").read_text())
    write(root, "/etc/pebble/key.pem", (ca / f"{ACME_HOST}.key").read_text(), 0o600)
    write(root, "/etc/pebble/lab.json", json.dumps({"pebble": {
        "listenAddress": f"{DNS.ip}:14000", "managementListenAddress": f"{DNS.ip}:15000",
        "certificate": "/etc/pebble/cert.pem", "privateKey": "/etc/pebble/key.pem",
        "httpPort": 80, "tlsPort": 443, "ocspResponderURL": "", "externalAccountBindingRequired": False,
    }}))
    host_spawn(DNS, ["pebble", "-config", "/etc/pebble/lab.json", "-dnsserver", f"{DNS.ip}:53"],
               "/var/log/pebble.log", env={"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"})
    wait_port(DNS, DNS.ip, 14000)


# ---------------------------------------------------------------- the push proxy stand-in

PUSH_PORT = 9999
PUSH_LOG = STATE / "push.jsonl"
# What the lab's relays use instead of the defaults: pushes go to the stand-in proxy.
# A small quota, so that tests can fill a mailbox past the quota warning quickly.
LAB_SETTINGS = {"notification_url": f"http://{CLIENT.ip}:{PUSH_PORT}/notify", "max_mailbox_size": "4M",
                "appversions_file": "/etc/chatmail/appversions.json"}
# An app-version index in the schema Delta Chat clients read (a sample, not real releases).
APPVERSIONS = {"clients": [{"clientId": "deltachat", "sources": [{
    "sourceId": "lab", "versionInteger": 1, "versionString": "1.0.0",
    "downloadUrl": "https://download.delta.chat/lab/example.apk"}]}]}


def start_push_proxy(status: int = 200) -> None:
    host_spawn(CLIENT, [sys.executable, str(HERE / "pushproxy.py"), "--port", str(PUSH_PORT),
                        "--log", str(PUSH_LOG), "--status", str(status)], str(STATE / "pushproxy.out"))
    wait_port(CLIENT, CLIENT.ip, PUSH_PORT)


def stop_push_proxy() -> None:
    for pid in pids_of(CLIENT):
        try:
            if b"pushproxy.py" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.time() + 10
    while time.time() < deadline and any(
        b"pushproxy.py" in Path(f"/proc/{p}/cmdline").read_bytes() for p in pids_of(CLIENT)
        if Path(f"/proc/{p}/cmdline").exists()
    ):
        time.sleep(0.05)


# ---------------------------------------------------------------- lab


def is_up() -> bool:
    return (STATE / "up").exists() and all(netns_exists(h.netns) for h in HOSTS)


def up() -> None:
    if is_up():
        log("already up")
        status()
        return
    if STATE.exists() or any(netns_exists(h.netns) for h in [*HOSTS]) or netns_exists(SWITCH):
        log("cleaning up what an earlier run left behind")
        down()
    for tool in ("debootstrap", "nix-instantiate", "ip", "openssl"):
        if shutil.which(tool) is None:
            raise LabError(f"{tool} is missing: apt-get install debootstrap nix-bin iproute2 openssl")
    base = rootfs.ensure_rootfs(log)
    STATE.mkdir(parents=True, exist_ok=True)
    try:
        _bring_up(base)
    except BaseException:
        for h in HOSTS:
            logs = STATE / h.name / "upper/var/log"
            if logs.is_dir():
                shutil.copytree(logs, FAILED_LOGS / h.name, dirs_exist_ok=True)
        log(f"up failed: removing what it made; the hosts' logs are kept in {FAILED_LOGS}")
        down()
        raise
    (STATE / "up").write_text(str(time.time()))
    log("up")
    status()


def _bring_up(base: Path) -> None:
    log("network: namespaces and a bridge")
    make_network()
    Path("/etc/netns", CLIENT.netns).mkdir(parents=True, exist_ok=True)
    Path("/etc/netns", CLIENT.netns, "resolv.conf").write_text(f"nameserver {DNS.ip}\n")
    for h in HOSTS:
        if h.chrooted:
            mount_host(h, base)
    log("TLS: a lab CA and one certificate per relay")
    ca = make_ca()
    dkim = make_dkim_keys(ca)
    log("dns: unbound, authoritative for .test (A, MX and DKIM records)")
    start_dns(dkim)
    log("client: a stand-in for the push notification proxy")
    start_push_proxy()
    log("dns: pebble, an ACME server")
    start_acme_server(ca)
    configs = {}
    for relay in RELAYS:
        log(f"{relay.name}: rendering the NixOS module's configuration for {relay.domain}")
        configs[relay.name] = configure_relay(relay, ca)
        start_relay_front(relay)
        log(f"{relay.name}: ACME certificate for {relay.domain} (HTTP-01 through nginx)")
        obtain_certificate(relay, configs[relay.name])
    trust_acme_roots(ca)
    for relay in RELAYS:
        log(f"{relay.name}: starting chatmaild, OpenDKIM, coturn, Postfix, Dovecot")
        start_relay(relay, configs[relay.name])


def pids_of(host: Host) -> list[int]:
    if not netns_exists(host.netns):
        return []
    r = run(["ip", "netns", "pids", host.netns], capture=True, check=False)
    return [int(p) for p in r.stdout.split()]


def down() -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = [p for h in HOSTS for p in pids_of(h)]
        for p in pids:
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + 5
        while pids and time.time() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
            time.sleep(0.1)
    if STATE.exists():
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
        for m in sorted((m for m in mounts if m.startswith(str(STATE) + "/")), key=len, reverse=True):
            run(["umount", m], check=False)
            if Path(m).is_mount():
                run(["umount", "-l", m], check=False)
    for name in [h.netns for h in HOSTS] + [SWITCH]:
        if netns_exists(name):
            run(["ip", "netns", "del", name], check=False)
    shutil.rmtree(Path("/etc/netns", CLIENT.netns), ignore_errors=True)
    if STATE.exists():
        shutil.rmtree(STATE)
    log("down: no namespaces, mounts or processes left")


def status() -> None:
    if not is_up():
        print("the lab is down")
        return
    for h in HOSTS:
        what = f"{h.domain} " if h.domain else ""
        procs = []
        for p in pids_of(h):
            try:
                procs.append(Path(f"/proc/{p}/comm").read_text().strip())
            except OSError:
                pass
        names = ", ".join(sorted(set(procs))) or "-"
        print(f"{h.name:8} {h.ip:12} {what:13}running: {names}")
    print("\nrelays: " + ", ".join(f"{r.domain} ({r.ip}: SMTP 25/465/587, IMAP 143/993)" for r in RELAYS))
    print(f"dns: {DNS.ip}; state and logs in {STATE}/<host>/root/var/log")


def exec_cmd(name: str, cmd: list[str]) -> int:
    if name not in BY_NAME:
        raise LabError(f"no host {name!r}; hosts: {', '.join(BY_NAME)}")
    if not is_up():
        raise LabError("the lab is down: run 'lab.py up' first")
    if not cmd:
        cmd = ["bash"] if BY_NAME[name].chrooted else [os.environ.get("SHELL", "sh")]
    return subprocess.call(in_host(BY_NAME[name], cmd))


def demo() -> int:
    if not is_up():
        up()
    venv = Path(os.environ.get("CHATMAIL_LAB_VENV", rootfs.CACHE_DIR / "venv"))
    python = venv / "bin/python"
    if not python.exists():
        raise LabError(f"no client environment at {venv}: run tools/install-deps (it creates it)")
    return subprocess.call(in_host(CLIENT, [str(python), str(HERE / "dcdemo.py"),
                                            "--relays", *[r.domain for r in RELAYS]]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lab.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="bring the lab up")
    sub.add_parser("status", help="show hosts and services")
    ex = sub.add_parser("exec", help="run a command on a host")
    ex.add_argument("host", choices=sorted(BY_NAME))
    ex.add_argument("cmd", nargs=argparse.REMAINDER)
    sub.add_parser("demo", help="Secure-Join and messages between two Delta Chat users")
    sub.add_parser("down", help="remove everything the lab made")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("the lab needs root (network namespaces, mounts, chroot)")
    try:
        if args.command == "up":
            up()
        elif args.command == "status":
            status()
        elif args.command == "exec":
            cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
            return exec_cmd(args.host, cmd)
        elif args.command == "demo":
            return demo()
        elif args.command == "down":
            down()
    except (LabError, subprocess.CalledProcessError) as e:
        log(f"error: {e}")
        if isinstance(e, subprocess.CalledProcessError) and e.stderr:
            log(e.stderr.strip())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
