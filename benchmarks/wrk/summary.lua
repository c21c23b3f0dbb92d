-- The summary every zpay wrk script prints: one RESULT line of JSON that hot_path.py reads.
-- Loaded with dofile by get.lua, post.lua and pay.lua, so the three cannot drift apart.
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, ' ..
    '"non2xx": %d, "socket_errors": %d}\n', summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), e.status,
    e.connect + e.read + e.write + e.timeout))
end
