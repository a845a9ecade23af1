# nginx for a chatmail relay, as data (builtins only).
#
#   settings  chatmail.ini keys (mail_domain, max_message_size, disable_ipv6, newemail_listen,
#             filtermail_http_port_incoming; ./www.nix reads more)
#   paths     httpsPort (where the HTTPS site listens on loopback behind the port-443
#             multiplexer), wwwFiles (a directory holding `files` below, and `pages` in its
#             subdirectory site/), tlsMode ("acme", "external" or "self-signed"),
#             irohRelayExe (null: no iroh relay on this host; otherwise the site proxies its
#             paths, ./iroh-relay.nix)
#   journal   services.chatmail.journald's { volatile; maxRetention; }, which the privacy
#             page states (default: the module's defaults)
#
# Result:
#   streamConfig  the `stream { }` body: port 443 split by the client's ALPN list without
#                 terminating TLS: "smtp" -> submissions (465), "imap" -> IMAPS (993),
#                 anything else -> the HTTPS site. The client's address goes along in a
#                 PROXY protocol header, so the site (rate limits, X-Real-IP) sees the client,
#                 not the multiplexer; for 465 and 993 a loopback hop takes it off again
#   alpnPorts     those loopback hops: { smtp; imap; } (ports)
#   defaultListen services.nginx.defaultListen: where every virtual host of the machine
#                 listens (ports from defaultHTTPListenPort/defaultSSLListenPort). HTTPS on
#                 loopback only, with the PROXY protocol: the multiplexer is its one client,
#                 and nginx picks the site
#                 by SNI among all hosts listening there. Plain HTTP (redirects, ACME) on all
#                 addresses, IPv6 ones too unless disable_ipv6.
#   httpConfig    lines for the http block (services.nginx.appendHttpConfig): the client's
#                 address from the multiplexer's PROXY protocol header, the /new rate zone,
#                 no access log
#   extraConfig   the relay's server block beyond its locations (HSTS)
#   files         name -> text of the files the relay itself needs (autoconfig, MTA-STS
#                 policy, robots.txt), each served at its own fixed location
#   pages         name -> text of the web site (./www.nix: the pages, their style sheet
#                 and icon), served from wwwFiles/site/ at the site's root. An operator's own
#                 files (services.chatmail.www.source) are copied over them there: a file of
#                 the same name replaces the relay's, any other is served beside them
#   qrText        the invite the index page shows; whoever serves `files` also puts a QR
#                 code of it, as SVG, at qr-invite.svg beside them (outside site/, so an
#                 operator's pages can show it too)
#   serverAliases the other names the site answers to
#   locations     services.nginx.virtualHosts.<domain>.locations
#   irohLocations those of them that reach the local iroh relay ({ } without one)
{
  settings,
  paths,
  journal ? (import ./journald.nix).defaults,
}:
let
  domain = settings.mail_domain;
  ipv6 = !settings.disable_ipv6;
  selfSigned = paths.tlsMode == "self-signed";
  httpsUpstream = "127.0.0.1:${toString paths.httpsPort}";
  # Loopback ports where the multiplexer's PROXY header is taken off before Postfix's
  # submissions and Dovecot's IMAPS, which do not expect one.
  alpnPorts = {
    smtp = 10465;
    imap = 10993;
  };

  # Mozilla autoconfig v1.1: the same host for every service, implicit TLS first, port 443
  # last (for networks that allow nothing else).
  server = type: port: socketType: ''
        <${type}Server type="${if type == "incoming" then "imap" else "smtp"}">
          <hostname>${domain}</hostname>
          <port>${toString port}</port>
          <socketType>${socketType}</socketType>
          <authentication>password-cleartext</authentication>
          <username>%EMAILADDRESS%</username>
        </${type}Server>
  '';
  autoconfig = ''
    <?xml version="1.0" encoding="UTF-8"?>
    <clientConfig version="1.1">
      <emailProvider id="${domain}">
        <domain>${domain}</domain>
        <displayName>${domain} chatmail</displayName>
        <displayShortName>${domain}</displayShortName>
    ${server "incoming" 993 "SSL"}${server "incoming" 143 "STARTTLS"}${server "incoming" 443 "SSL"}${server "outgoing" 465 "SSL"}${server "outgoing" 587 "STARTTLS"}${server "outgoing" 443 "SSL"}  </emailProvider>
    </clientConfig>
  '';

  # Other relays fetch this from https://mta-sts.<domain>/ before they deliver (28 days).
  # One text for nginx and for `chatmail dns`, whose MTA-STS id is a hash of it.
  mtaSts =
    builtins.replaceStrings [ "@mail_domain@" ] [ domain ]
      (builtins.readFile ../../../../python/chatmaild/src/chatmaild/mta-sts.txt.in);

  qrText = "DCACCOUNT:https://${domain}/new";

  irohLocations =
    if paths.irohRelayExe or null != null then (import ./iroh-relay.nix { inherit settings; }).locations else { };

  file = name: type: {
    alias = "${paths.wwwFiles}/${name}";
    extraConfig = ''
      default_type ${type};
    '';
  };

  # The whole message travels in the request body; leave room for the envelope.
  bodyLimit = toString (settings.max_message_size + 1048576);

  newAccount = {
    proxyPass = "http://${settings.newemail_listen}";
    # Browsers that open the invite link hand it over to the app, which then POSTs. With a
    # self-signed certificate the web page itself fetches the JSON with GET.
    extraConfig =
      (
        if selfSigned then
          ""
        else
          ''
            if ($request_method = GET) {
              return 301 dcaccount:https://${domain}/new;
            }
          ''
      )
      + ''
        limit_except GET POST { deny all; }
        # Per client (its address from the PROXY header): a few at once, then two a second.
        # newemail has its own, slower limit per client behind this one.
        limit_req zone=chatmail_new burst=5 nodelay;
        limit_req_status 429;
      '';
  };
  # The web site: static files from site/, "/" answered by its index.html (nginx's index
  # module). No try_files, which gixy flags without open_file_cache (try_files_is_evil_too);
  # a missing file is nginx's plain 404, and not worth an error log line with the visitor's
  # address in it.
  site = {
    extraConfig = ''
      root ${paths.wwwFiles}/site;
      index index.html;
      charset utf-8;
      log_not_found off;
    '';
  };
