# Configuration mistakes, reported with the option to set and how.
{
  config,
  lib,
  options,
  pkgs,
  ...
}:
let
  cfg = config.services.chatmail;
  inStore = path: path != null && lib.hasPrefix builtins.storeDir path;
  ipLiteral = cfg.domain != null && (import ./config/identity.nix cfg.domain).ipv4;
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
        assertion = cfg.tls.mode != "external" || (cfg.tls.certificateFile != null && cfg.tls.keyFile != null);
        message = ''
          services.chatmail.tls.mode is "external", but services.chatmail.tls.certificateFile
          and services.chatmail.tls.keyFile are not both set: point them at the certificate
          chain and key of services.chatmail.domain, or set services.chatmail.tls.mode = "acme".
        '';
      }
      {
        assertion = !ipLiteral || cfg.tls.mode == "self-signed";
        message = ''
          services.chatmail.domain is an IPv4 address (an IP-literal relay), for which no ACME
          CA issues a certificate: set services.chatmail.tls.mode = "self-signed" (the default
          for such a domain); clients are told to accept it.
        '';
      }
      {
        assertion = cfg.tls.mode != "acme" || cfg.nginx.enable;
        message = ''
          services.chatmail.tls.mode = "acme" answers the HTTP-01 challenge with nginx, but
          services.chatmail.nginx.enable is false: enable nginx, or use tls.mode = "external".
        '';
      }
      {
        assertion = cfg.tls.mode != "acme" || cfg.tls.acme.acceptTerms || config.security.acme.acceptTerms;
        message = ''
          services.chatmail.tls.mode = "acme" needs the CA's terms of service accepted: set
            services.chatmail.tls.acme.acceptTerms = true;
          (or use tls.mode = "external" with your own certificate).
        '';
      }
      {
        assertion =
          cfg.tls.mode != "acme" || cfg.tls.acme.email != null || config.security.acme.defaults.email != null;
        message = ''
          services.chatmail.tls.mode = "acme" needs a contact address for the ACME account: set
            services.chatmail.tls.acme.email = "postmaster@example.org";
        '';
      }
      {
        assertion = cfg.iroh.relayUrl == null || lib.hasPrefix "https://" cfg.iroh.relayUrl;
        message = "services.chatmail.iroh.relayUrl must be an https:// URL (got ${toString cfg.iroh.relayUrl}).";
      }
      {
        assertion = !(cfg.iroh.enable && cfg.iroh.relayUrl != null);
        message = ''
          services.chatmail.iroh.enable runs an iroh relay on this host and advertises it, and
          services.chatmail.iroh.relayUrl advertises another one: clients can be told only
          one. Set services.chatmail.iroh.relayUrl = null, or iroh.enable = false.
        '';
      }
      {
        assertion = !cfg.iroh.enable || cfg.nginx.enable;
        message = ''
          services.chatmail.iroh.enable serves the iroh relay through the relay's nginx, but
          services.chatmail.nginx.enable is false: enable nginx, or set iroh.enable = false.
        '';
      }
      {
        # See opendkim.nix: nixpkgs 26.05 no longer flags opendkim; older or patched ones may.
        assertion = !cfg.dkim.enable || (pkgs.opendkim.meta.knownVulnerabilities or [ ]) == [ ];
        message = ''
          This nixpkgs marks ${pkgs.opendkim.name or "opendkim"} as insecure. The chatmail relay
          only signs with it (the flagged CVEs concern verification and the test suite), so
          permit it where you instantiate nixpkgs:
            nixpkgs.config.permittedInsecurePackages = [ "${pkgs.opendkim.name or "opendkim"}" ];
          or set services.chatmail.dkim.enable = false (other relays then reject your mail).
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
    warnings =
      lib.optional (inStore cfg.tls.keyFile) ''
        services.chatmail.tls.keyFile is in the Nix store, which every local user can read:
        keep the private key outside the store.
      ''
      ++ lib.optional (cfg.www.source != null && !cfg.nginx.enable) ''
        services.chatmail.www.source is set, but services.chatmail.nginx.enable is false:
        nothing serves the relay's web site. Enable nginx, or serve the pages yourself.
      '';
  };
}
