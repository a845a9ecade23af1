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
    # Copy the certificate and key onto the card's root partition, or obtain them with
    # security.acme once the Pi is reachable under the domain.
    tls = {
      certificateFile = "/var/lib/chatmail-tls/fullchain.pem";
      keyFile = "/var/lib/chatmail-tls/key.pem";
    };
  };
}
