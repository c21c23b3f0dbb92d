-- wrk script: one GET (path and optional bearer token from args), summary as JSON.
-- args: <path> [token]
local path, headers = "/", {}

function init(args)
  path = args[1]
  if args[2] then headers["Authorization"] = "Bearer " .. args[2] end
end

function request()
  return wrk.format("GET", path, headers)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, ' ..
    '"non2xx": %d, "socket_errors": %d}\n', summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), e.status,
    e.connect + e.read + e.write + e.timeout))
end
