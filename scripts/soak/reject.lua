-- Requests Rampart must refuse (scripts/soak.sh): no Host (400), a 40 KB header (431), a 10 KB
-- target (414), a 5 MB declared body that is never sent (413). Each is answered and the
-- connection closed; wrk reconnects.
local i = 0
local big_header = string.rep("a", 40000)
local long_target = "/" .. string.rep("b", 10000)

request = function()
  i = i + 1
  local k = i % 4
  if k == 0 then
    return "GET /pass/small.txt HTTP/1.1\r\n\r\n"
  elseif k == 1 then
    return "GET /pass/small.txt HTTP/1.1\r\nHost: soak\r\nX-Big: " .. big_header .. "\r\n\r\n"
  elseif k == 2 then
    return "GET " .. long_target .. " HTTP/1.1\r\nHost: soak\r\n\r\n"
  else
    return "POST /pass/small.txt HTTP/1.1\r\nHost: soak\r\nContent-Length: 5000000\r\n\r\n"
  end
end
