# What the lab deploys on one relay, evaluated with
#   nix-instantiate --eval --strict --json tests/lab/relay.nix --argstr domain relay1.test
# It calls the same pure configuration files as the NixOS module, with the paths of the
# lab's Debian 13 root filesystem (./paths.nix) instead of NixOS's.
{
  domain,
  settingsJSON ? "{}",
  tlsMode ? "acme",
  dkim ? true,
}:
let
  cfg = ../../nixos/modules/chatmail/config;
  # Every lab relay runs its own iroh relay and advertises it, as NixOS does with
  # services.chatmail.iroh.enable, but over plain HTTP (port 80, the same nginx locations as
  # the HTTPS site): Delta Chat cores check an iroh relay's certificate against their built-in
  # Mozilla roots only, and no setting of theirs makes them trust the lab's CA.
  irohUrl = "http://${domain}";
  settings =
    (import (cfg + "/defaults.nix")).settings
    // {
      mail_domain = domain;
      iroh_relay = irohUrl;
    }
    // builtins.fromJSON settingsJSON;
  paths = import ./paths.nix { inherit domain tlsMode dkim; };
  ini = import (cfg + "/chatmail-ini.nix") { inherit settings paths; };
  exe = name: "${paths.binDir}/${name}";
in
{
  inherit settings paths;
  identity = import (cfg + "/identity.nix") settings.mail_domain;
  chatmailIni = ini.text;
  postfix = import (cfg + "/postfix.nix") { inherit settings paths; };
  dovecotConf = import (cfg + "/dovecot.nix") { inherit settings paths; };
  authLua = builtins.readFile (cfg + "/auth.lua");
  pushLua = builtins.readFile (cfg + "/push.lua");
  dedupeSieve = builtins.readFile (cfg + "/dedupe.sieve");
  opendkim = if paths.dkimSocket == null then null else import (cfg + "/opendkim.nix") { inherit settings paths; };
  nginx = import (cfg + "/nginx.nix") { inherit settings paths; };
  irohRelay = import (cfg + "/iroh-relay.nix") { inherit settings; } // { url = irohUrl; };
  turn = import (cfg + "/turn.nix") { inherit settings paths; };
  unbound = import (cfg + "/unbound.nix") { inherit settings; };
  acme = import (cfg + "/acme.nix") { inherit settings paths; };
  units = import (cfg + "/units.nix") { inherit settings paths exe; };
  # The module's defaults (services.chatmail.journald).
  journald = (import (cfg + "/journald.nix")).render { };
}
