-- The steady part of the soak (scripts/soak.sh): per 10 requests, 3 passthrough (an uncached
-- route), 3 cache hits (one URL), 2 cache misses (a new query each time: the cache churns at
-- its memory bound), 1 compressed response (a 200 KB JSON, Accept-Encoding rotating), 1 upload
-- of 2 KB.
local i = 0
local encodings = { "gzip", "br", "zstd", "gzip, deflate, br, zstd", "identity" }
local upload = string.rep("u", 2048)

request = function()
  i = i + 1
  local k = i % 10
  if k < 3 then
    return wrk.format("GET", "/pass/small.txt")
  elseif k < 6 then
    return wrk.format("GET", "/cached/kpis.json")
  elseif k < 8 then
    return wrk.format("GET", "/cached/item?q=" .. math.random(1, 1000000000))
  elseif k == 9 then
    return wrk.format("POST", "/upload/x", { ["Content-Type"] = "text/plain" }, upload)
  else
    local enc = encodings[(i % #encodings) + 1]
    return wrk.format("GET", "/json/big.json", { ["Accept-Encoding"] = enc })
  end
end
