# The complete Dovecot 2.4 dovecot.conf of a chatmail relay, as text (builtins only).
#
# We render the text ourselves rather than through services.dovecot2.settings so that
# NixOS and the lab run byte-identical configuration: the lab cannot evaluate nixpkgs'
# renderer, but it can evaluate this file.
#
# paths: dovecotBaseDir, dovecotInternalUser/Group, dovecotLogPath (null: syslog/journal),
# postfixQueue (Postfix's queue directory: the auth and LMTP sockets live in private/),
# mailboxesDir, tlsCert, tlsKey, authLua, pushLua, doveauthTokenFile, vmailUser,
# metadataSocket, lastloginSocket, quotaExpire (the chatmail-quota-expire program),
# dovecotModuleDir (Dovecot's and Pigeonhole's plugins), dedupeSieve and sieveBinDir.
{ settings, paths }:
let
  versions = import ./dovecot-versions.nix;
  optional = cond: text: if cond then text else "";
  # max_mailbox_size ("500M", "2G", "256": megabytes) in megabytes, as chatmaild reads it.
  sizeMB =
    text:
    let
      upper = builtins.replaceStrings [ "b" "m" "g" ] [ "B" "M" "G" ] text;
      noB = if builtins.match ".*B" upper != null then builtins.substring 0 (builtins.stringLength upper - 1) upper else upper;
      unit = builtins.substring (builtins.stringLength noB - 1) 1 noB;
      number = if unit == "M" || unit == "G" then builtins.substring 0 (builtins.stringLength noB - 1) noB else noB;
    in
    builtins.fromJSON number * (if unit == "G" then 1024 else 1);
  quotaMB = sizeMB (toString settings.max_mailbox_size);
  vmail = paths.vmailUser;
  # The body of the passdb and userdb blocks, indented as inside them.
  lua = builtins.concatStringsSep "\n" [
    "  lua_file = ${paths.authLua}"
    "  use_worker = yes"
    "  lua_settings {"
    "    doveauth_url = http://${settings.doveauth_listen}"
    "    token_file = ${paths.doveauthTokenFile}"
    "    mail_user = ${paths.vmailUser}"
    "  }"
  ];
