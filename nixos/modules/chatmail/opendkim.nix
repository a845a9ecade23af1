# DKIM signing of outgoing mail with services.opendkim, from ./config/opendkim.nix.
#
# nixpkgs' module would generate <keyPath>/<selector>.private in its preStart whatever key
# the KeyTable names, so a relay with dkim.keyFile got a second, unused key (and a log line
# asking to publish it). Its preStart is switched off here; the chatmail-dkim-key one-shot
# of ./config/units.nix generates <keyPath>/<selector>.private only when no dkim.keyFile is
# given. The KeyTable points at the key in use, and a KeyTable makes OpenDKIM ignore the
# `-k` key the module passes on the command line.
#
# Insecure flag: nixpkgs set meta.knownVulnerabilities on opendkim in February 2026 (PR
# #489486: CVE-2020-35766, CVE-2022-48521, "unmaintained"); PR #517633 (May 2026, before the
# 26.05 branch-off) patched both CVEs and dropped the flag, so 26.05 evaluates as is. Should
# a nixpkgs still carry the flag, an assertion (assertions.nix) says how to permit the package where
# nixpkgs is instantiated (a module cannot: nixpkgs.config is read-only in tests and with an
# external pkgs). Permitting it is safe here: CVE-2020-35766 concerns the test suite only,
# and CVE-2022-48521 is a verification bypass, while this relay only signs (Mode s).
{
  config,
  lib,
  pkgs,
  ...
}:
let
  common = import ./common.nix { inherit config lib pkgs; };
  inherit (common) cfg opendkim units;
in
{
  config = lib.mkIf (cfg.enable && cfg.dkim.enable) {
    # The insecure-flag assertion is in assertions.nix.
    services.opendkim = {
      enable = true;
      inherit (cfg.dkim) selector;
      domains = "csl:${cfg.domain}";
      # nixpkgs' default, named here because the KeyTable points into it.
      keyPath = lib.mkDefault "/var/lib/opendkim/keys";
      settings = opendkim.settings;
    };

    environment.etc = {
      "chatmail/opendkim/KeyTable".text = opendkim.keyTable;
      "chatmail/opendkim/SigningTable".text = opendkim.signingTable;
    };

    # Postfix talks to the milter socket, which is group-writable (UMask 0007).
    users.users.postfix.extraGroups = [ config.services.opendkim.group ];

    # Postfix's milter settings come from ./config/postfix.nix (paths.dkimSocket is set only
    # when dkim.enable is true), so the lab runs them too.

    systemd.services.opendkim = {
      restartTriggers = [
        opendkim.keyTable
        opendkim.signingTable
      ];
      # Key generation is chatmail-dkim-key's job (see above).
      preStart = lib.mkForce "";
      # Restart=always is needed; the daily restart (OpenDKIM leaks memory over time) and the
      # pause before a restart are starter values. The lab runs the same data.
      serviceConfig = {
        inherit (units.opendkimService) Restart;
      }
      // lib.mapAttrs (_: lib.mkDefault) (builtins.removeAttrs units.opendkimService [ "Restart" ]);
    };
  };
}
