/**
 * A fleet of real Effect runners (8 Node processes, `NodeClusterSocket`,
 * this package's layer) sharing 300 shards over a real 3-node store, while
 * entity messages flow: the shards spread over all 8; a rolling restart of
 * the runners, then of the store's nodes; a runner SIGKILLed. Every runner
 * reports what it holds every 200 ms; no shard may ever be held by two.
 * Reports how long each rebalancing took.
 */
import { expect, layer } from "@effect/vitest"
import * as Effect from "effect/Effect"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { adminStatus, type Cluster, freePorts, sleep, waitFor } from "./support/cluster.js"
import { Holdings } from "./support/holdings.js"
import { clientOf, clusterLayer, TestCluster } from "./support/layers.js"
import { type RunnerProcess, startRunner } from "./support/runner.js"

/** The store's E and the runners' shardLockExpiration; they refresh every E / 3. */
const E = 9000
const REFRESH = E / 3
const SHARDS = 300
const RUNNERS = 8

interface PingResult {
  readonly phase: string
  readonly ok: boolean
  readonly error?: string
}

const fleet = (cluster: Cluster) =>
  Effect.promise(async () => {
    const logDir = mkdtempSync(join(tmpdir(), "rs-effect-fleet-"))
    const holdings = new Holdings()
    const ports = await freePorts(RUNNERS)
    const runners = new Map<number, RunnerProcess>()
    let instance = 0
    const report: Array<string> = []
    const start = async (port: number) => {
      const name = `r${port}#${instance++}`
      const runner = await startRunner({
        name,
        port,
        endpoints: cluster.endpoints,
        lockExpirationMs: E,
        logDir,
        readyTimeoutMs: 60_000,
        onSample: (sample) => holdings.add(name, sample)
      })
      runner.child.once("exit", () => holdings.end(name))
      runners.set(port, runner)
      return runner
    }
    /** All 300 held, by live runners only, each of them holding some. */
    const settled = (expected: number) => () => {
      const current = holdings.current()
      if (current.size !== SHARDS || holdings.latest.size !== expected) return undefined
      const holders = new Set([...current.values()].flat())
      return holders.size === expected ? true : undefined
    }
    const timed = async (what: string, expected: number, timeoutMs: number) => {
      const t0 = Date.now()
      await waitFor(what, timeoutMs, settled(expected), 100)
      const ms = Date.now() - t0
      report.push(`${what}: ${ms} ms`)
      return ms
    }

    // --- entity messages flowing throughout ------------------------------------
    let phase = "start"
    let stop = false
    const pings: Array<PingResult> = []
    const load = (async () => {
      for (let i = 0; !stop; i++) {
        const live = [...runners.values()].filter((r) => r.alive())
        const via = live[i % Math.max(1, live.length)]
        if (via !== undefined) {
          const p = phase
          await via.ping(`entity-${i % 97}`, `m-${i}`, 10_000).then(
            (reply) => pings.push({ phase: p, ok: reply.message === `m-${i}` }),
            (error: Error) => pings.push({ phase: p, ok: false, error: error.message })
          )
        }
        await sleep(20)
      }
    })()

    try {
      await Promise.all(ports.map(start))
      await timed(`the ${SHARDS} shards spread over all ${RUNNERS} runners`, RUNNERS, 90_000)

      phase = "rolling restart of the runners"
      for (const port of ports) {
        const t0 = Date.now()
        await runners.get(port)!.kill("SIGTERM")
        await start(port)
        await waitFor("the fleet to settle after a runner restart", 60_000, settled(RUNNERS), 100)
        report.push(`runner ${port} restarted, fleet settled in ${Date.now() - t0} ms`)
      }

      phase = "rolling restart of the store"
      for (const node of cluster.nodes) {
        const t0 = Date.now()
        await cluster.kill(node.id, "SIGTERM")
        cluster.start(node.id)
        await waitFor(`node ${node.id} to serve again`, 30_000, async () =>
          (await adminStatus(node.address, 500).catch(() => undefined))?.leader_id ? true : undefined)
        await cluster.waitForLeader()
        report.push(`store node ${node.id} restarted, serving again in ${Date.now() - t0} ms`)
      }
      await waitFor("all shards held after the store's restarts", 30_000, settled(RUNNERS), 100)

      phase = "a runner SIGKILLed"
      const victim = runners.get(ports[0]!)!
      const theirs = new Set([...holdings.current()].filter(([, hs]) => hs.includes(victim.address)).map(([s]) => s))
      expect(theirs.size).toBeGreaterThan(0)
      const killedAt = Date.now()
      await victim.kill("SIGKILL")
      runners.delete(ports[0]!)
      await waitFor("the killed runner's shards to be held again", E + REFRESH + 30_000, () => {
        const current = holdings.current()
        return [...theirs].every((s) => (current.get(s) ?? []).length > 0) ? true : undefined
      }, 100)
      const takeover = Date.now() - killedAt
      report.push(`runner SIGKILLed: its ${theirs.size} shards held again after ${takeover} ms (E ${E} + refresh ${REFRESH})`)
      await timed("the fleet of 7 settled", RUNNERS - 1, 30_000)

      phase = "after"
      stop = true
      await load
      const doubles = holdings.doubles()
      console.log(`fleet: ${holdings.samples} samples; ${report.join("; ")}`)
      const phases = [...new Set(pings.map((p) => p.phase))]
      for (const p of phases) {
        const of = pings.filter((r) => r.phase === p)
        const failed = of.filter((r) => !r.ok)
        console.log(`fleet: ${p}: ${of.length} messages, ${failed.length} failed` +
          (failed.length > 0 ? ` (first: ${failed[0]!.error})` : ""))
      }
      // every message was answered, or failed with an error that says what happened
      for (const r of pings) if (!r.ok) expect(r.error ?? "").not.toBe("")
      for (const p of ["start", "rolling restart of the runners", "rolling restart of the store"]) {
        expect(pings.filter((r) => r.phase === p && r.ok).length, `messages answered during ${p}`).toBeGreaterThan(0)
      }
      expect(doubles, "no shard held by two runners at once").toEqual([])
      expect(takeover, "the killed runner's shards are held again within E + one refresh interval").toBeLessThanOrEqual(
        E + REFRESH
      )
      // the fleet answers every entity at the end
      const live = [...runners.values()]
      const replies = await Promise.all(Array.from({ length: 40 }, (_, i) => live[i % live.length]!.ping(`entity-${i}`, "end")))
      expect(replies.every((r) => r.message === "end")).toBe(true)
      rmSync(logDir, { recursive: true, force: true })
    } catch (error) {
      console.error(`fleet: runner logs in ${logDir}; ${report.join("; ")}\n${cluster.logs()}`)
      throw error
    } finally {
      stop = true
      await load
      await Promise.all([...runners.values()].map((r) => r.kill("SIGKILL")))
    }
  })

layer(clusterLayer(), { excludeTestServices: true, timeout: "60 seconds" })("a fleet of 8 real runners", (it) => {
  it.effect("share 300 shards through rolling restarts and a SIGKILL, never two holders of a shard", () =>
    Effect.gen(function*() {
      const cluster = yield* TestCluster
      const client = yield* clientOf(cluster)
      // the runners' layer makes the namespace's E their shardLockExpiration
      // (EnsureLockExpiration); a store without it is set here
      yield* client.setLockExpiration(E)
      yield* fleet(cluster)
    }), { timeout: 600_000 })
})
