# Two chatmail relays exchange mail: a first login on each creates the accounts, a PGP/MIME
# message from relay1's user reaches relay2's user, two Delta Chat cores do a Secure-Join
# across the relays and write to each other, and cleartext is refused with 523.
#
# Nodes: dns (unbound, authoritative for relay1.test and relay2.test: A and MX records; the
# one resolver of every other node), relay1 and relay2 (both from `relay` below, with
# certificates from a test CA made at build time, which every node trusts so Postfix
# verifies its peers), client (IMAP and SMTP through mailcheck, the lab's client; Delta Chat
# through dc-federation).
#
#   nix build .#checks.x86_64-linux.federation -L
{ self }:
{ lib, pkgs, ... }:
let
  alice = "alice0001@relay1.test";
  bob = "bob000001@relay2.test";
  password = "correct-horse-battery";
  # Delta Chat's accounts, each created by its first login from the core.
  dcAlice = "dcalice01@relay1.test";
  dcBob = "dcbob0001@relay2.test";

  # A CA and one certificate per relay. THE KEYS END UP IN THE WORLD-READABLE NIX STORE:
  # FINE FOR A THROWAWAY TEST CA, NEVER FOR A REAL RELAY.
  testCerts =
    pkgs.runCommand "chatmail-test-certs"
      {
        nativeBuildInputs = [ pkgs.openssl ];
      }
      ''
        mkdir -p $out
        cat > req.cnf <<EOF
        [req]
        distinguished_name = dn
        prompt = no
        [dn]
        CN = chatmail test CA
        [ca]
        basicConstraints = critical, CA:TRUE
        keyUsage = critical, keyCertSign, cRLSign
        subjectKeyIdentifier = hash
        EOF
        openssl req -x509 -config req.cnf -extensions ca -newkey ec \
          -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
          -keyout ca.key -out $out/ca.pem
        serial=1
        for domain in relay1.test relay2.test; do
          printf '[leaf]\nbasicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\nextendedKeyUsage = serverAuth\nsubjectAltName = DNS:%s\n' \
            "$domain" > leaf.cnf
          openssl req -new -config req.cnf -subj "/CN=$domain" -newkey ec \
            -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout $out/$domain.key -out leaf.csr
          openssl x509 -req -in leaf.csr -CA $out/ca.pem -CAkey ca.key -set_serial $serial \
            -days 3650 -extfile leaf.cnf -extensions leaf -out $out/$domain.pem
          openssl verify -CAfile $out/ca.pem -verify_hostname $domain $out/$domain.pem
          serial=$((serial + 1))
        done
      '';

  # What every node shares: the test CA, and the dns node as resolver.
  common =
    { nodes, ... }:
    {
      security.pki.certificateFiles = [ "${testCerts}/ca.pem" ];
      networking.nameservers = [ nodes.dns.networking.primaryIPAddress ];
    };

  # One relay per domain; the node name is the host part of the domain.
  relay =
    domain:
    { ... }:
    {
      imports = [
        self.nixosModules.default
        common
      ];
      networking.domain = "test";
      virtualisation.memorySize = 1024;
      services.chatmail = {
        enable = true;
        inherit domain;
        tls = {
          certificateFile = "${testCerts}/${domain}.pem";
          keyFile = "${testCerts}/${domain}.key";
        };
        # THE TEST NETWORK HAS NO INTERNET: the relay's own unbound could reach no root server,
        # and as the first entry of resolv.conf it would make every lookup wait for its
        # timeout before the dns node is asked. The relays resolve through the dns node only.
        unbound.enable = false;
      };
    };

  inherit (import ./tools.nix { inherit lib pkgs; }) mailcheck;

  # Real Delta Chat cores: nixpkgs' deltachat-rpc-client starts pkgs.deltachat-rpc-server
  # from its store path.
  dc-federation =
    pkgs.writers.writePython3Bin "dc-federation"
      {
        libraries = [ pkgs.python3Packages.deltachat-rpc-client ];
      }
      ''
    """dc-federation: two Delta Chat cores, one account on each relay.

    Usage: dc-federation INVITER_ADDR JOINER_ADDR PASSWORD
    Each account is created by its first login. The inviter shows a Secure-Join
    QR code, the joiner scans it; then each sends the other a message. Prints one
    JSON object.
    """

    import json
    import sys
    import tempfile

    from deltachat_rpc_client import DeltaChat, Rpc


    def transport(addr, password):
        host = addr.split("@", 1)[1]
        return {
            "addr": addr,
            "password": password,
            "imapServer": host,
            "imapPort": 993,
            "imapSecurity": "ssl",
            "smtpServer": host,
            "smtpPort": 465,
            "smtpSecurity": "ssl",
            # The cores trust only their own bundled roots, not the test CA.
            "certificateChecks": "acceptInvalidCertificates",
        }


    def account(dc, addr, password, name):
        acc = dc.add_account()
        acc.set_config("displayname", name)
        acc.add_or_update_transport(transport(addr, password))
        acc.bring_online()
        return acc


    def exchange(sender, receiver, to_addr, text):
        chat = sender.get_chat_by_contact(sender.get_contact_by_addr(to_addr))
        chat.send_text(text)
        msg = receiver.wait_for_incoming_msg().get_snapshot()
        return {"text": msg.text, "encrypted": bool(msg.show_padlock)}


    def main():
        inviter_addr, joiner_addr, password = sys.argv[1:4]
        with tempfile.TemporaryDirectory() as accounts:
            with Rpc(accounts_dir=accounts) as rpc:
                dc = DeltaChat(rpc)
                alice = account(dc, inviter_addr, password, "alice")
                bob = account(dc, joiner_addr, password, "bob")
                bob.secure_join(alice.get_qr_code())
                alice.wait_for_securejoin_inviter_success()
                bob.wait_for_securejoin_joiner_success()
                to_alice = exchange(bob, alice, inviter_addr, "hello alice")
                to_bob = exchange(alice, bob, joiner_addr, "hello bob")
        json.dump({
            "securejoin": True,
            "to_alice": to_alice,
            "to_bob": to_bob,
        }, sys.stdout)
        print()


    if __name__ == "__main__":
        main()
      '';
