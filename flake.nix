{
  description = "chatmail relay: a minimal, privacy-first mail server for Delta Chat, as a NixOS module";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";
    poetry2nix = {
      url = "github:nix-community/poetry2nix";
      inputs.nixpkgs.follows = "nixpkgs";
    };
  };

  outputs =
    {
      self,
      nixpkgs,
      poetry2nix,
    }:
    let
      inherit (nixpkgs) lib;

      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});

      # chatmaild from its Poetry project. poetry2nix is unmaintained, and its PyPI fetcher
      # fails on current nixpkgs (it expands NIX_CURL_FLAGS under `set -u`), so nothing is
      # fetched from PyPI: every package in poetry.lock is replaced by nixpkgs' build of it.
      # The lock still documents the versions chatmaild is developed against; nixpkgs'
      # runtime-deps check verifies that nixpkgs' versions satisfy pyproject's ranges.
      mkChatmaild =
        pkgs:
        let
          python = pkgs.python313;
          p2n = poetry2nix.lib.mkPoetry2Nix { inherit pkgs; };
          projectDir = ./python/chatmaild;
          lock = lib.importTOML (projectDir + "/poetry.lock");
          # PEP 503 names, as poetry2nix keys its package set.
          normalize = name: lib.toLower (lib.replaceStrings [ "_" "." ] [ "-" "-" ] name);
          # Where nixpkgs' attribute differs from the PEP 503 name (none so far).
          nixpkgsName = { };
          fromNixpkgs =
            name:
            let
              attr = nixpkgsName.${name} or name;
            in
            python.pkgs.${attr}
              or (throw "chatmaild: ${name} (poetry.lock) is not python313Packages.${attr}; map it in nixpkgsName in flake.nix");
          useNixpkgs =
            _final: _prev:
            lib.listToAttrs (
              map (p: lib.nameValuePair (normalize p.name) (fromNixpkgs (normalize p.name))) lock.package
            );
        in
        p2n.mkPoetryApplication {
          inherit projectDir python;
          overrides = [ useNixpkgs ];
          # pytest and pgpy are for the unit tests, which run outside the package build.
          checkGroups = [ ];
          # doveauth hashes new passwords with libxcrypt's crypt_rn (ctypes). NixOS has no
          # ldconfig cache for ctypes.util.find_library to read, and nothing guarantees that
          # libcrypt.so.1 is on the interpreter's search path, so the package names the file.
          postPatch = ''
            substituteInPlace src/chatmaild/sha512crypt.py \
              --replace-fail '"@libcrypt@"' '"${lib.getLib pkgs.libxcrypt}/lib/libcrypt.so.1"'
          '';
          pythonImportsCheck = [
            "chatmaild.doveauth"
            "chatmaild.filtermail"
            "chatmaild.admin"
          ];
          meta = {
            description = "Daemons of a chatmail relay: account creation and the OpenPGP-only mail filter";
            mainProgram = "doveauth";
            platforms = lib.platforms.linux;
          };
        };

      # The module itself is nixpkgs-only; this wrapper gives services.chatmail.package the
      # flake's build as its default.
      chatmailModule =
        { lib, pkgs, ... }:
        {
          imports = [ ./nixos/modules/chatmail.nix ];
          services.chatmail.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.chatmaild;
        };
    in
    {
      packages = forAllSystems (
        pkgs:
        let
          chatmaild = mkChatmaild pkgs;
        in
        {
          inherit chatmaild;
          default = chatmaild;
          # The iroh relay of services.chatmail.iroh.enable (the module's default package).
          iroh-relay = pkgs.callPackage ./nixos/pkgs/iroh-relay/package.nix { };
        }
        // lib.optionalAttrs (pkgs.stdenv.hostPlatform.system == "aarch64-linux") {
          # The Raspberry Pi example as a flashable image (sd-image/*.img.zst).
          sd-image = self.nixosConfigurations.example-rpi.config.system.build.sdImage;
        }
      );

      nixosModules = {
        chatmail = chatmailModule;
        default = chatmailModule;
      };

      nixosConfigurations = {
        example = lib.nixosSystem {
          modules = [
            self.nixosModules.default
            ./hosts/example/vps.nix
          ];
        };
        example-rpi = lib.nixosSystem {
          modules = [
            self.nixosModules.default
            ./hosts/example/rpi.nix
          ];
        };
      };

      checks = forAllSystems (
        pkgs:
        {
          inherit (self.packages.${pkgs.stdenv.hostPlatform.system}) chatmaild iroh-relay;
        }
        // lib.optionalAttrs (pkgs.stdenv.hostPlatform.system == "x86_64-linux") {
          # VM tests need KVM: nix build .#checks.x86_64-linux.federation -L
          federation = pkgs.testers.runNixOSTest (import ./tests/vm/federation.nix { inherit self; });
          features = pkgs.testers.runNixOSTest (import ./tests/vm/features.nix { inherit self; });
          # pebble's ACME server and test client modules come from the nixpkgs tree.
          tls = pkgs.testers.runNixOSTest (import ./tests/vm/tls.nix { inherit self nixpkgs; });
          # Evaluation only: the Raspberry Pi image's derivation can be instantiated (building
          # it needs an aarch64 builder).
          sd-image-eval = pkgs.writeText "sd-image-drv" (
            builtins.unsafeDiscardStringContext self.nixosConfigurations.example-rpi.config.system.build.sdImage.drvPath
          );
        }
      );

      # nixfmt-rfc-style is called plain `nixfmt` since 25.11; the old name only warns.
      formatter = forAllSystems (pkgs: pkgs.nixfmt);

      # Everything the tests outside the lab need: `nix develop -c pytest` runs chatmaild's
      # unit tests and the Nix checks (testpaths in pytest.ini) on this checkout's code.
      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = [
            (pkgs.python313.withPackages (
              ps: with ps; [
                # chatmaild's dependencies (python/chatmaild/pyproject.toml)
                aiohttp
                aiosmtpd
                aiosmtplib
                dkimpy
                dnspython
                filelock
                cryptography
                # and its test group, with the type checker
                hypothesis
                mypy
                pgpy
                pytest
                # tests/nix: the check writePython3Bin runs on the VM tests' clients
                flake8
              ]
            ))
            # tests/nix: nix-instantiate, gixy (the check nixpkgs runs on nginx.conf) and
            # systemd-analyze (the units' sandbox score)
            pkgs.nix
            pkgs.gixy
            pkgs.systemd
            pkgs.poetry
            pkgs.nixfmt
          ];
          # The source tree's sha512crypt.py has no libxcrypt path written in (the package's
          # has): let the loader find libcrypt.so.1, as it does on other distributions.
          shellHook = ''
            export PYTHONPATH="$PWD/python/chatmaild/src''${PYTHONPATH:+:$PYTHONPATH}"
            export LD_LIBRARY_PATH="${lib.getLib pkgs.libxcrypt}/lib''${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
          '';
        };
      });
    };
}