in
''
  dovecot_config_version = ${versions.dovecot_config_version}
  dovecot_storage_version = ${versions.dovecot_storage_version}

  protocols = imap lmtp
  # A restart (a changed configuration, a new certificate) lets running processes finish
  # their session: an LMTP delivery cut off between saving the message and its 250 would
  # be delivered again by Postfix, a duplicate. The unit stops only the master
  # (KillMode=process, config/units.nix dovecotService).
  shutdown_clients = no
  listen = ${if settings.disable_ipv6 then "*" else "*, ::"}
  base_dir = ${paths.dovecotBaseDir}
  default_internal_user = ${paths.dovecotInternalUser}
  default_internal_group = ${paths.dovecotInternalGroup}
  default_login_user = dovenull
  default_client_limit = 20000
  ${optional (paths.dovecotLogPath != null) "log_path = ${paths.dovecotLogPath}"}
  mail_plugin_dir = ${paths.dovecotModuleDir}

  # TLS is required before any login, and clients get TLS 1.3 only.
  ssl = required
  ssl_server_cert_file = ${paths.tlsCert}
  ssl_server_key_file = ${paths.tlsKey}
  ssl_min_protocol = TLSv1.3

  # Accounts live in doveauth (see auth.lua): the first login creates one.
  auth_mechanisms = plain
  auth_username_chars = abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_@[]
  passdb lua {
  ${lua}
  }
  userdb lua {
  ${lua}
  }
  service auth {
    unix_listener ${paths.postfixQueue}/private/auth {
      mode = 0660
      user = postfix
      group = postfix
    }
  }
  service auth-worker {
    # Reads doveauth's token, which only vmail may read.
    user = ${vmail}
  }
  # No failed-login delays: the client's address is rarely the real one anyway.
  service anvil {
    unix_listener anvil-auth-penalty {
      mode = 0
    }
  }

  # One maildir per account, the account's directory being both home and maildir.
  mail_driver = maildir
  mail_home = ${paths.mailboxesDir}/%{user}
  mail_path = ~
  mail_uid = ${vmail}
  mail_gid = ${vmail}
  mail_privileged_group = ${vmail}
  mail_cache_max_size = 500K

  namespace inbox {
    inbox = yes
    mailbox Drafts {
      special_use = \Drafts
    }
    mailbox Junk {
      special_use = \Junk
    }
    mailbox Trash {
      special_use = \Trash
    }
    mailbox Sent {
      special_use = \Sent
    }
    mailbox "Sent Messages" {
      special_use = \Sent
    }
  }

  service imap {
    process_limit = ${toString settings.max_imap_connections}
  }

  # Quota: a mailbox is never allowed to bounce mail for being full. At 75 % of
  # max_mailbox_size, chatmail-quota-expire deletes the oldest messages down to 70 %.
  # mail_compress reads the gzip-compressed messages of a mail directory brought over from
  # a reference relay (docs/migration.md); new mail is stored as it is (no write method).
  mail_plugins {
    quota = yes
    mail_compress = yes
  }
  quota_mail_size = ${toString settings.max_message_size}
  quota "User quota" {
    driver = count
    storage_size = ${toString quotaMB}M
    storage_grace = 0
    quota_warning warn-75 {
      quota_storage_percentage = 75
      execute quota-warning {
        args = ${toString (quotaMB * 7 / 10)} ${paths.mailboxesDir}/%{user}
      }
    }
  }
  service quota-warning {
    executable = script ${paths.quotaExpire}
    user = ${vmail}
    unix_listener quota-warning {
      user = ${vmail}
      mode = 0600
    }
  }

  # Delta Chat clients look for these: XCHATMAIL (this is a chatmail relay) and
  # XDELTAPUSH (setting /private/devicetoken on INBOX gets push notifications).
  imap_capability {
    XDELTAPUSH = yes
    XCHATMAIL = yes
  }
  # IMAP METADATA (device tokens, and what the relay offers: TURN, iroh, limits) is kept
  # by chatmaild's metadata service; imap and lmtp both reach it.
  mail_attribute {
    dict proxy {
      socket_path = ${paths.metadataSocket}
      name = metadata
    }
  }
  protocol imap {
    imap_metadata = yes
    # The day of the last IMAP login, which decides when an unused account is removed.
    mail_plugins {
      last_login = yes
      imap_quota = yes
    }
  }
  last_login {
    dict proxy {
      socket_path = ${paths.lastloginSocket}
      name = lastlogin
    }
  }

  lmtp_add_received_header = no
  service lmtp {
    user = ${vmail}
    # One lmtp process per connection, as Dovecot's default. Reusing one process for
    # delivery after delivery (restart_request_count = unlimited) saved 15-30 ms a delivery
    # in the lab, but such a process keeps its dict connection to chatmail-metadata: after a
    # restart of that daemon its first push-notification write failed with a broken pipe
    # (tests/lab/test_faults.py). Not worth a notification that may be lost.
    unix_listener ${paths.postfixQueue}/private/dovecot-lmtp {
      mode = 0600
      user = postfix
      group = postfix
    }
  }
  # Every delivery sets /private/messagenew through push.lua; the metadata service turns
  # that into push notifications.
  push_notification lua {
    lua_file = ${paths.pushLua}
  }
  # A message its sender handed over twice (the first 250 lost on the way back) is kept
  # once: dedupe.sieve, run before every delivery, drops a second copy with the same
  # Message-ID and envelope sender within a day. Nothing else is filtered here, and
  # accounts have no Sieve scripts of their own.
  sieve_script dedupe {
    type = before
    path = ${paths.dedupeSieve}
    bin_path = ${paths.sieveBinDir}
  }
  protocol lmtp {
    mail_plugins {
      mail_lua = yes
      notify = yes
      push_notification = yes
      push_notification_lua = yes
      sieve = yes
    }
    # Postfix limits delivery concurrency already; this keeps LMTP (running as the mail
    # user) from asking anvil, whose socket only Dovecot's internal user may use.
    lmtp_user_concurrency_limit = unlimited
    # A delivery that is lost to a crash is retried by Postfix; speed wins here.
    mail_fsync = never
  }
''
