-- A new token on every request (BENCH_TOKENS in all, split over the threads, starting at
-- BENCH_OFFSET), then round again: fills a validation cache with that many entries.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "_threads.lua")
local N = tonumber(os.getenv("BENCH_TOKENS") or "100000")
local offset = tonumber(os.getenv("BENCH_OFFSET") or "0")
function init(args)
   n = 0
end
function request()
   local k = (offset + n * threads + id) % N
   n = n + 1
   return wrk.format("GET", "/api/items", {["Authorization"] = "Bearer tok-m-" .. k})
end
