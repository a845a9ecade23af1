# iroh-relay in the version Delta Chat cores speak (./version.json, shared with the lab's
# build in tests/lab/iroh_build.py). nixpkgs' iroh-relay follows iroh's 1.x line, whose relay
# protocol the 0.35 clients inside Delta Chat do not speak.
#
# Built from the published crate, with the lock file published inside it (as
# `cargo install --locked` does), so NixOS and the lab build the same dependency versions.
# The hashes: `crateHash` is the NAR hash of the unpacked crate (what fetchCrate checks),
# computed with `nix-hash --type sha256` over the crate's unpacked directory and converted to
# SRI with `nix hash to-sri`; every dependency is fetched by the sha256 checksum the lock
# file lists for it (importCargoLock), so there is no cargoHash to compute. Reading the lock
# file out of the fetched crate is import-from-derivation (allowed by Nix's default
# settings, and for flakes).
{
  lib,
  rustPlatform,
  fetchCrate,
}:
let
  pin = lib.importJSON ./version.json;
in
rustPlatform.buildRustPackage (finalAttrs: {
  pname = "iroh-relay";
  inherit (pin) version;

  src = fetchCrate {
    inherit (finalAttrs) pname version;
    hash = pin.crateHash;
  };

  cargoLock.lockFile = "${finalAttrs.src}/Cargo.lock";

  buildFeatures = pin.features;
  cargoBuildFlags = [
    "--bin"
    "iroh-relay"
  ];
  # The crate's tests need the network.
  doCheck = false;

  meta = {
    description = "Relay server for iroh peer-to-peer connections, in the protocol version of Delta Chat's realtime channels";
    homepage = "https://github.com/n0-computer/iroh";
    license = with lib.licenses; [
      mit
      asl20
    ];
    mainProgram = "iroh-relay";
    platforms = lib.platforms.linux;
  };
})
