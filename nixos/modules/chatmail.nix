# services.chatmail: a chatmail relay, the minimal privacy-first mail server that Delta Chat
# users get an account on by simply logging in.
#
# This file declares the options; one file per concern under ./chatmail sets the nixpkgs
# options from the pure configuration data in ./chatmail/config (which the lab evaluates too).
{
  config,
  lib,
  ...
}:
let
  inherit (lib)
    literalExpression
    mkEnableOption
    mkOption
    types
    ;

  cfg = config.services.chatmail;
  defaults = import ./chatmail/config/defaults.nix;

  # A chatmail.ini value: the renderer writes booleans as true/false, lists space-separated,
  # and leaves out null.
  iniValue = types.nullOr (
    types.oneOf [
      types.bool
      types.int
      types.str
      (types.listOf types.str)
    ]
  );

  # A declared chatmail.ini key whose default comes from config/defaults.nix.
  mkIniOption =
    key: type: description:
    mkOption {
      inherit type description;
      default = defaults.${key};
    };
in
{
  options.services.chatmail = {
    enable = mkEnableOption "a chatmail relay (Postfix, Dovecot and the chatmaild daemons)";

    domain = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "chat.example.org";
      description = ''
        The mail domain of the relay: addresses are `<name>@<domain>`, and the host must be
        reachable under this name (A/AAAA and MX records). Written to chatmail.ini as
        `mail_domain`.
      '';
    };

    package = mkOption {
      type = types.package;
      defaultText = literalExpression "chatmail-nix.packages.\${system}.chatmaild";
      description = ''
        The chatmaild package, providing the `doveauth` and `filtermail` daemons. The flake's
        `nixosModules.default` sets it to the flake's own build.
      '';
    };

    settings = mkOption {
      default = { };
      description = ''
        chatmail.ini `[params]`, with the upstream key names, so an operator can bring the
        file of an upstream deployment across. Keys not declared here are written as given;
        `null` leaves a key out. Defaults for every key come from the chatmaild defaults.
      '';
      example = {
        max_message_size = 52428800;
        delete_mails_after = 40;
      };
      type = types.submodule {
        freeformType = types.attrsOf iniValue;
        options = {
          mail_domain = mkOption {
            type = types.nullOr types.str;
            default = cfg.domain;
            defaultText = literalExpression "config.services.chatmail.domain";
            readOnly = true;
            description = "Set through {option}`services.chatmail.domain`.";
          };
          max_message_size = mkIniOption "max_message_size" types.ints.positive "Largest message accepted, in bytes (Postfix `message_size_limit`).";
          delete_mails_after = mkIniOption "delete_mails_after" types.ints.positive "Days after which mail is deleted from mailboxes.";
          username_min_length = mkIniOption "username_min_length" types.ints.positive "Shortest local part a new account may have.";
          username_max_length = mkIniOption "username_max_length" types.ints.positive "Longest local part a new account may have.";
          password_min_length = mkIniOption "password_min_length" types.ints.positive "Shortest password a new account may have.";
          filtermail_smtp_port = mkIniOption "filtermail_smtp_port" types.port "Loopback port of the outgoing filter (before-queue proxy of submission).";
          filtermail_smtp_port_incoming = mkIniOption "filtermail_smtp_port_incoming" types.port "Loopback port of the incoming filter (before-queue proxy of port 25).";
          postfix_reinject_port = mkIniOption "postfix_reinject_port" types.port "Loopback port where Postfix takes back mail the outgoing filter passed.";
          postfix_reinject_port_incoming = mkIniOption "postfix_reinject_port_incoming" types.port "Loopback port where Postfix takes back mail the incoming filter passed.";
          max_smtp_connections = mkIniOption "max_smtp_connections" types.ints.positive "Most simultaneous submission connections per service.";
          max_imap_connections = mkIniOption "max_imap_connections" types.ints.positive "Most simultaneous IMAP processes.";
          disable_ipv6 = mkIniOption "disable_ipv6" types.bool "Listen and send on IPv4 only.";
          doveauth_listen = mkIniOption "doveauth_listen" types.str "Loopback `host:port` where doveauth answers Dovecot's Lua passdb.";
        };
      };
    };

    tls = {
      certificateFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/var/lib/acme/chat.example.org/fullchain.pem";
        description = ''
          PEM certificate chain for the relay's domain, used by Postfix and Dovecot. Must
          be trusted by other relays: they verify it before they deliver.
        '';
      };
      keyFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/var/lib/acme/chat.example.org/key.pem";
        description = ''
          PEM private key of {option}`services.chatmail.tls.certificateFile`. Give a path
          outside the Nix store: the store is world-readable.
        '';
      };
    };

    openFirewall = mkOption {
      type = types.bool;
      default = true;
      description = "Open the SMTP (25, 465, 587) and IMAP (143, 993) ports in the firewall.";
    };
  };

  # Every chatmaild default is written to chatmail.ini, so the file documents the relay.
  config = lib.mkIf cfg.enable {
    services.chatmail.settings = lib.mapAttrs (_: lib.mkDefault) defaults;
  };

  imports = [
    ./chatmail/assertions.nix
    ./chatmail/users.nix
    ./chatmail/postfix.nix
    ./chatmail/dovecot.nix
    ./chatmail/daemons.nix
    ./chatmail/firewall.nix
  ];
}
