# The client side of the VM tests, packaged from the lab's own sources so that the lab and
# the VMs drive a relay with the same code: `mailcheck` (tests/lab/mailcheck.py: IMAP, SMTP,
# TLS probes, one JSON object per command) and `pushproxy` (tests/lab/pushproxy.py: the
# stand-in for the notification proxy). flake8 checks both when they are built. Not a
# module: `import ./tools.nix { inherit lib pkgs; }`.
{ lib, pkgs }:
let
  # writePython3Bin writes its own `#!` line; the source's would become a second one.
  script =
    name: file:
    pkgs.writers.writePython3Bin name {
      flakeIgnore = [ "E501" ];
    } (lib.removePrefix "#!/usr/bin/env python3\n" (builtins.readFile file));
in
{
  mailcheck = script "mailcheck" ../lab/mailcheck.py;
  pushproxy = script "pushproxy" ../lab/pushproxy.py;
}
