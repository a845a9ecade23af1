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
      certificateFile = "/var/lib/acme/chat.example.org/fullchain.pem";
      keyFile = "/var/lib/acme/chat.example.org/key.pem";
    };
  };
}
