# An example VPS running a chatmail relay for chat.example.org. Copy it, then change the
# domain, the disk layout and the SSH key. The certificate comes from elsewhere for now
# (e.g. security.acme); the relay only needs the two file paths.
{ modulesPath, ... }:
{
  imports = [ (modulesPath + "/profiles/qemu-guest.nix") ];

  nixpkgs.hostPlatform = "x86_64-linux";
  system.stateVersion = "26.05";

  networking.hostName = "chat";
  networking.domain = "example.org";

  boot.loader.grub.device = "/dev/vda";
  fileSystems."/" = {
    device = "/dev/disk/by-label/nixos";
    fsType = "ext4";
  };

  services.openssh = {
    enable = true;
    settings.PasswordAuthentication = false;
  };
  users.users.root.openssh.authorizedKeys.keys = [
    # "ssh-ed25519 AAAA... you@laptop"
  ];

  services.chatmail = {
    enable = true;
    domain = "chat.example.org";
    tls = {
      certificateFile = "/var/lib/acme/chat.example.org/fullchain.pem";
      keyFile = "/var/lib/acme/chat.example.org/key.pem";
    };
    settings = {
      # Keep mail for a week instead of the default.
      delete_mails_after = 7;
    };
  };
}
