# nginx from ./config/nginx.nix: port 443 split by ALPN (stream module, TLS not terminated),
# the relay's HTTPS site on services.nginx.defaultSSLListenPort behind it, and port 80 for
# redirects and ACME challenges.
#
# Every HTTPS virtual host of the machine moves to 127.0.0.1:8443 (defaults the operator may
# change: defaultSSLListenPort, defaultListen): port 443 belongs to the multiplexer, which
# hands everything that is not IMAP or SMTP to 127.0.0.1:8443, where nginx picks the vhost by
# SNI as before. Only loopback listens there, so the port needs no firewall rule. nixpkgs
# ranks defaultListen above a vhost's listenAddresses: a vhost that must listen elsewhere
# sets its own `listen`.
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
      # The relay needs these: the multiplexer on 443 and where it forwards to.
      streamConfig = nginx.streamConfig;
      # The client's address behind the multiplexer, the /new rate zone, and no access log
      # (the privacy page promises none).
      appendHttpConfig = nginx.httpConfig;
    }
    # Starter values: HTTPS vhosts behind the multiplexer, and nixpkgs' recommended TLS and
    # proxy settings (HTTP/1.1 to the upstreams, so /mxdeliv may stream a chunked body).
    // lib.mapAttrs (_: lib.mkDefault) {
      defaultSSLListenPort = 8443;
      inherit (nginx) defaultListen;
      serverTokens = false;
      recommendedTlsSettings = true;
      recommendedProxySettings = true;
    }
    // {
      virtualHosts.${cfg.domain} = {
        inherit (nginx) serverAliases locations extraConfig;
        forceSSL = true;
        # The port-80 side of forceSSL answers ACME challenges from security.acme's webroot
        # (acmeRoot) and redirects everything else to https. With useACMEHost, nixpkgs'
        # nginx module adds nginx.service to the certificate's reloadServices.
        useACMEHost = lib.mkIf acme cfg.domain;
        sslCertificate = lib.mkIf (!acme) tls.cert;
        sslCertificateKey = lib.mkIf (!acme) tls.key;
      };
    };
  };
}