in
{
  name = "chatmail-federation";
  meta.timeout = 1200;

  nodes = {
    dns =
      { nodes, ... }:
      let
        a = name: ''"${name}.test. IN A ${nodes.${name}.networking.primaryIPAddress}"'';
        mx = name: ''"${name}.test. IN MX 10 ${name}.test."'';
      in
      {
        networking.firewall.allowedUDPPorts = [ 53 ];
        networking.firewall.allowedTCPPorts = [ 53 ];
        services.unbound = {
          enable = true;
          # The test network has no internet: no root trust anchor to fetch.
          enableRootTrustAnchor = false;
          settings.server = {
            interface = [ "0.0.0.0" ];
            access-control = [
              "127.0.0.0/8 allow"
              "192.168.0.0/16 allow"
            ];
            local-zone = [ ''"test." static'' ];
            local-data = map a [
              "relay1"
              "relay2"
            ]
            ++ map mx [
              "relay1"
              "relay2"
            ];
          };
        };
      };

    relay1 = relay "relay1.test";
    relay2 = relay "relay2.test";

    client = {
      imports = [ common ];
      virtualisation.memorySize = 1024;
      environment.systemPackages = [
        mailcheck
        dc-federation
      ];
    };
  };

  testScript =
    { nodes, ... }:
    ''
      import json

      ALICE = "${alice}"
      BOB = "${bob}"
      PASSWORD = "${password}"
      DNS = "${nodes.dns.networking.primaryIPAddress}"


      def check(*args: str) -> dict:
          return json.loads(client.succeed("mailcheck " + " ".join(args)))


      start_all()
      dns.wait_for_unit("unbound.service")
      for relay in (relay1, relay2):
          for unit in ("doveauth", "filtermail", "filtermail-incoming", "dovecot", "postfix"):
              relay.wait_for_unit(f"{unit}.service")
          for port in (25, 143, 465, 587, 993):
              relay.wait_for_open_port(port)
      client.wait_for_unit("multi-user.target")

      with subtest("the relays resolve through the dns node only"):
          for relay in (relay1, relay2):
              servers = relay.succeed("sed -n 's/^nameserver[[:space:]]*//p' /etc/resolv.conf").split()
              assert servers == [DNS], servers
              relay.succeed("getent hosts relay1.test relay2.test")

      with subtest("a first login creates an account"):
          login = check("login", BOB, PASSWORD)
          assert login["ok"], login
          relay2.succeed(f"test -f /home/vmail/mail/relay2.test/{BOB}/password")

      with subtest("a later login with another password is refused"):
          login = check("login", BOB, "not-the-password")
          assert not login["ok"], login

      with subtest("a PGP/MIME message from relay1's user reaches relay2's user"):
          login = check("login", ALICE, PASSWORD)
          assert login["ok"], login
          sent = check("send", ALICE, PASSWORD, "--to", BOB, "--eml", "${./pgp-mime.eml}")
          assert sent["ok"], sent
          relay1.wait_until_fails("postqueue -j | grep .")
          client.wait_until_succeeds(f"mailcheck inbox {BOB} {PASSWORD} --at-least 1")
          inbox = check("inbox", BOB, PASSWORD)
          assert [m["from"] for m in inbox["messages"]] == [ALICE], inbox
          assert inbox["messages"][0]["content_type"] == "multipart/encrypted", inbox

      with subtest("Delta Chat: Secure-Join across the relays, then messages both ways"):
          dc = json.loads(client.succeed("dc-federation ${dcAlice} ${dcBob} " + PASSWORD))
          assert dc["securejoin"], dc
          assert dc["to_alice"] == {"text": "hello alice", "encrypted": True}, dc
          assert dc["to_bob"] == {"text": "hello bob", "encrypted": True}, dc

      with subtest("relay1 refuses cleartext with 523"):
          refused = check("send", ALICE, PASSWORD, "--to", BOB, "--cleartext")
          assert refused["code"] == 523, refused
    '';
}
