# Renders chatmail.ini from a relay's settings (defaults.nix merged with the operator's
# keys). Booleans become true/false, numbers decimal, strings verbatim; null leaves the
# key out. Keys are written in sorted order so the file is stable between builds.
{ settings }:
let
  render =
    v:
    if builtins.isBool v then
      (if v then "true" else "false")
    else if builtins.isList v then
      builtins.concatStringsSep " " (map toString v)
    else
      toString v;
  keys = builtins.filter (k: settings.${k} != null) (builtins.attrNames settings);
  line = k: "${k} = ${render settings.${k}}\n";
in
"[params]\n" + builtins.concatStringsSep "" (map line keys)
