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
  settings = (import (cfg + "/defaults.nix")).settings // { mail_domain = domain; } // builtins.fromJSON settingsJSON;
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
  turn = import (cfg + "/turn.nix") { inherit settings paths; };
  unbound = import (cfg + "/unbound.nix") { inherit settings; };
  acme = import (cfg + "/acme.nix") { inherit settings paths; };
  units = import (cfg + "/units.nix") { inherit settings paths exe; };
  # The module's defaults (services.chatmail.journald).
  journald = (import (cfg + "/journald.nix")).render { };
}
