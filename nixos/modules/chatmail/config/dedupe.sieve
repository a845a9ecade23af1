# Run by Dovecot's LMTP before every delivery (dovecot.conf: sieve_script dedupe).
#
# A sender that handed a message over but never saw its 250 sends it again: a mail client
# after a broken session, a peer's Postfix after a deferral. That happens when a filter dies
# in the moment between Postfix queueing the message and the filter passing Postfix's 250
# on, which no before-queue proxy can close. The second copy carries the same Message-ID
# from the same envelope sender, so the account keeps the first and drops the rest for a
# day. Keying on the sender as well means nobody can suppress another sender's message by
# sending one with its Message-ID first.
require ["duplicate", "envelope", "variables"];

if header :matches "Message-ID" "*" {
  set "id" "${1}";
  if envelope :matches "from" "*" {
    set "from" "${1}";
  }
  if duplicate :uniqueid "${from} ${id}" :seconds 86400 {
    discard;
    stop;
  }
}
