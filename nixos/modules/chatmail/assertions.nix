# Configuration mistakes, reported with the option to set and how.
{
  config,
  lib,
  options,
  ...
}:
let
  cfg = config.services.chatmail;
  inStore = path: path != null && lib.hasPrefix builtins.storeDir path;
in
{
  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = cfg.domain != null && cfg.domain != "";
        message = ''
          services.chatmail.domain is not set: set it to the relay's mail domain, e.g.
            services.chatmail.domain = "chat.example.org";
        '';
      }
      {
        assertion = cfg.tls.certificateFile != null && cfg.tls.keyFile != null;
        message = ''
          services.chatmail.tls.certificateFile and services.chatmail.tls.keyFile must both be
          set: Postfix and Dovecot refuse to run a relay without TLS. Point them at the
          certificate chain and key of services.chatmail.domain, e.g. from security.acme.
        '';
      }
      {
        assertion = options.services.chatmail.package.isDefined;
        message = ''
          services.chatmail.package is not set: import the flake's nixosModules.default (which
          sets it), or set services.chatmail.package to a chatmaild build.
        '';
      }
      {
        assertion = lib.versionAtLeast config.services.dovecot2.package.version "2.4";
        message = ''
          services.dovecot2.package is Dovecot ${config.services.dovecot2.package.version}, but the
          chatmail configuration is written for Dovecot 2.4 with Lua. Remove your setting of
          services.dovecot2.package, or set it to a Dovecot 2.4 built with Lua
          (the `dovecot` package overridden with `withLua = true`).
        '';
      }
    ];
    warnings = lib.optional (inStore cfg.tls.keyFile) ''
      services.chatmail.tls.keyFile is in the Nix store, which every local user can read:
      keep the private key outside the store.
    '';
  };
}
