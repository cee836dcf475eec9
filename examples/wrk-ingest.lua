-- wrk script: POST one ~1 KB structured-mode CloudEvent per request.
-- Usage (BUSBAR_KEY is a tenant API key; see BENCHMARKS.md):
--   BUSBAR_KEY=bb_... wrk -t2 -c64 -d10s -s examples/wrk-ingest.lua http://127.0.0.1:8080/v1/buses/default/events
-- Set BATCH=10 to send CloudEvents batches of ten events instead.
local key = os.getenv("BUSBAR_KEY") or ""
local batch = tonumber(os.getenv("BATCH") or "1")

local function event(i)
  return string.format(
    '{"specversion":"1.0","id":"wrk-%d","source":"bench.wrk","type":"order.created",' ..
    '"datacontenttype":"application/json","data":{"order":%d,"customer":"c-42",' ..
    '"items":[{"sku":"a","qty":1,"price":9.99},{"sku":"b","qty":2,"price":19.5}],' ..
    '"note":"%s"}}', i, i, string.rep("x", 760))
end

local counter = 0
request = function()
  counter = counter + 1
  local body, ctype
  if batch > 1 then
    local events = {}
    for k = 1, batch do events[k] = event(counter * batch + k) end
    body = "[" .. table.concat(events, ",") .. "]"
    ctype = "application/cloudevents-batch+json"
  else
    body = event(counter)
    ctype = "application/cloudevents+json"
  end
  return wrk.format("POST", nil, { ["Authorization"] = "Bearer " .. key, ["Content-Type"] = ctype }, body)
end

response = function(status, headers, body)
  if status ~= 202 then
    print("unexpected status " .. status .. ": " .. body)
  end
end
