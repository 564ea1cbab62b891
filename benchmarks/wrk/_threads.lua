-- Shared by the scripts that split their work over wrk's threads (not a scenario itself).
-- Load it first with:
--    dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "_threads.lua")
-- (wrk runs a script from its own path, not from its folder, so the path is the script's.)
-- Each thread then has `id` (0, 1, ...: numbered by setup(), which wrk calls in its main
-- state once a thread) and `threads`, the thread count (BENCH_THREADS, as passed to -t).
local counter = 0
function setup(thread)
   thread:set("id", counter)
   counter = counter + 1
end
threads = tonumber(os.getenv("BENCH_THREADS") or "2")
