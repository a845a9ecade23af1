# An example VPS running a chatmail relay for chat.example.org. Copy it, then change the
# domain, the ACME address, the disk layout and the SSH key.
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
    # Let's Encrypt through nginx on port 80; chat.example.org, www.chat.example.org and
    # mta-sts.chat.example.org must point at this host.
    tls.acme = {
      acceptTerms = true;
      email = "postmaster@example.org";
    };
    settings = {
      # Keep mail for a week instead of the default.
      delete_mails_after = 7;
    };
  };
}
