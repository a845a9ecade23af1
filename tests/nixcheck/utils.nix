# nixcheck evaluates the module without nixpkgs' module system, which passes `utils`
# (nixos/lib/utils.nix) to every module; this stands in for the one function we use.
# Every settings file here imports it.
{
  _module.args.utils.escapeSystemdExecArgs =
    args:
    builtins.concatStringsSep " " (
      map (arg: builtins.replaceStrings [ "%" "$" ] [ "%%" "$$" ] (builtins.toJSON arg)) args
    );
}
