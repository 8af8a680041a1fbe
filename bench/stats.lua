-- wrk `done` hook for bench/run.sh.
--
-- wrk's own report (with --latency) lists only the 50/75/90/99th
-- percentiles and formats numbers for humans. This prints one extra line,
-- prefixed "BENCH", with the raw counters run.sh needs, including the
-- 99.9th percentile. Latencies are in microseconds, as wrk keeps them.
--
-- Only `done` is defined: without request()/response() functions wrk keeps
-- its fast path (a pre-built request, no Lua per response), so the script
-- does not slow the load generator down.

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "BENCH requests=%d duration_us=%d p50_us=%d p99_us=%d p999_us=%d"
         .. " connect=%d read=%d write=%d status=%d timeout=%d\n",
      summary.requests, summary.duration,
      latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
      e.connect, e.read, e.write, e.status, e.timeout))
end
