-- wrk script for the publish rows of benches/compare.sh: every request is
-- one publish of one small message, to CHANNELS channels in turn.
--   wrk -t2 -c8 -d10s -s benches/publish.lua URL -- grip|nchan CHANNELS [DEPTH]
-- grip: POST /publish/ with a GRIP item (corepin, Pushpin);
-- nchan: POST /pub?channel=X with the message as the body.
-- DEPTH > 1 pipelines: each write carries DEPTH requests (wrk counts the
-- responses).
local kind, channels, depth, n = "grip", 2000, 1, 0

function init(args)
  kind = args[1] or "grip"
  channels = tonumber(args[2] or "2000")
  depth = tonumber(args[3] or "1")
  -- Threads start at different channels.
  n = math.random(channels)
end

local function one()
  n = n + 1
  local ch = "p" .. (n % channels)
  if kind == "nchan" then
    return wrk.format("POST", "/pub?channel=" .. ch, nil, "hello from wrk\n")
  end
  local body = '{"items":[{"channel":"' .. ch ..
    '","formats":{"http-stream":{"content":"hello from wrk\\n"}}}]}'
  return wrk.format("POST", "/publish/", {["Content-Type"] = "application/json"}, body)
end

function request()
  if depth == 1 then
    return one()
  end
  local r = {}
  for i = 1, depth do
    r[i] = one()
  end
  return table.concat(r)
end
