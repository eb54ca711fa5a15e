-- wrk script for the convserve benchmark: POSTs one file as the request body, counts the
-- answers by status (and 503s without Retry-After), optionally stops after a number of
-- requests, and prints one machine-readable JSON line when the run ends.
--
-- Environment:
--   BENCH_BODY          path of the file sent as the body (required)
--   BENCH_CONTENT_TYPE  its Content-Type (default application/octet-stream)
--   BENCH_REQUESTS      each wrk thread stops sending after this many responses (default:
--                       no limit); wrk itself still runs for its -d duration
--   BENCH_HEADER        one more request header, "Name: value" (optional; the v2 binary
--                       body needs Inference-Header-Content-Length)

local path = assert(os.getenv("BENCH_BODY"), "BENCH_BODY is not set")
local file = assert(io.open(path, "rb"))
local body = file:read("*a")
file:close()

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = os.getenv("BENCH_CONTENT_TYPE") or "application/octet-stream"
local extra = os.getenv("BENCH_HEADER")
if extra then
  local name, value = extra:match("^([^:]+):%s*(.*)$")
  wrk.headers[name] = value
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  statuses = {}
  shed_without_retry_after = 0
  answered = 0
  limit = tonumber(os.getenv("BENCH_REQUESTS") or "0") or 0
end

function response(status, headers, body)
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
  if status == 503 and headers["Retry-After"] == nil then
    shed_without_retry_after = shed_without_retry_after + 1
  end
  answered = answered + 1
  if limit > 0 and answered >= limit then
    wrk.thread:stop()
  end
end

local function json_object(map)
  local parts = {}
  for k, v in pairs(map) do
    table.insert(parts, string.format('"%s":%d', k, v))
  end
  return "{" .. table.concat(parts, ",") .. "}"
end

function done(summary, latency, requests)
  local merged = {}
  local no_retry_after = 0
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      merged[status] = (merged[status] or 0) + count
    end
    no_retry_after = no_retry_after + thread:get("shed_without_retry_after")
  end
  local errors = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,'
      .. '"latency_us":{"mean":%.1f,"p50":%d,"p90":%d,"p99":%d,"max":%d},'
      .. '"socket_errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d},'
      .. '"statuses":%s,"shed_without_retry_after":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max,
    errors.connect, errors.read, errors.write, errors.timeout,
    json_object(merged), no_retry_after))
end
