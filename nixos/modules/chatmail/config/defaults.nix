# chatmail.ini defaults, read from chatmaild's own defaults file (which ships inside the Python
# package, where the daemons read it), so each default is written once:
#   settings       the defaults of the settings an operator tunes
#   paths          an upstream relay's layout (chatmaild's fallback; NixOS and the lab write
#                  their own paths, see ./chatmail-ini.nix)
#   upstream-only  upstream keys nothing here acts on, each with the reason
builtins.fromTOML (builtins.readFile ../../../../python/chatmaild/src/chatmaild/defaults.toml)
