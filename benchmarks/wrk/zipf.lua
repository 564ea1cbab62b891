-- 10,000 distinct tokens, picked with Zipf-like reuse (P(rank k) ~ 1/k): a few users make
-- most requests, most users make a few.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "_threads.lua")
local N = tonumber(os.getenv("BENCH_TOKENS") or "10000")
local cdf = {}
local total = 0
for k = 1, N do
   total = total + 1 / k
   cdf[k] = total
end
function init(args)
   math.randomseed(12345 + 7919 * (id or 0))
end
local function pick()
   local u = math.random() * total
   local lo, hi = 1, N
   while lo < hi do
      local mid = math.floor((lo + hi) / 2)
      if cdf[mid] < u then lo = mid + 1 else hi = mid end
   end
   return lo
end
function request()
   return wrk.format("GET", "/api/items", {["Authorization"] = "Bearer tok-z-" .. pick()})
end
