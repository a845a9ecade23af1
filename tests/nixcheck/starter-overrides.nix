# nixcheck settings: the all-parts relay, plus what an operator may change with a plain
# definition (no lib.mkForce) because the module sets it as a starter value (lib.mkDefault).
# Evaluates only while those stay starter values: a required value set plainly by the
# module would conflict with these definitions.
{
  imports = [ ./all-parts.nix ];
  services.postfix.settings.main = {
    maximal_queue_lifetime = "5d";
    smtp_tls_loglevel = 2;
    smtpd_peername_lookup = true;
  };
  services.nginx = {
    defaultSSLListenPort = 9443;
    recommendedProxySettings = false;
    defaultListen = [ { addr = "127.0.0.2"; } ];
  };
  security.acme.certs."chat.example.org" = {
    keyType = "ec384";
    group = "acme";
  };
  services.unbound.settings.server = {
    hide-version = false;
    qname-minimisation = false;
  };
  services.coturn.min-port = 50000;
  systemd.services.opendkim.serviceConfig.RuntimeMaxSec = "12h";
}
