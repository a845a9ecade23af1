# A test relay: self-signed certificate, no TURN, a DKIM key from elsewhere, no new accounts.
{
  imports = [ ./utils.nix ];
  services.chatmail = {
    enable = true;
    domain = "_chat.example.org";
    package = {
      type = "derivation";
      name = "chatmaild";
      outPath = "/nix/store/00000000000000000000000000000000-chatmaild";
      meta.mainProgram = "doveauth";
    };
    tls.mode = "self-signed";
    turn.enable = false;
    dkim.keyFile = "/run/secrets/dkim.private";
    newAccounts = false;
    settings.max_user_send_per_minute = 30;
  };
}
