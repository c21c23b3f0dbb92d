-- wrk script: POST /v1/payments with a unique Idempotency-Key per request.
-- args: <file of "session_key_id agent_token" lines> <amount> <recipient> <run prefix>
-- Each request picks one of the file's keys at random (one line: one hot key).
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "summary.lua")
local counter, keys, amount, recipient, prefix = 0, {}, nil, nil, nil
local thread_number = 0

function setup(thread)
  thread_number = thread_number + 1
  thread:set("thread_id", thread_number)
end

function init(args)
  for line in io.lines(args[1]) do
    local key_id, token = line:match("^(%S+)%s+(%S+)$")
    if key_id then keys[#keys + 1] = {key_id, "Bearer " .. token} end
  end
  amount, recipient, prefix = args[2], args[3], args[4]
  math.randomseed(os.time() * 100 + thread_id)
end

function request()
  counter = counter + 1
  local key = keys[math.random(#keys)]
  local body = '{"session_key_id":"' .. key[1] .. '","amount":"' .. amount ..
      '","recipient":"' .. recipient .. '"}'
  return wrk.format("POST", "/v1/payments", {
    ["Authorization"] = key[2],
    ["Content-Type"] = "application/json",
    ["Idempotency-Key"] = prefix .. "-" .. thread_id .. "-" .. counter,
  }, body)
end
