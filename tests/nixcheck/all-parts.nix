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
    tls = {
      mode = "acme";
      acme = {
        acceptTerms = true;
        email = "postmaster@example.org";
      };
    };
    turn.enable = true;
    iroh.relayUrl = "https://iroh.example.org/";
    newAccounts = false;
    www.source = ../lab/www-operator;
    settings.disable_ipv6 = true;
    metrics = {
      enable = true;
      interval = "5min";
      textfileDirectory = "/var/lib/prometheus-node-exporter-text-files";
    };
  };
}
