-- Dovecot 2.4 push_notification_lua hook for a chatmail relay (loaded by LMTP).
--
-- For every message delivered to a mailbox, unless the recipient sent it to itself
-- (a copy for its other devices), set the private mailbox metadata key
-- /private/messagenew. Dovecot stores mailbox metadata through mail_attribute's dict,
-- which is chatmaild's metadata service: it turns that key into one push notification
-- per device token the account registered. This script itself never sees a token.

function dovecot_lua_notify_begin_txn(user)
  return user
end

local function lower(s)
  if s == nil then
    return ""
  end
  return string.lower(s)
end

function dovecot_lua_notify_event_message_new(user, event)
  if lower(event.from_address) == lower(user.username) then
    return
  end
  local mailbox = user:mailbox(event.mailbox)
  mailbox:sync()
  mailbox:metadata_set("/private/messagenew", "")
  mailbox:free()
end

function dovecot_lua_notify_end_txn(ctx, success)
end
