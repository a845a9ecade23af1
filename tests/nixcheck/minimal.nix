# nixcheck evaluates the module without nixpkgs' module system, which passes `utils`
# (nixos/lib/utils.nix) to every module; this stands in for the one function we use.
{
  _module.args.utils.escapeSystemdExecArgs =
    args:
    builtins.concatStringsSep " " (
      map (arg: builtins.replaceStrings [ "%" "$" ] [ "%%" "$$" ] (builtins.toJSON arg)) args
    );
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
