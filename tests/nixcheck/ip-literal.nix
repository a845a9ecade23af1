# A relay without a domain: its IPv4 address as domain, everything else by default (the
# module then picks a self-signed certificate and no DKIM).
{
  imports = [ ./utils.nix ];
  services.chatmail = {
    enable = true;
    domain = "192.0.2.7";
    package = {
      type = "derivation";
      name = "chatmaild";
      outPath = "/nix/store/00000000000000000000000000000000-chatmaild";
      meta.mainProgram = "doveauth";
    };
  };
}
