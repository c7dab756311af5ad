/**
 * `npm run bench`: this package's layer over a 3-node runner-storage cluster
 * against Effect's `SqlRunnerStorage` on a local PostgreSQL (table and
 * advisory-lock modes), the same Node workloads, alternating, on one machine.
 *
 *   node dist/bench/main.js [--passes 3] [--duration 5] [--warmup 1]
 *                           [--only acquire-refresh,get-runners,effect-mix]
 *                           [--backends runner-storage,pg-table,pg-advisory]
 *                           [--mix-runners 32] [--json FILE]
 *
 * Starts the cluster (RUNNER_STORAGE_BIN, default ../../target/release/
 * runner-storage) and PostgreSQL itself, and stops both at the end. Prints,
 * per line, ops/s, p50/p99 (ms), the Node process's CPU per call and the
 * store processes' CPU per call, then the ratios of each pass.
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import { writeFileSync } from "node:fs"
import { cpus } from "node:os"
import { join } from "node:path"
import { type Cluster, repoRoot, startCluster } from "../test/support/cluster.js"
import { type BackendName, backendNames, makeBackend } from "./backends.js"
import { type Postgres, startPostgres } from "./postgres.js"
import { childPids, cpuOfPids, Latencies, type LineResult } from "./stats.js"
import { acquireRefresh, effectMix, getRunners, makeRecorder, mixPeriods, type Window } from "./workloads.js"

// --- arguments -------------------------------------------------------------------

const args = process.argv.slice(2)
const flag = (name: string, fallback: string): string => {
  const i = args.indexOf(`--${name}`)
  return i >= 0 && args[i + 1] !== undefined ? args[i + 1]! : fallback
}
const passes = Number(flag("passes", "3"))
const measureMs = Number(flag("duration", "5")) * 1000
const warmupMs = Number(flag("warmup", "1")) * 1000
const only = flag("only", "acquire-refresh,get-runners,effect-mix").split(",")
const backends = flag("backends", backendNames.join(",")).split(",") as Array<BackendName>
const mixRunners = Number(flag("mix-runners", "32"))
const jsonPath = flag("json", "")
const lockExpiration = Duration.seconds(35)

interface Line {
  readonly workload: "acquire-refresh" | "get-runners" | "effect-mix"
  readonly n: number
}
const lines: Array<Line> = [
  ...(only.includes("acquire-refresh") ? [{ workload: "acquire-refresh", n: 1 }, { workload: "acquire-refresh", n: 16 }] as const : []),
  ...(only.includes("get-runners") ? [{ workload: "get-runners", n: 1 }, { workload: "get-runners", n: 16 }] as const : []),
  ...(only.includes("effect-mix") ? [{ workload: "effect-mix", n: mixRunners }] as const : [])
]

// --- one line --------------------------------------------------------------------

let lineCounter = 0

const runLine = async (
  line: Line,
  backend: BackendName,
  cluster: Cluster,
  postgres: Postgres
): Promise<LineResult> => {
  const lineId = `b${process.pid}_${lineCounter++}`
  const basePort = 20_000 + (lineCounter % 200) * 200
  const make = makeBackend(backend, { endpoints: cluster.endpoints, postgres, line: lineId, lockExpiration })
  const recorder = makeRecorder()
  const late = { count: 0 }
  const storePids = () =>
    backend.startsWith("runner-storage")
      ? cluster.nodes.map((n) => n.process?.pid ?? 0)
      : [postgres.pid, ...childPids(postgres.pid)]
  let cpu = { node: 0, store: 0 }
  let window: Window | undefined
  const begin = (): Window => {
    const now = performance.now()
    window = { from: now + warmupMs, until: now + warmupMs + measureMs }
    let startNode: NodeJS.CpuUsage | undefined
    let startStore = 0
    setTimeout(() => {
      startNode = process.cpuUsage()
      startStore = cpuOfPids(storePids())
    }, warmupMs)
    setTimeout(() => {
      const used = process.cpuUsage(startNode)
      cpu = { node: used.user + used.system, store: cpuOfPids(storePids()) - startStore }
    }, warmupMs + measureMs)
    return window
  }
  const program = line.workload === "acquire-refresh"
    ? acquireRefresh({ make, n: line.n, basePort, begin, recorder })
    : line.workload === "get-runners"
    ? getRunners({ make, n: line.n, runners: 100, basePort, begin, recorder })
    : effectMix({ make, runners: line.n, shards: 300, speedup: 10, basePort, begin, recorder, late })
  await Effect.runPromise(Effect.scoped(program))
  // the CPU snapshot at the window's end has run: the load stops at it
  const all = new Latencies()
  const kinds: LineResult["kinds"] = {}
  for (const [kind, latencies] of recorder.kinds) {
    all.merge(latencies)
    const [p50, p99] = latencies.quantiles([0.5, 0.99])
    kinds[kind] = { count: latencies.count, p50: p50!, p99: p99! }
  }
  const [p50, p99] = all.quantiles([0.5, 0.99])
  const seconds = measureMs / 1000
  const periods = mixPeriods(10)
  return {
    workload: line.workload,
    n: line.n,
    backend,
    seconds,
    calls: all.count,
    opsPerSecond: all.count / seconds,
    p50: p50!,
    p99: p99!,
    failures: recorder.failures,
    ...(recorder.firstFailure !== undefined ? { firstFailure: recorder.firstFailure } : {}),
    nodeCpuPerCall: cpu.node / Math.max(1, all.count),
    storeCpuPerCall: cpu.store / Math.max(1, all.count),
    kinds,
    ...(line.workload === "effect-mix"
      ? {
        late: late.count,
        targetPerSecond: line.n * (1000 / periods.getRunners + 1000 / periods.refresh + 1000 / periods.reply)
      }
      : {})
  }
}

// --- reporting -------------------------------------------------------------------

const fmt = (x: number, digits = 0) =>
  Number.isFinite(x) ? x.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits }) : "-"

const lineName = (r: { workload: string; n: number }) =>
  r.workload === "effect-mix" ? `effect-mix (${r.n} runners)` : `${r.workload} N=${r.n}`

const printTable = (results: ReadonlyArray<LineResult>) => {
  const rows = [[
    "line",
    "backend",
    "ops/s",
    "p50 ms",
    "p99 ms",
    "node CPU µs/call",
    "store CPU µs/call",
    "failed",
    "late"
  ]]
  for (const r of results) {
    rows.push([
      lineName(r),
      r.backend,
      fmt(r.opsPerSecond),
      fmt(r.p50, 2),
      fmt(r.p99, 2),
      fmt(r.nodeCpuPerCall),
      fmt(r.storeCpuPerCall),
      String(r.failures),
      r.late === undefined ? "" : String(r.late)
    ])
  }
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((row) => row[c]!.length)))
  for (const row of rows) console.log("| " + row.map((cell, c) => cell.padEnd(widths[c]!)).join(" | ") + " |")
  for (const r of results) {
    if (r.firstFailure !== undefined) console.log(`  ${lineName(r)} ${r.backend}: first failure: ${r.firstFailure}`)
  }
}

/** Bars of issue 23: runner-storage against the faster SqlRunnerStorage mode. */
const bars: Record<string, number> = {
  "acquire-refresh N=1": 1.5,
  "acquire-refresh N=16": 2,
  "get-runners N=1": 1.5,
  "get-runners N=16": 1.5
}

