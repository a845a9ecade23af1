-- Dovecot 2.4 passdb and userdb for a chatmail relay.
--
-- Dovecot 2.4 has no dict passdb, so this script is the thin glue between Dovecot's
-- auth workers and chatmaild's doveauth service: every decision (does the account
-- exist, may it be created on this first login, what is its password hash) is made in
-- doveauth; Dovecot then compares the login password with the hash itself.
--
-- Protocol (HTTP/1.1 on loopback, one request per lookup):
--   POST /passdb   body "<user>\n<password>"  -> 200 "<{SCHEME}hash>" | 404 unknown
--   POST /userdb   body "<user>"              -> 200 | 404 unknown
-- Each request carries X-Chatmail-Token, read from a file that only the vmail user
-- (doveauth and the auth workers) can read, so other local users cannot query it.
--
-- Settings come from the passdb/userdb block's lua_settings { }:
--   doveauth_url  (default http://127.0.0.1:10090)
--   token_file    (default /run/doveauth/token)
--   mail_user     (default vmail): the uid and gid every account's mail belongs to;
--                 LMTP and IMAP run as that user, and Dovecot only lets a process that
--                 is not root look up a user whose userdb reply names its uid

local doveauth_url = "http://127.0.0.1:10090"
local token_file = "/run/doveauth/token"
local mail_user = "vmail"
local client = nil

function script_init(args)
  if args ~= nil then
    doveauth_url = args["doveauth_url"] or doveauth_url
    token_file = args["token_file"] or token_file
    mail_user = args["mail_user"] or mail_user
  end
  client = dovecot.http.client({ request_timeout = "10s", request_max_attempts = 2 })
  return 0
end

local function read_token()
  local f = io.open(token_file, "r")
  if f == nil then
    return nil
  end
  local token = f:read("*l")
  f:close()
  return token
end

-- Returns the HTTP status (0 when doveauth could not be asked) and the body.
local function ask(path, body)
  local token = read_token()
  if token == nil then
    return 0, "cannot read " .. token_file
  end
  local req = client:request({ url = doveauth_url .. path, method = "POST" })
  req:add_header("X-Chatmail-Token", token)
  req:set_payload(body)
  local resp = req:submit()
  return resp:status(), resp:payload()
end

function auth_passdb_lookup(req)
  if req.password == nil then
    -- Only plaintext mechanisms are offered (auth_mechanisms = plain).
    return dovecot.auth.PASSDB_RESULT_SCHEME_NOT_AVAILABLE, "plaintext password required"
  end
  local status, body = ask("/passdb", req.user .. "\n" .. req.password)
  if status == 200 then
    return dovecot.auth.PASSDB_RESULT_OK, { password = body }
  elseif status == 404 then
    return dovecot.auth.PASSDB_RESULT_USER_UNKNOWN, "no such account, and none may be created"
  end
  return dovecot.auth.PASSDB_RESULT_INTERNAL_FAILURE, "doveauth answered " .. tostring(status)
end

function auth_userdb_lookup(req)
  local status, body = ask("/userdb", req.user)
  if status == 200 then
    return dovecot.auth.USERDB_RESULT_OK, { uid = mail_user, gid = mail_user }
  elseif status == 404 then
    return dovecot.auth.USERDB_RESULT_USER_UNKNOWN, "no such account"
  end
  return dovecot.auth.USERDB_RESULT_INTERNAL_FAILURE, "doveauth answered " .. tostring(status)
end
