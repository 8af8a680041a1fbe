# Turns bench/run.sh's raw numbers into markdown tables (POSIX awk; mawk is fine).
#
#   awk -F'\t' -v tck=CLK_TCK -f report.awk contenders.tsv raw.tsv
#
# contenders.tsv: id, label, id of the nginx contender its ratios compare to.
# raw.tsv: one row per round x contender x mode, with a header line; the
# columns are named in run.sh. The proxy's CPU is shown whole (user + kernel)
# and, in the checks, its user-space part alone: on loopback most of a
# proxy's CPU per request is the kernel's TCP work, alike for both proxies. Every figure shown is the median over the
# rounds; a ratio is the median of the per-round ratios (each round measures
# both sides minutes apart, so this cancels slow drift better than a ratio of
# medians would).

# Median of a space-separated list of numbers ("" when empty).
function median(list,    n, a, i, j, t) {
    n = split(list, a, " ")
    if (n == 0) return ""
    for (i = 2; i <= n; i++) {              # insertion sort; n is the round count
        t = a[i] + 0
        for (j = i - 1; j >= 1 && a[j] + 0 > t; j--) a[j + 1] = a[j]
        a[j + 1] = t
    }
    return (n % 2) ? a[(n + 1) / 2] + 0 : (a[n / 2] + a[n / 2 + 1]) / 2
}

function add(arr, key, v) { arr[key] = (key in arr) ? arr[key] " " v : v }

# 123456.7 -> "123,457"
function commas(x,    s, out) {
    s = sprintf("%.0f", x)
    out = ""
    while (length(s) > 3) {
        out = "," substr(s, length(s) - 2) out
        s = substr(s, 1, length(s) - 3)
    }
    return s out
}

function fmt(list, f) { return (list == "") ? "–" : sprintf(f, median(list)) }

FNR == NR {                                 # contenders.tsv
    order[++ncont] = $1
    label[$1] = $2
    ref[$1] = $3
    next
}
FNR == 1 { next }                           # raw.tsv header

{
    round = $1; c = $2; m = $3; k = c SUBSEP m
    if (!(m in seen_mode)) { seen_mode[m] = 1; modes[++nmodes] = m }
    seen[k] = 1
    req = $4 + 0
    rps = (($5 + 0) > 0) ? req * 1e6 / $5 : 0
    add(RPS, k, rps)
    add(P50, k, $6 / 1000)
    add(P99, k, $7 / 1000)
    if ($7 + 0 > 0) Q[round, c, m] = $7 / 1000
    add(P999, k, $8 / 1000)
    R[round, c, m] = rps
    if ($14 != "-" && req > 0) {
        cpu = $14 * 1e6 / tck / req
        add(CPU, k, cpu)
        C[round, c, m] = cpu
    }
    if (NF >= 22 && $22 != "-" && req > 0) {   # the user-space part (older raw files lack it)
        user = $22 * 1e6 / tck / req
        add(USER, k, user)
        U[round, c, m] = user
    }
    if ($20 != "-") add(RSS, k, $20 / 1024)
    if (req > 0) {
        add(OCPU, k, $15 * 1e6 / tck / req)
        add(ACC, k, $21 * 1000 / req)
    }
    # CPU the machine spent that is neither the proxy, the origin nor wrk.
    ours = (($14 == "-") ? 0 : $14) + $15 + $16 * tck / 1000
    if ($19 > 0) {
        other = ($17 - ours) * 100 / $19
        add(OTHER, k, (other < 0) ? 0 : other)
        nruns++
        if (other > 10) { nbusy++; if (other > maxother) maxother = other }
        add(STEAL, k, $18 * 100 / $19)
    }
    sock[k] += $9 + $10 + $11 + $13
    econn[k] += $9; eread[k] += $10; ewrite[k] += $11; etime[k] += $13
    estatus[k] += $12
    rounds[round] = 1
}

# Median over rounds of A[round, c, m] / B[round, d, m], or "–".
function ratio(A, B, c, d, m,    r, list) {
    list = ""
    for (r in rounds)
        if (((r, c, m) in A) && ((r, d, m) in B) && B[r, d, m] > 0)
            list = list " " A[r, c, m] / B[r, d, m]
    return (list == "") ? "–" : sprintf("%.2f×", median(list))
}