in
{
  inherit qrText alpnPorts irohLocations;

  streamConfig = ''
    map $ssl_preread_alpn_protocols $chatmail_alpn_upstream {
      ~\bsmtp\b 127.0.0.1:${toString alpnPorts.smtp};
      ~\bimap\b 127.0.0.1:${toString alpnPorts.imap};
      default ${httpsUpstream};
    }
    server {
      listen 443;
      ${if ipv6 then "listen [::]:443;" else ""}
      ssl_preread on;
      # Every upstream above is an IP literal, so nothing is ever looked up. gixy, which
      # nixpkgs runs on nginx.conf at build time, cannot tell and wants a resolver wherever
      # proxy_pass holds a variable (missing_resolver): name the host's own.
      resolver 127.0.0.1${if ipv6 then "" else " ipv6=off"};
      proxy_pass $chatmail_alpn_upstream;
      # The client's address travels with the connection (PROXY protocol v1).
      proxy_protocol on;
    }
    server {
      listen 127.0.0.1:${toString alpnPorts.smtp} proxy_protocol;
      proxy_pass 127.0.0.1:465;
    }
    server {
      listen 127.0.0.1:${toString alpnPorts.imap} proxy_protocol;
      proxy_pass 127.0.0.1:993;
    }
  '';

  # Behind the multiplexer every HTTPS client arrives from 127.0.0.1; its real address is in
  # the PROXY header, and becomes $remote_addr (so X-Real-IP, which recommendedProxySettings
  # sends, carries it to newemail). Only loopback may say so. The port-80 side has no
  # PROXY header and keeps the peer's address.
  #
  # No access log, for the whole http block so that port 80's redirect server (to which NixOS
  # gives no extraConfig) is covered too: the privacy page promises that the web server keeps
  # none. nginx's compiled-in default, which NixOS keeps, writes every request with the
  # client's address to /var/log/nginx/access.log. A virtual host of the operator's may still
  # set its own access_log. Errors go to the error log, i.e. the volatile journal.
  httpConfig = ''
    set_real_ip_from 127.0.0.1;
    real_ip_header proxy_protocol;
    limit_req_zone $binary_remote_addr zone=chatmail_new:10m rate=2r/s;
    access_log off;
  '';

  defaultListen =
    [
      {
        addr = "127.0.0.1";
        ssl = true;
        proxyProtocol = true;
      }
      {
        addr = "0.0.0.0";
        ssl = false;
      }
    ]
    ++ (
      if ipv6 then
        [
          {
            addr = "[::]";
            ssl = false;
          }
        ]
      else
        [ ]
    );

  # The site is HTTPS only (port 80 redirects), so browsers may remember that for a year.
  # Not for subdomains: the operator may run other sites under the domain. With a
  # self-signed certificate browsers ignore the header (RFC 6797, 8.1).
  extraConfig = ''
    add_header Strict-Transport-Security "max-age=31536000" always;
  '';

  pages = import ./www.nix { inherit settings paths journal; };

  files = {
    "config-v1.1.xml" = autoconfig;
    "mta-sts.txt" = mtaSts;
    "robots.txt" = ''
      User-agent: *
      Disallow: /
    '';
  };

  serverAliases = [ "www.${domain}" ] ++ (if selfSigned then [ ] else [ "mta-sts.${domain}" ]);

  locations =
    {
      "= /.well-known/autoconfig/mail/config-v1.1.xml" = file "config-v1.1.xml" "application/xml";
      "= /robots.txt" = file "robots.txt" "text/plain";
      "/" = site;
      "= /qr-invite.svg" = file "qr-invite.svg" "image/svg+xml";
      "= /new" = newAccount;
      # Printed invite codes still carry the old CGI path.
      "= /cgi-bin/newemail.py" = newAccount;
      # Relay-to-relay delivery over HTTPS, to the incoming filter.
      "= /mxdeliv" = {
        proxyPass = "http://127.0.0.1:${toString settings.filtermail_http_port_incoming}";
        extraConfig = ''
          client_max_body_size ${bodyLimit};
          proxy_request_buffering off;
        '';
      };
    }
    // (
      if selfSigned then
        { }
      else
        { "= /.well-known/mta-sts.txt" = file "mta-sts.txt" "text/plain"; }
    )
    // irohLocations;
}
