-- Cycle through the tokens listed (one a line) in BENCH_TOKEN_FILE, as Authorization or, with
-- BENCH_COOKIE set, as that cookie; BENCH_PATH is the path requested.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "_threads.lua")
local path = os.getenv("BENCH_PATH") or "/api/items"
local cookie = os.getenv("BENCH_COOKIE")
local tokens = {}
for line in io.lines(os.getenv("BENCH_TOKEN_FILE")) do
   tokens[#tokens + 1] = line
end
function init(args)
   n = 0
end
function request()
   local token = tokens[(n * threads + id) % #tokens + 1]
   n = n + 1
   local headers
   if cookie and cookie ~= "" then
      headers = {["Cookie"] = cookie .. "=" .. token}
   else
      headers = {["Authorization"] = "Bearer " .. token}
   end
   return wrk.format("GET", path, headers)
end
