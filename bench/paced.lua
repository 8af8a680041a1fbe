-- wrk script for bench/run.sh's `paced64` mode: equal offered load.
--
-- In the other modes each connection sends its next request as soon as
-- the answer to the last one is in, so a faster proxy is also sent more
-- requests, and p99 then compares two different loads. Here each
-- connection waits PACE milliseconds before each request (wrk's `delay`
-- hook), so every contender is offered about the same rate,
-- connections / (PACE + latency), well below what either proxy can do,
-- and p99 compares like with like.
--
-- PACE is the script's first argument (`wrk ... URL -- 1.5`). wrk's timers
-- count whole milliseconds, so a fractional PACE is a random mix of the
-- two whole numbers around it with that mean. The `done` hook (the BENCH
-- result line) is stats.lua's, loaded from this script's directory.

local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "stats.lua")

local whole, frac = 1, 0.5

function init(args)
   local pace = tonumber(args[1] or "")
   if pace == nil or pace < 0 then
      io.stderr:write("paced.lua: the pace in milliseconds is needed after `--`, got " .. tostring(args[1]) .. "\n")
      os.exit(2)
   end
   whole = math.floor(pace)
   frac = pace - whole
end

function delay()
   if frac > 0 and math.random() < frac then
      return whole + 1
   end
   return whole
end
