# chatmail.ini, complete: the relay's settings (the shared defaults merged with the operator's
# keys) plus every path and mode the daemons need, taken from the platform's paths file
# (./paths-nixos.nix on NixOS, tests/lab/paths.nix in the lab). So chatmaild's own fallbacks
# only ever serve a file brought over from an upstream relay.
#
# Booleans become true/false, numbers decimal, strings verbatim, lists space-separated;
# null leaves the key out. Keys are sorted, so the file is stable between builds.
#
# Result: fromPaths (the keys written from paths), keys (everything written), text (the file).
{ settings, paths }:
let
  orEmpty = value: if value == null then "" else value;

  fromPaths = {
    mailboxes_dir = paths.mailboxesDir;
    nocreate_file = paths.nocreateFile;
    metadata_socket = paths.metadataSocket;
    lastlogin_socket = paths.lastloginSocket;
    doveauth_token_file = paths.doveauthTokenFile;
    # Empty: no TURN server is offered to clients.
    turn_secret_file = orEmpty paths.metadataTurnSecretFile;
    tls_cert_mode = paths.tlsMode;
    tls_cert_file = orEmpty paths.tlsCert;
    blocklist_file = paths.blocklistFile;
    dkim_selector = paths.dkimSelector;
    dkim_key_file = paths.dkimKeyFile;
    metrics_dir = paths.metricsDir;
  };

  keys = settings // fromPaths;

  # toString writes floats with six decimals; drop the trailing zeros (5.000000 -> 5.0).
  float =
    v:
    let
      m = builtins.match "(-?[0-9]+)\\.([0-9]*[1-9])?0*" (toString v);
    in
    "${builtins.elemAt m 0}.${if builtins.elemAt m 1 == null then "0" else builtins.elemAt m 1}";
  render =
    v:
    if builtins.isBool v then
      (if v then "true" else "false")
    else if builtins.isFloat v then
      float v
    else if builtins.isList v then
      builtins.concatStringsSep " " (map toString v)
    else
      toString v;
  written = builtins.filter (k: keys.${k} != null) (builtins.attrNames keys);
  line = k: "${k} = ${render keys.${k}}\n";
in
{
  inherit fromPaths keys;
  text = "[params]\n" + builtins.concatStringsSep "" (map line written);
}