const printRatios = (results: ReadonlyArray<LineResult>) => {
  const verdicts: Array<string> = []
  for (const name of [...new Set(results.map(lineName))]) {
    const of = (backend: string) => results.find((r) => lineName(r) === name && r.backend === backend)
    const rs = of("runner-storage")
    const pgs = [of("pg-table"), of("pg-advisory")].filter((r) => r !== undefined)
    if (rs === undefined || pgs.length === 0) continue
    const faster = pgs.reduce((a, b) => (b.opsPerSecond > a.opsPerSecond ? b : a))
    const ratio = rs.opsPerSecond / faster.opsPerSecond
    const bar = bars[name]
    const p50Ratio = Math.min(...pgs.map((p) => p.p50)) / rs.p50
    const cpuRatio = Math.min(...pgs.map((p) => p.nodeCpuPerCall)) / rs.nodeCpuPerCall
    const verdict = bar === undefined ? "" : ratio >= bar ? ` (bar ${bar}×: met)` : ` (bar ${bar}×: MISSED)`
    console.log(
      `  ${name}: ops/s ${fmt(ratio, 2)}× the faster SqlRunnerStorage mode (${faster.backend})${verdict}; ` +
        `p50 ${fmt(p50Ratio, 2)}× lower; Node CPU per call ${fmt(cpuRatio, 2)}× lower`
    )
    if (bar !== undefined) verdicts.push(ratio >= bar ? "met" : "missed")
  }
  return verdicts
}

// --- main ------------------------------------------------------------------------

const main = async () => {
  const binary = process.env["RUNNER_STORAGE_BIN"] || join(repoRoot, "target", "release", "runner-storage")
  console.log(`bench: ${passes} pass(es), ${measureMs / 1000} s per line after ${warmupMs / 1000} s of warm-up; ` +
    `node ${process.version}, ${cpus().length} CPUs; binary ${binary}`)
  const cluster = await startCluster({
    binary,
    // as cluster-config/three: the nodes share this machine
    extraConfig: ["worker_threads = 1"],
    raftConfig: ["heartbeat_interval_ms = 50", "election_timeout_min_ms = 110", "election_timeout_max_ms = 160"]
  })
  let postgres: Postgres | undefined
  const all: Array<Array<LineResult>> = []
  try {
    postgres = await startPostgres({ maxConnections: 400 })
    console.log(`runner-storage: 3 nodes at ${cluster.endpoints.join(", ")}; ${postgres.version} on port ${postgres.port}`)
    const verdicts: Array<Array<string>> = []
    for (let pass = 0; pass < passes; pass++) {
      const results: Array<LineResult> = []
      for (const [index, line] of lines.entries()) {
        // alternate: each line starts with another backend, pass after pass
        const shift = (pass + index) % backends.length
        const order = [...backends.slice(shift), ...backends.slice(0, shift)]
        for (const backend of order) {
          const result = await runLine(line, backend, cluster, postgres)
          results.push(result)
          console.log(
            `  pass ${pass + 1} ${lineName(result)} ${backend}: ${fmt(result.opsPerSecond)} ops/s, ` +
              `p50 ${fmt(result.p50, 2)} ms, p99 ${fmt(result.p99, 2)} ms`
          )
        }
      }
      console.log(`\npass ${pass + 1} of ${passes}`)
      const sorted = lines.flatMap((line) =>
        backends.map((b) => results.find((r) => r.workload === line.workload && r.n === line.n && r.backend === b)!)
      )
      printTable(sorted)
      verdicts.push(printRatios(sorted))
      console.log("")
      all.push(sorted)
    }
    const flat = verdicts.flat()
    console.log(`bars: ${flat.filter((v) => v === "met").length} met, ${flat.filter((v) => v === "missed").length} missed`)
  } finally {
    await cluster.stop()
    await postgres?.stop()
  }
  if (jsonPath !== "") writeFileSync(jsonPath, JSON.stringify(all, null, 2))
}

main().then(
  () => process.exit(0),
  (error) => {
    console.error(error)
    process.exit(1)
  }
)