# "n of N": rounds in which A[round, c, m] <= A[round, d, m], of the rounds with both.
function at_most(A, c, d, m,    r, n, all) {
    n = all = 0
    for (r in rounds)
        if (((r, c, m) in A) && ((r, d, m) in A)) {
            all++
            if (A[r, c, m] <= A[r, d, m]) n++
        }
    return (all == 0) ? "–" : n " of " all
}

function errors(k,    s) {
    s = ""
    if (econn[k]) s = s " connect " econn[k]
    if (eread[k]) s = s " read " eread[k]
    if (ewrite[k]) s = s " write " ewrite[k]
    if (etime[k]) s = s " timeout " etime[k]
    if (estatus[k]) s = s " non-2xx/3xx " estatus[k]
    return (s == "") ? "none" : substr(s, 2)
}

END {
    title["ka64"] = "Keep-alive, 64 connections (`wrk -t2 -c64 --latency`)"
    title["ka256"] = "Keep-alive, 256 connections (`wrk -t2 -c256 --latency`)"
    title["paced64"] = "Equal offered load: keep-alive, 64 connections, each waiting a fixed time before each request (`wrk -t2 -c64 --latency -s bench/paced.lua URL -- PACE_MS`)"
    title["close64"] = "New connection per request, 64 connections (`wrk -t2 -c64 --latency -H 'Connection: close'`)"
    for (i = 1; i <= nmodes; i++) {
        m = modes[i]
        print "### " ((m in title) ? title[m] : m)
        print ""
        print "| contender | req/s | p50 ms | p99 ms | p99.9 ms | proxy CPU µs/req | peak RSS MiB | req/s ÷ nginx | CPU/req ÷ nginx | p99 ÷ nginx | req/s ÷ direct |"
        print "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
        for (j = 1; j <= ncont; j++) {
            c = order[j]; k = c SUBSEP m
            if (!(k in seen)) continue
            d = ref[c]
            warn = (sock[k] + estatus[k] > 0) ? " ⚠" : ""
            if (warn != "") warned = 1
            printf "| %s%s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", label[c], warn,
                commas(median(RPS[k])), fmt(P50[k], "%.2f"), fmt(P99[k], "%.2f"),
                fmt(P999[k], "%.2f"), fmt(CPU[k], "%.1f"), fmt(RSS[k], "%.1f"),
                (d == "-") ? "–" : ratio(R, R, c, d, m),
                (d == "-") ? "–" : ratio(C, C, c, d, m),
                (d == "-") ? "–" : ratio(Q, Q, c, d, m),
                (c == "direct") ? "–" : ratio(R, R, c, "direct", m)
        }
        if (warned) {
            print ""
            print "⚠ wrk saw socket errors or error statuses in these runs: the figures are not a fair comparison (see the checks)."
            warned = 0
        }
        print ""
        print "Checks (same runs):"
        print ""
        print "| contender | proxy user-space CPU µs/req | user CPU/req ÷ nginx | rounds with p99 ≤ nginx's | origin CPU µs/req | origin conns opened per 1k req | wrk errors (all rounds) | other CPU % | steal % |"
        print "|---|--:|--:|--:|--:|--:|---|--:|--:|"
        for (j = 1; j <= ncont; j++) {
            c = order[j]; k = c SUBSEP m
            if (!(k in seen)) continue
            d = ref[c]
            printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", label[c], fmt(USER[k], "%.1f"),
                (d == "-") ? "–" : ratio(U, U, c, d, m), (d == "-") ? "–" : at_most(Q, c, d, m),
                fmt(OCPU[k], "%.1f"),
                fmt(ACC[k], "%.1f"), errors(k), fmt(OTHER[k], "%.0f"), fmt(STEAL[k], "%.0f")
        }
        print ""
    }
    if (nbusy > 0)
        printf "Other processes took over 10%% of the machine in %d of %d runs (up to %.0f%%): those runs are skewed.\n\n", nbusy, nruns, maxother
}
