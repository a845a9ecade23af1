# An example Raspberry Pi 4 relay, built as an SD card image:
#   nix build .#packages.aarch64-linux.sd-image
# (needs an aarch64 builder, or boot.binfmt.emulatedSystems = [ "aarch64-linux" ] on an
# x86_64 NixOS builder). Flash sd-image/*.img.zst with zstdcat ... | dd of=/dev/sdX.
{ modulesPath, ... }:
{
  imports = [ (modulesPath + "/installer/sd-card/sd-image-aarch64.nix") ];

  nixpkgs.hostPlatform = "aarch64-linux";
  system.stateVersion = "26.05";

  networking.hostName = "chatpi";

  services.openssh = {
    enable = true;
    settings.PasswordAuthentication = false;
  };
  users.users.root.openssh.authorizedKeys.keys = [
    # "ssh-ed25519 AAAA... you@laptop"
  ];

  services.chatmail = {
    enable = true;
    domain = "chat.example.net";
    # The Pi needs ports 80 and 443 forwarded to it for the certificate.
    tls.acme = {
      acceptTerms = true;
      email = "postmaster@example.net";
    };
  };
}
