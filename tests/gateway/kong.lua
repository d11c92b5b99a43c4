-- A stand-in for Kong's key-auth and tcp-log plugins on nginx + Lua (the
-- engine Kong runs on), for corepin's tests. Test equipment only.
local _M = {}

-- Consumers and their keys (Kong: a consumer with a key-auth credential).
local consumers = {
  supersecret = { id = "7c1a9c3c-0d8f-4a6e-9d3e-2f1c8b7a6e51", username = "alice",
                  credential = "9b2f6d1e-3c4a-4f5b-8e7d-1a2b3c4d5e6f" },
}
local KONG_VERSION = "3.4.2"

local function json_string(s)
  s = tostring(s)
  s = s:gsub('[%c"\\]', function(c)
    local map = { ['"'] = '\\"', ['\\'] = '\\\\', ['\n'] = '\\n', ['\r'] = '\\r', ['\t'] = '\\t' }
    return map[c] or string.format("\\u%04x", c:byte())
  end)
  return '"' .. s .. '"'
end

-- A small JSON encoder (lua-cjson in Debian is not built for LuaJIT).
local function encode(v)
  local t = type(v)
  if t == "table" then
    if #v > 0 then
      local out = {}
      for _, x in ipairs(v) do out[#out + 1] = encode(x) end
      return "[" .. table.concat(out, ",") .. "]"
    end
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = k end
    table.sort(keys)
    local out = {}
    for _, k in ipairs(keys) do out[#out + 1] = json_string(k) .. ":" .. encode(v[k]) end
    return "{" .. table.concat(out, ",") .. "}"
  elseif t == "number" or t == "boolean" then
    return tostring(v)
  elseif v == nil then
    return "null"
  end
  return json_string(v)
end

local function reject(status, message)
  ngx.status = status
  ngx.header["Content-Type"] = "application/json; charset=utf-8"
  ngx.header["WWW-Authenticate"] = 'Key realm="kong"'
  ngx.header["Server"] = "kong/" .. KONG_VERSION
  ngx.say(encode({ message = message }))
  return ngx.exit(status)
end

-- access phase: key-auth with key_names = [Auth-Key] (header) and apikey (query).
function _M.access()
  ngx.ctx.started = ngx.now()
  local key = ngx.req.get_headers()["auth-key"]
  if type(key) == "table" then key = key[1] end
  if not key or key == "" then key = ngx.var.arg_apikey end
  if not key or key == "" then
    return reject(401, "No API key found in request")
  end
  local c = consumers[key]
  if not c then
    -- Kong 3.x answers 401 here; Kong before 3.0 answered 403.
    return reject(tonumber(ngx.var.kong_invalid_key_status) or 401, "Invalid authentication credentials")
  end
  ngx.ctx.consumer = c
  ngx.req.set_header("X-Consumer-ID", c.id)
  ngx.req.set_header("X-Consumer-Username", c.username)
  ngx.req.set_header("X-Credential-Identifier", c.credential)
  local via = ngx.req.get_headers()["via"]
  ngx.req.set_header("Via", (via and (via .. ", ") or "") .. "1.1 kong/" .. KONG_VERSION)
  ngx.ctx.proxy_start = ngx.now()
end

-- header filter: Kong's response headers.
function _M.header()
  local ctx = ngx.ctx
  if ctx.consumer then
    local upstream = (ngx.now() - (ctx.proxy_start or ngx.now())) * 1000
    ngx.header["X-Kong-Upstream-Latency"] = string.format("%d", upstream)
    ngx.header["X-Kong-Proxy-Latency"] = "0"
    local via = ngx.header["Via"]
    ngx.header["Via"] = (via and (via .. ", ") or "") .. "1.1 kong/" .. KONG_VERSION
  end
end

-- log phase: tcp-log, one JSON line per request, sent from a timer (no
-- sockets in the log phase).
function _M.log(host, port)
  local ctx = ngx.ctx
  local now = ngx.now()
  local entry = {
    request = { method = ngx.req.get_method(), uri = ngx.var.request_uri,
                headers = ngx.req.get_headers(), size = tonumber(ngx.var.request_length) },
    response = { status = ngx.status, size = tonumber(ngx.var.bytes_sent) },
    consumer = ctx.consumer and { id = ctx.consumer.id, username = ctx.consumer.username } or nil,
    latencies = { request = math.floor((now - (ctx.started or now)) * 1000),
                  proxy = math.floor((now - (ctx.proxy_start or now)) * 1000), kong = 0 },
    client_ip = ngx.var.remote_addr,
    started_at = math.floor((ctx.started or now) * 1000),
  }
  local line = encode(entry) .. "\n"
  ngx.timer.at(0, function(premature)
    if premature then return end
    local sock = ngx.socket.tcp()
    sock:settimeout(2000)
    if sock:connect(host, port) then
      sock:send(line)
      sock:close()
    end
  end)
end

return _M
