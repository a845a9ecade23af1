# The relay's web site, as data (builtins only): file name -> text of each page, of the
# style sheet they share and of their icon.
#
#   settings  chatmail.ini keys (mail_domain, the retention, size and rate limits,
#             notification_url, iroh_relay, passthrough_recipients, the privacy_* contacts)
#   paths     metadataTurnSecretFile (null: no TURN server), and what ./postfix.nix reads
#   journal   { volatile; maxRetention; } as services.chatmail.journald sets them
#
# Plain HTML and one style sheet: no scripts, no cookies, nothing loaded from elsewhere, so
# the privacy page can promise exactly that. Every page says which relay it is, links the
# others, declares its language and fits a phone (viewport, one column); style.css follows
# the reader's light or dark preference. The index shows the invite as a link and as the
# image /qr-invite.svg, which is made from the same text outside this file (./nginx.nix
# exports it as qrText). An operator's own files replace any of these by name
# (services.chatmail.www.source).
{
  settings,
  paths,
  journal ? (import ./journald.nix).defaults,
}:
let
  domain = settings.mail_domain;
  invite = "DCACCOUNT:https://${domain}/new";

  escape = builtins.replaceStrings [ "&" "<" ">" "\"" "'" ] [ "&amp;" "&lt;" "&gt;" "&quot;" "&#39;" ];
  str = value: escape (toString value);
  # Set, and not the empty string the upstream template leaves in chatmail.ini.
  given = key: (settings.${key} or null) != null && toString settings.${key} != "";
  name = str domain;

  plural = n: word: "${toString n} ${word}${if n == 1 then "" else "s"}";
  days = n: if builtins.isInt n then plural n "day" else "${str n} days";

  # Sizes in words: bytes as whole MiB; Dovecot's "500M"/"1G" as MiB/GiB.
  mib = bytes: if builtins.isInt bytes then "${toString (bytes / 1048576)} MiB" else "${str bytes} bytes";
  quota =
    size:
    let
      m = builtins.match "([0-9]+)([kKmMgGtT]?)" (toString size);
      unit = {
        "" = " bytes";
        k = " KiB";
        K = " KiB";
        m = " MiB";
        M = " MiB";
        g = " GiB";
        G = " GiB";
        t = " TiB";
        T = " TiB";
      };
    in
    if m == null then str size else "${builtins.head m}${unit.${builtins.elemAt m 1}}";

  # journald's MaxRetentionSec in words, for the common "<n>d" and "<n>h" forms.
  duration =
    value:
    let
      d = builtins.match "([0-9]+) ?(d|day|days)" value;
      h = builtins.match "([0-9]+) ?(h|hour|hours)" value;
    in
    if d != null then
      plural (builtins.fromJSON (builtins.head d)) "day"
    else if h != null then
      plural (builtins.fromJSON (builtins.head h)) "hour"
    else
      str value;
  logsKept =
    (if journal.volatile then "in memory only (never written to disk)" else "on the server's disk")
    + (
      if journal.maxRetention == null then
        ", until the system's log size limit pushes them out"
      else
        ", and deleted after ${duration journal.maxRetention}"
    )
    + (if journal.volatile then " or when the server restarts" else "");

  queueLifetime =
    let
      v = toString (import ./postfix.nix { inherit settings paths; }).main.maximal_queue_lifetime;
      d = builtins.match "([0-9]+)d" v;
    in
    if d == null then str v else plural (builtins.fromJSON (builtins.head d)) "day";

  # The host that push notifications go to, from notification_url.
  pushHost =
    let
      m = builtins.match "[a-z]+://([^/:]+).*" (toString settings.notification_url);
    in
    if m == null then str settings.notification_url else str (builtins.head m);
  turn = (paths.metadataTurnSecretFile or null) != null;

  pages = [
    {
      file = "index.html";
      href = "/";
      label = "Home";
    }
    {
      file = "info.html";
      href = "/info.html";
      label = "Usage and limits";
    }
    {
      file = "privacy.html";
      href = "/privacy.html";
      label = "Privacy";
    }
  ];
  navLink =
    current: p:
    ''<li><a href="${p.href}"${if p.file == current then " aria-current=\"page\"" else ""}>${p.label}</a></li>'';
  navList = current: builtins.concatStringsSep "" (map (navLink current) pages);

  page = file: title: body: ''
    <!DOCTYPE html>
    <html lang="en">
    <head>
    <meta charset="utf-8">
    <meta name="viewport" content="width=device-width, initial-scale=1">
    <meta name="color-scheme" content="light dark">
    <meta name="referrer" content="no-referrer">
    <title>${title}</title>
    <link rel="icon" href="/favicon.svg" type="image/svg+xml">
    <link rel="stylesheet" href="/style.css">
    </head>
    <body>
    <header>
    <a class="brand" href="/">${name}</a>
    <nav aria-label="Pages of this relay"><ul>${navList file}</ul></nav>
    </header>
    <main>
    ${body}
    </main>
    <footer>
    <p>${name} is a chatmail relay for <a href="https://delta.chat">Delta Chat</a>.</p>
    <nav aria-label="Pages of this relay, again"><ul>${navList file}</ul></nav>
    </footer>
    </body>
    </html>
  '';

  askOperator =
    if given "privacy_mail" then
      ''write to <a href="mailto:${str settings.privacy_mail}">${str settings.privacy_mail}</a>''
    else
      "ask the operator of this relay (who has not published a contact address here yet)";
  contact = key: label: ''
    <dt>${label}</dt>
    <dd>${
      if given key then str settings.${key} else "The operator of this relay has not filled this in yet."
    }</dd>
  '';

  passthrough =
    if given "passthrough_recipients" then
      ''
        <li>Unencrypted messages can only be sent to these addresses, for example to reach
        the operator: ${str settings.passthrough_recipients}.</li>
      ''
    else
      "";

  style = ''
    /* One column that fits a phone, light or dark as the reader's system prefers. */
    :root {
      color-scheme: light dark;
      --bg: #f6f7f9;
      --fg: #1c1f24;
      --muted: #575e69;
      --card: #ffffff;
      --line: #d9dde3;
      --link: #1c56c4;
      --accent: #1c56c4;
      --accent-fg: #ffffff;
    }
    @media (prefers-color-scheme: dark) {
      :root {
        --bg: #14161a;
        --fg: #e7e9ec;
        --muted: #a4abb5;
        --card: #1e2126;
        --line: #343941;
        --link: #8db4ff;
        --accent: #8db4ff;
        --accent-fg: #0e1115;
      }
    }
    * { box-sizing: border-box; }
    html { -webkit-text-size-adjust: 100%; text-size-adjust: 100%; }
    body {
      margin: 0;
      background: var(--bg);
      color: var(--fg);
      font: 1.0625rem/1.6 system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", "DejaVu Sans", sans-serif;
    }
    header, main, footer { max-width: 44rem; margin: 0 auto; padding-left: 1.25rem; padding-right: 1.25rem; }
    header {
      display: flex; flex-wrap: wrap; align-items: baseline; justify-content: space-between;
      gap: 0.25rem 1.5rem; padding-top: 1rem; padding-bottom: 0.75rem; border-bottom: 1px solid var(--line);
    }
    .brand { font-weight: 700; font-size: 1.125rem; color: var(--fg); text-decoration: none; overflow-wrap: anywhere; }
    nav ul { list-style: none; margin: 0; padding: 0; display: flex; flex-wrap: wrap; gap: 0.25rem 1.25rem; }
    nav a[aria-current="page"] { color: var(--fg); font-weight: 600; text-decoration: none; }
    a { color: var(--link); }
    h1 { font-size: 1.75rem; line-height: 1.25; margin: 1.5rem 0 0.75rem; }
    h2 { font-size: 1.25rem; line-height: 1.3; margin: 2rem 0 0.5rem; }
    .lead { font-size: 1.125rem; }
    .card { background: var(--card); border: 1px solid var(--line); border-radius: 12px; padding: 1.25rem; margin: 1.25rem 0; }
    .invite { display: flex; flex-wrap: wrap; gap: 1.25rem; align-items: center; }
    .invite > div { flex: 1 1 14rem; }
    /* The code stays dark on white in both modes, with a quiet zone, so every camera reads it. */
    .qr { display: block; width: 216px; height: 216px; padding: 8px; background: #ffffff; border-radius: 8px; }
    .button {
      display: inline-block; background: var(--accent); color: var(--accent-fg); font-weight: 600;
      padding: 0.7rem 1.1rem; border-radius: 8px; text-decoration: none;
    }
    .small { font-size: 0.875rem; color: var(--muted); overflow-wrap: anywhere; }
    dl.facts dt { font-weight: 600; margin-top: 1rem; }
    dl.facts dd { margin: 0.25rem 0 0 0; }
    li { margin: 0.25rem 0; }
    footer { margin-top: 3rem; padding-top: 1rem; padding-bottom: 2rem; border-top: 1px solid var(--line); color: var(--muted); font-size: 0.9rem; }
    footer p { margin: 0 0 0.5rem; }
  '';
  # A speech bubble, so that browsers find an icon instead of asking for /favicon.ico (each
  # miss would put the visitor's address into nginx's error log).
  favicon = ''
    <svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32"><path fill="#1c56c4" d="M6 4h20a4 4 0 0 1 4 4v12a4 4 0 0 1-4 4H14l-7 6v-6H6a4 4 0 0 1-4-4V8a4 4 0 0 1 4-4z"/><path fill="#fff" d="M9 12h14v2H9zm0 5h9v2H9z"/></svg>
  '';
in
{
  "style.css" = style;
  "favicon.svg" = favicon;

  "index.html" = page "index.html" "${name}: chatmail relay for Delta Chat" ''
    <h1>Chat privately with an address on ${name}</h1>
    <p class="lead">${name} gives you a chat address for <a href="https://delta.chat">Delta Chat</a>
    in seconds: no phone number, no e-mail address, no name. The app chooses a random address
    and password for you; all you need is the invite below.</p>
    <section class="card invite" aria-label="Invite">
    <img class="qr" src="/qr-invite.svg" width="216" height="216" alt="QR code of the invite ${str invite}">
    <div>
    <p><a class="button" href="${str invite}">Create a profile on ${name}</a></p>
    <p>On the phone you read this on: tap the button. On another device: in Delta Chat,
    choose "Create New Profile", then "Scan Invite Code", and scan this code.</p>
    <p class="small">Invite: <a href="${str invite}">${str invite}</a></p>
    </div>
    </section>
    <h2>How it works</h2>
    <ol>
    <li><a href="https://delta.chat/download">Install Delta Chat</a> on your phone or computer.</li>
    <li>Open the invite above: the app creates your profile with a new address on ${name}.</li>
    <li>Share your own invite code from the app with the people you want to chat with.</li>
    </ol>
    <h2>What this relay does</h2>
    <ul>
    <li>It only passes on end-to-end encrypted messages: it cannot read what you write.</li>
    <li>It deletes every message at the latest ${days settings.delete_mails_after} after it arrived,
    and accounts that have not been used for ${days settings.delete_inactive_users_after}.</li>
    <li>Messages reach other chatmail relays and ordinary mail servers alike; between relays
    usually within a second.</li>
    </ul>
    <p>Before you start, read the <a href="/info.html">usage and limits</a> and the
    <a href="/privacy.html">privacy policy</a>.</p>
  '';

  "info.html" = page "info.html" "Usage and limits · ${name}" ''
    <h1>Usage and limits</h1>
    <p class="lead">What ${name} accepts, how long it keeps messages, and how much you can send.</p>
    <h2>Your address</h2>
    <ul>
    <li>Delta Chat creates your address on ${name} the first time it logs in: the address and
    password are chosen at random by the app.</li>
    <li>Anyone with your address can write to you, but only encrypted: see below.</li>
    </ul>
    <h2>Only encrypted messages</h2>
    <ul>
    <li>Messages to and from this relay must be end-to-end encrypted (OpenPGP). Delta Chat does
    this by itself once you and your contact have exchanged invite codes.</li>
    <li>Unencrypted messages are refused, in both directions. The only exception are the first
    messages of Delta Chat's invite handshake, which set up the encryption.</li>
    ${passthrough}</ul>
    <h2>How long messages stay on the server</h2>
    <ul>
    <li>Delta Chat normally deletes a message from the server once it has fetched it.</li>
    <li>Every message is deleted ${days settings.delete_mails_after} after it arrived, fetched or not.</li>
    <li>Large messages (over 200 kB) are deleted ${days settings.delete_large_after} after they
    arrived, once a device has fetched them.</li>
    <li>When your storage is 75 % full, the oldest messages are deleted until it is 70 % full.</li>
    <li>An address that has not logged in for ${days settings.delete_inactive_users_after} is
    deleted with everything stored for it; it cannot be recovered.</li>
    </ul>
    <h2>Limits</h2>
    <ul>
    <li>Storage per address: ${quota settings.max_mailbox_size}.</li>
    <li>Largest message, attachments included: ${mib settings.max_message_size}.</li>
    <li>Sending: up to ${str settings.max_user_send_burst_size} messages at once, then
    ${str settings.max_user_send_per_minute} per minute.</li>
    </ul>
    <h2>Deleting your address</h2>
    <p>Remove the profile in Delta Chat (or just stop using it): after
    ${days settings.delete_inactive_users_after} without a login, ${name} deletes the address and
    all its messages. To have it deleted sooner, ${askOperator}.</p>
    <h2>Other mail programs</h2>
    <p>${name} is a standard mail server. Other programs can use an address created by Delta Chat,
    as long as they encrypt every message:</p>
    <ul>
    <li>IMAP: ${name}, port 993 (TLS) or 143 (STARTTLS)</li>
    <li>SMTP: ${name}, port 465 (TLS) or 587 (STARTTLS)</li>
    <li>Both also answer on port 443, for networks that block the others.</li>
    </ul>
  '';

  "privacy.html" = page "privacy.html" "Privacy policy · ${name}" ''
    <h1>Privacy policy</h1>
    <p class="lead">${name} is built to know as little as possible about the people who use it.
    This page says exactly what it stores, why, and for how long.</p>

    <h2>In short</h2>
    <ul>
    <li>No name, phone number or other e-mail address is asked for: your address is random.</li>
    <li>Messages are end-to-end encrypted: the relay cannot read their content.</li>
    <li>Messages are deleted after ${days settings.delete_mails_after} at the latest, unused
    addresses after ${days settings.delete_inactive_users_after}.</li>
    <li>Logs are kept ${logsKept}.</li>
    <li>No tracking, no advertising, no cookies; nothing is sold or shared beyond what delivery
    needs.</li>
    </ul>

    <h2>Who runs this relay</h2>
    <dl class="facts">
    ${contact "privacy_postal" "Operator (postal address)"}
    ${contact "privacy_mail" "Contact for privacy questions"}
    ${contact "privacy_pdo" "Data protection officer"}
    ${contact "privacy_supervisor" "Supervisory authority"}
    </dl>

    <h2>What is stored, why, and for how long</h2>
    <dl class="facts">
    <dt>Your address and password</dt>
    <dd>To let your devices log in. The password is stored only as a salted hash. Kept until the
    address is deleted.</dd>
    <dt>The day of your last login</dt>
    <dd>To delete addresses nobody uses any more: after ${days settings.delete_inactive_users_after}
    without a login.</dd>
    <dt>Your messages</dt>
    <dd>To deliver them to your devices. They are end-to-end encrypted; the server stores them
    as it received them, with their sender and recipient addresses, date and size. Delta Chat
    normally deletes them once your devices have fetched them; the relay deletes them at the
    latest ${days settings.delete_mails_after} after they arrived (large ones, once fetched,
    ${days settings.delete_large_after} after they arrived).</dd>
    <dt>Messages on their way to other servers</dt>
    <dd>If another server cannot be reached, a message waits in the outgoing queue and is tried
    again, for at most ${queueLifetime}; then the sender is told it could not be delivered.</dd>
    <dt>Push notification tokens</dt>
    <dd>If you allow notifications, the app stores a token for each device, encrypted by the app
    so that the relay cannot tell which phone or push service it belongs to. Forgotten 90 days
    after the app last renewed it, or when the address is deleted.</dd>
    <dt>System logs</dt>
    <dd>To keep the service running and to stop abuse. The mail and web servers log
    connections, which can include addresses, IP addresses, times and errors, never message
    content. Logs are kept ${logsKept}.</dd>
    <dt>Counters against abuse</dt>
    <dd>How many messages an address sent and how many new addresses an IP address asked for,
    counted in memory for a few minutes to enforce the limits on
    <a href="/info.html">usage and limits</a>.</dd>
    </dl>

    <h2>What the relay cannot see</h2>
    <p>The content of your messages, their subject and attachments are encrypted on your device
    and decrypted only by the recipients. The relay sees what any mail server must see to
    deliver a message: who sent it to whom, when, how large it is, and the IP address of the
    device or server that handed it over.</p>

    <h2>Push notifications</h2>
    <p>When a message arrives for you, the relay sends each of your device tokens, and nothing
    else, to the notification service at ${pushHost}, which wakes your device through Apple's,
    Google's or another push service. The message, its sender and your address are not sent.
    The relay itself does not learn which device or vendor a token belongs to.</p>

    <h2>Calls and realtime apps</h2>
    <p>${
      if turn then
        "For calls, the app gets short-lived credentials (valid for 5 days) for this relay's TURN server, which passes encrypted call data between the devices when they cannot connect directly. Nothing about calls is recorded beyond the system logs above."
      else
        "This relay offers no server for calls; the app connects calls directly or through servers of its own choosing."
    } ${
      if given "iroh_relay" then
        "Realtime data of apps in chats goes directly between devices or through the relay at ${str settings.iroh_relay}."
      else
        "Realtime data of apps in chats goes directly between devices or through the relay built into the app; this server is not involved."
    }</p>

    <h2>Who else receives data</h2>
    <ul>
    <li>The mail servers of the people you write to receive your messages, as with any mail.</li>
    <li>The notification service named above receives device tokens.</li>
    <li>Nobody else. There are no analytics, no advertising and no data sales.</li>
    </ul>

    <h2>This website</h2>
    <p>These pages set no cookies, run no scripts and load nothing from other sites. The web
    server keeps no access log; its error log, like the other logs, is kept ${logsKept}.</p>

    <h2>Deleting your data</h2>
    <p>Remove the profile in Delta Chat: ${days settings.delete_inactive_users_after} after its
    last login, the relay deletes the address, its messages, tokens and everything else it holds
    about it. To have it deleted sooner, ${askOperator}.</p>

    <h2>Your rights</h2>
    <p>Where the EU General Data Protection Regulation applies, the legal basis for storing your
    address and messages is providing the service you asked for (Art. 6(1)(b) GDPR), and for
    logs and abuse counters the operator's legitimate interest in a secure, working service
    (Art. 6(1)(f) GDPR). You have the right to access, correct and delete your data, to restrict
    or object to its processing, and to receive it in a portable form; ask the contact above.
    You may also complain to a supervisory authority.</p>

    <h2>Changes</h2>
    <p>If this relay starts storing something new, this page will say so before it does.</p>
  '';
}
