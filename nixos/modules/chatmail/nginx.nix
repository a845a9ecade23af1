# nginx from ./config/nginx.nix: port 443 split by ALPN (stream module, TLS not terminated),
# the relay's HTTPS site on services.nginx.defaultSSLListenPort behind it, and port 80 for
# redirects and ACME challenges.
#
# Every HTTPS virtual host of the machine moves to port 8443 (a default the operator may
# change): port 443 belongs to the multiplexer, which hands everything that is not IMAP or
# SMTP to 127.0.0.1:8443, where nginx picks the vhost by SNI as before. 8443 itself stays
# closed in the firewall.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  common = import ./common.nix { inherit config lib pkgs; };
  inherit (common) cfg nginx tls;
  acme = cfg.tls.mode == "acme";
in
{
  config = lib.mkIf (cfg.enable && cfg.nginx.enable) {
    services.nginx = {
      enable = true;
      defaultSSLListenPort = lib.mkDefault 8443;
      streamConfig = nginx.streamConfig;
      serverTokens = false;
      recommendedTlsSettings = lib.mkDefault true;
      recommendedProxySettings = lib.mkDefault true;

      virtualHosts.${cfg.domain} = {
        inherit (nginx) serverAliases locations;
        forceSSL = true;
        # The port-80 side of forceSSL answers ACME challenges from security.acme's webroot
        # (acmeRoot) and redirects everything else to https.
        useACMEHost = lib.mkIf acme cfg.domain;
        sslCertificate = lib.mkIf (!acme) tls.cert;
        sslCertificateKey = lib.mkIf (!acme) tls.key;
        # Nothing else is served: the locations above are the whole site.
        extraConfig = ''
          location / {
            return 404;
          }
        '';
      };
    };

  };
}
