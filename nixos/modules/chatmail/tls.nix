# The relay's certificate, by services.chatmail.tls.mode:
#   acme         security.acme, HTTP-01 answered from nginx's webroot on port 80; Postfix,
#                Dovecot and nginx reload when the certificate is renewed
#   external     paths given by the operator; nothing to do here
#   self-signed  made once by a oneshot under /var/lib/chatmail-tls
{
  config,
  lib,
  pkgs,
  ...
}:
let
  common = import ./common.nix { inherit config lib pkgs; };
  inherit (common) cfg tls;
  domain = cfg.domain;
  acme = import ./config/acme.nix {
    inherit (cfg) settings;
    paths.acmeWebroot = "/var/lib/acme/acme-challenge";
  };
  names = acme.extraDomainNames;
  arg = lib.escapeShellArg;
  cert = arg tls.cert;
  key = arg tls.key;
  # An IP-literal relay's certificate names its address (./config/identity.nix).
  subjectAltName =
    "subjectAltName="
    + (
      if (import ./config/identity.nix domain).ipv4 then
        "IP:${domain}"
      else
        lib.concatMapStringsSep "," (n: "DNS:${n}") ([ domain ] ++ names)
    );
  # Postfix and Dovecot read the key as root; nginx runs as its own user.
  keyGroup = if cfg.nginx.enable then toString config.services.nginx.group else "root";
in
{
  config = lib.mkMerge [
    (lib.mkIf (cfg.enable && cfg.tls.mode == "acme") {
      security.acme.acceptTerms = lib.mkIf cfg.tls.acme.acceptTerms true;
      security.acme.certs.${domain} = {
        # nginx serves this directory under /.well-known/acme-challenge/ (see nginx.nix).
        inherit (acme) webroot extraDomainNames reloadServices;
        email = lib.mkIf (cfg.tls.acme.email != null) cfg.tls.acme.email;
        # Starter values.
        keyType = lib.mkDefault acme.keyType;
        group = lib.mkDefault keyGroup;
      };
    })

    (lib.mkIf (cfg.enable && cfg.tls.mode == "self-signed") {
      systemd.services.chatmail-tls-selfsigned = {
        description = "self-signed certificate for the chatmail relay";
        wantedBy = [ "multi-user.target" ];
        path = [ pkgs.openssl ];
        serviceConfig = {
          Type = "oneshot";
          RemainAfterExit = true;
          StateDirectory = "chatmail-tls";
          StateDirectoryMode = "0750";
          UMask = "0027";
          PrivateNetwork = true;
          PrivateTmp = true;
          ProtectHome = true;
          ProtectSystem = "strict";
          NoNewPrivileges = true;
        };
        # Only when missing: a new key on every boot would break clients that pinned it.
        script = ''
          if [ ! -e ${cert} ]; then
            openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
              -days 36500 -subj ${arg "/CN=${domain}"} \
              -addext ${arg subjectAltName} \
              -addext "basicConstraints=critical,CA:FALSE" \
              -addext "extendedKeyUsage=serverAuth,clientAuth" \
              -keyout ${key}.tmp -out ${cert}.tmp
            chgrp ${arg keyGroup} ${key}.tmp ${cert}.tmp /var/lib/chatmail-tls
            mv ${key}.tmp ${key}
            mv ${cert}.tmp ${cert}
          fi
        '';
      };
    })

    # Ordering after the certificate's unit: ordering.nix.
  ];
}
