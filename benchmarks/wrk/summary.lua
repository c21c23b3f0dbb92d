-- The summary every zpay wrk script prints: one RESULT line of JSON that hot_path.py reads.
-- Loaded with dofile by get.lua, post.lua and pay.lua, so the three cannot drift apart.
-- `quantiles_us`: the latency at 1%, 2%, … 99% and 99.9%, so that several runs' latencies
-- can be pooled (hot_path.py `pooled_quantile`).
function done(summary, latency, requests)
  local e = summary.errors
  local q = {}
  for p = 1, 99 do q[#q + 1] = string.format("%d", latency:percentile(p)) end
  q[#q + 1] = string.format("%d", latency:percentile(99.9))
  io.write(string.format(
    'RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, ' ..
    '"non2xx": %d, "socket_errors": %d, "quantiles_us": [%s]}\n', summary.requests,
    summary.duration, latency:percentile(50), latency:percentile(99), e.status,
    e.connect + e.read + e.write + e.timeout, table.concat(q, ", ")))
end
