# Start-up order between the relay's services, in one place:
#   certificate unit (acme-<domain> or the self-signed oneshot) -> Postfix, Dovecot, nginx
#   doveauth, chatmail-metadata, chatmail-lastlogin -> Dovecot (passdb and dicts)
#   postfix-setup (creates private/) -> Dovecot (its sockets live there)
#   Dovecot, the filters, OpenDKIM, unbound -> Postfix
#   (unbound -> the daemons: daemons.nix)
{
  config,
  lib,
  pkgs,
  ...
}:
let
  common = import ./common.nix { inherit config lib pkgs; };
  inherit (common) cfg tlsUnits;
  order = units: {
    wants = units;
    after = units;
  };
  resolver = lib.optional cfg.unbound.enable "unbound.service";
in
{
  config = lib.mkIf cfg.enable {
    systemd.services = {
      postfix = order (
        tlsUnits
        ++ [
          "dovecot.service"
          "filtermail.service"
          "filtermail-incoming.service"
        ]
        ++ lib.optional cfg.dkim.enable "opendkim.service"
        ++ resolver
      );
      dovecot = order (
        tlsUnits
        ++ [
          "postfix-setup.service"
          "doveauth.service"
          "chatmail-metadata.service"
          "chatmail-lastlogin.service"
        ]
      );
    }
    // lib.optionalAttrs (cfg.nginx.enable && tlsUnits != [ ] && cfg.tls.mode != "acme") {
      # (with ACME, nginx's own module orders it after acme-<domain>.service)
      nginx = order tlsUnits;
    };
  };
}
