# The relay's web pages, as data (builtins only): file name -> HTML text.
#
#   settings  chatmail.ini keys (mail_domain, the retention and size limits, the send rate,
#             privacy_mail, privacy_postal, privacy_pdo, privacy_supervisor)
#
# Plain HTML with an inline style sheet: no scripts, no fonts or images from elsewhere. The
# index shows the invite as a link and as the image /qr-invite.svg, which is made from the
# same text outside this file (config/nginx.nix exports it as qrText).
{ settings }:
let
  domain = settings.mail_domain;
  invite = "DCACCOUNT:https://${domain}/new";

  escape = builtins.replaceStrings [ "&" "<" ">" "\"" "'" ] [ "&amp;" "&lt;" "&gt;" "&quot;" "&#39;" ];
  str = value: escape (toString value);
  # Set, and not the empty string the upstream template leaves in chatmail.ini.
  given = key: (settings.${key} or null) != null && toString settings.${key} != "";

  # max_message_size is bytes; show whole MiB (a value given as a string is shown as is).
  mib = bytes: if builtins.isInt bytes then "${toString (bytes / 1048576)} MiB" else "${str bytes} bytes";

  page = title: body: ''
    <!DOCTYPE html>
    <html lang="en">
    <head>
    <meta charset="utf-8">
    <meta name="viewport" content="width=device-width, initial-scale=1">
    <title>${title} · ${str domain}</title>
    <style>
    body { max-width: 40em; margin: 0 auto; padding: 1em; font-family: sans-serif; line-height: 1.5; }
    nav a { margin-right: 1em; }
    img.qr { width: 16em; max-width: 100%; height: auto; background: #fff; }
    </style>
    </head>
    <body>
    <nav aria-label="Pages of this relay"><a href="/">Home</a><a href="/info.html">Usage and limits</a><a href="/privacy.html">Privacy</a></nav>
    <main>
    <h1>${title}</h1>
    ${body}
    </main>
    </body>
    </html>
  '';

  privacyItem = key: label: ''
    <h2>${label}</h2>
    <p>${
      if given key then
        str settings.${key}
      else
        "The operator of this relay has not filled this in yet."
    }</p>
  '';
in
{
  "index.html" = page "${str domain}: a chatmail relay" ''
    <p>This server is a chatmail relay: a mail server made for
    <a href="https://delta.chat">Delta Chat</a>. It creates an account the first time a
    new address logs in, keeps messages only until the app has fetched them, and accepts
    only end-to-end encrypted messages.</p>
    <h2>Get an account</h2>
    <p>Install Delta Chat, then open this invite link on the same device:</p>
    <p><a href="${str invite}">${str invite}</a></p>
    <p>Or scan this QR code with Delta Chat ("New profile", then "Scan invitation code"):</p>
    <p><img class="qr" src="/qr-invite.svg" alt="QR code holding the invite link ${str invite}"></p>
    <p>The app chooses a random address and password for you. Read the
    <a href="/info.html">usage limits</a> and the <a href="/privacy.html">privacy policy</a>
    before you start.</p>
  '';

  "info.html" = page "Usage and limits" ''
    <h2>Only encrypted mail</h2>
    <p>This relay passes only end-to-end encrypted messages (OpenPGP), to and from its own
    users and other servers. Unencrypted messages are refused, except the first messages of
    Delta Chat's invite handshake (Secure-Join), which set up the encryption.</p>
    <h2>Retention</h2>
    <ul>
    <li>Every message is deleted from the server ${str settings.delete_mails_after} days after
    it arrived, whether or not it has been fetched.</li>
    <li>Messages larger than 200 kB are deleted after ${str settings.delete_large_after}
    days.</li>
    <li>An account that has not logged in for ${str settings.delete_inactive_users_after}
    days is deleted with all its data.</li>
    </ul>
    <h2>Limits</h2>
    <ul>
    <li>Storage per account: ${str settings.max_mailbox_size}.</li>
    <li>Largest message: ${mib settings.max_message_size}.</li>
    <li>Sending: ${str settings.max_user_send_burst_size} messages at once, then
    ${str settings.max_user_send_per_minute} per minute.</li>
    </ul>
  '';

  "privacy.html" = page "Privacy" ''
    <p>This relay stores messages only until they are deleted as described under
    <a href="/info.html">usage and limits</a>. It cannot read the content of the messages
    it passes on: they are end-to-end encrypted.</p>
    ${privacyItem "privacy_mail" "Contact"}
    ${privacyItem "privacy_postal" "Operator's postal address"}
    ${privacyItem "privacy_pdo" "Data protection officer"}
    ${privacyItem "privacy_supervisor" "Supervisory authority"}
  '';
}
