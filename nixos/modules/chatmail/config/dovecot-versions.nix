# The Dovecot 2.4 configuration and storage versions our dovecot.conf is written for.
# NixOS asserts both are set (services.dovecot2.settings) even when a configFile is given.
{
  dovecot_config_version = "2.4.1";
  dovecot_storage_version = "2.4.1";
}
