-- wrk script for `make bench` (bench/bench.py runs it; see docs/BENCH.md).
--
-- Environment:
--   BENCH_METHOD      GET or POST (default GET)
--   BENCH_BODY_FILE   file whose bytes are the request body (optional)
--   BENCH_TOKEN_FILE  file holding the API token (optional): sent as X-Vault-Token,
--                     read from a file so that it never appears in the process list
-- The request is built once per thread (no request() function), and response() is not
-- defined, so wrk parses no bodies: what is measured is the server and the TLS client.
-- done() prints one line "BENCHJSON {...}" with the counts and latency percentiles (µs).

local function slurp(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

wrk.method = os.getenv("BENCH_METHOD") or "GET"
local body_file = os.getenv("BENCH_BODY_FILE")
if body_file and body_file ~= "" then
  wrk.body = slurp(body_file)
  wrk.headers["Content-Type"] = "application/json"
end
local token_file = os.getenv("BENCH_TOKEN_FILE")
if token_file and token_file ~= "" then
  wrk.headers["X-Vault-Token"] = (slurp(token_file):gsub("%s+$", ""))
end

-- BENCH_KEYS=N with BENCH_PATH_PREFIX: each request goes to a key picked at random from
-- <prefix>s1 .. <prefix>sN (the scaling figures, docs/BENCH.md). Unset: one fixed path.
local nkeys = tonumber(os.getenv("BENCH_KEYS") or "")
local prefix = os.getenv("BENCH_PATH_PREFIX")
if nkeys and nkeys >= 1 and prefix and prefix ~= "" then
  function init(args)
    math.randomseed(os.time() + math.floor(os.clock() * 1e6))
  end
  function request()
    return wrk.format(nil, prefix .. "s" .. math.random(nkeys))
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"duration_us":%d,"requests":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"mean":%.1f,"max":%d,"p50":%d,"p90":%d,"p99":%d,"p999":%d}}\n',
    summary.duration, summary.requests, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9)))
end
