# The relay runs its own iroh relay (services.chatmail.iroh.enable).
{
  imports = [ ./utils.nix ];
  services.chatmail = {
    enable = true;
    domain = "chat.example.org";
    package = {
      type = "derivation";
      name = "chatmaild";
      outPath = "/nix/store/00000000000000000000000000000000-chatmaild";
      meta.mainProgram = "doveauth";
    };
    iroh = {
      enable = true;
      package = {
        type = "derivation";
        name = "iroh-relay-0.35.0";
        outPath = "/nix/store/00000000000000000000000000000000-iroh-relay-0.35.0";
        meta.mainProgram = "iroh-relay";
      };
    };
    tls = {
      mode = "acme";
      acme = {
        acceptTerms = true;
        email = "postmaster@example.org";
      };
    };
  };
}
