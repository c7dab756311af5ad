/**
 * What one bench line measures: call latencies (per kind), failures, and the
 * CPU the Node process and the store's processes used meanwhile.
 */
import { readdirSync, readFileSync } from "node:fs"

/** Latencies of one kind of call, in ms. */
export class Latencies {
  private values = new Float64Array(1024)
  private length = 0

  record(ms: number) {
    if (this.length === this.values.length) {
      const grown = new Float64Array(this.values.length * 2)
      grown.set(this.values)
      this.values = grown
    }
    this.values[this.length++] = ms
  }

  get count() {
    return this.length
  }

  /** The q-quantile (0..1) by nearest rank; NaN when empty. */
  quantiles(qs: ReadonlyArray<number>): Array<number> {
    if (this.length === 0) return qs.map(() => NaN)
    const sorted = this.values.slice(0, this.length).sort()
    return qs.map((q) => sorted[Math.min(this.length - 1, Math.max(0, Math.ceil(q * this.length) - 1))]!)
  }

  merge(other: Latencies) {
    for (let i = 0; i < other.length; i++) this.record(other.values[i]!)
  }
}

/** Clock ticks per second of /proc/<pid>/stat (USER_HZ; 100 on Linux). */
const TICKS_PER_SECOND = 100

/** utime + stime of the processes, in µs (0 for a process that is gone). */
export const cpuOfPids = (pids: ReadonlyArray<number>): number => {
  let ticks = 0
  for (const pid of pids) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, "utf8")
      // fields after the command (which may hold spaces) start after ") "
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
      ticks += Number(fields[11]) + Number(fields[12])
    } catch {
      // exited
    }
  }
  return (ticks * 1e6) / TICKS_PER_SECOND
}

/** The pids whose parent is `parent` (PostgreSQL's backends). */
export const childPids = (parent: number): Array<number> => {
  const out: Array<number> = []
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8")
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
      if (Number(fields[1]) === parent) out.push(Number(entry))
    } catch {
      // exited
    }
  }
  return out
}

export interface LineResult {
  readonly workload: string
  readonly n: number
  readonly backend: string
  readonly seconds: number
  readonly calls: number
  readonly opsPerSecond: number
  readonly p50: number
  readonly p99: number
  readonly failures: number
  readonly firstFailure?: string
  /** Node process CPU (user + system) per call, µs. */
  readonly nodeCpuPerCall: number
  /** The store's processes' CPU per call, µs. */
  readonly storeCpuPerCall: number
  /** Per kind of call: count, p50, p99. */
  readonly kinds: Record<string, { count: number; p50: number; p99: number }>
  /** effect-mix: periodic calls that fell more than one period behind. */
  readonly late?: number
  /** effect-mix: the target call rate. */
  readonly targetPerSecond?: number
}
