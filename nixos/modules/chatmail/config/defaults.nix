# chatmail.ini defaults, with the upstream key names, as plain data (builtins only).
# mail_domain has no default: it is the one key every relay must set.
# The NixOS module and the lab both merge a relay's own settings over this set, and
# chatmaild's Python config applies the same defaults when a key is absent from the file.
{
  max_user_send_per_minute = 60;
  max_user_send_burst_size = 10;
  max_mailbox_size = "500M";
  max_message_size = 31457280;
  delete_mails_after = 20;
  delete_large_after = 7;
  delete_inactive_users_after = 90;
  username_min_length = 9;
  username_max_length = 9;
  password_min_length = 9;
  filtermail_smtp_port = 10080;
  filtermail_smtp_port_incoming = 10081;
  filtermail_http_port_incoming = 10082;
  postfix_reinject_port = 10025;
  postfix_reinject_port_incoming = 10026;
  max_smtp_connections = 1000;
  max_imap_connections = 10000;
  disable_ipv6 = false;
  # Ours: where doveauth listens for the Lua passdb (loopback only; every request
  # also carries the token from doveauth's runtime directory).
  doveauth_listen = "127.0.0.1:10090";
  # Ours: the push proxy the notifier POSTs device tokens to.
  notification_url = "https://notifications.delta.chat/notify";
  # Ours: the per-relay TURN REST secret (a file outside the Nix store) and TURN's UDP port.
  turn_secret_file = "/var/lib/chatmail-turn/secret";
  turn_port = 3478;
  # Ours: where the /new account-suggestion service listens for nginx.
  newemail_listen = "127.0.0.1:10091";
  # Ours: an app-version index (JSON) offered to clients as server metadata; null: none.
  appversions_file = null;
}
