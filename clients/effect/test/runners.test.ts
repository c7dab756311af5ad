/**
 * Two real Effect cluster runners (separate Node processes, socket transport,
 * this package's RunnerStorage layer) sharing one real 3-node runner-storage
 * cluster: shard split, entity messages, the store's leader SIGKILLed, a
 * runner SIGKILLed without unregistering.
 *
 * What "a runner holds a shard" means here: `Sharding.hasShardId` in that
 * runner (asked over IPC), cross-checked with the store's lock records
 * (`refresh(address, all shards)` returns the shards whose lock record is that
 * address's; it is only used for runners that are alive and refresh anyway).
 */
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Scope from "effect/Scope"
import assert from "node:assert/strict"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { after, before, describe, test } from "node:test"
import { make, type RunnerStorageClient } from "../src/index.js"
import { adminStatus, type Cluster, sleep, startCluster, waitFor } from "./support/cluster.js"
import { type RunnerProcess, startRunner } from "./support/runner.js"

/** The store's E and the runners' shardLockExpiration (they refresh every E/3). */
const E = Number(process.env["RS_TEST_LOCK_EXPIRATION_MS"] ?? 9000)
const SHARDS = 300
const allShards = Array.from({ length: SHARDS }, (_, i) => `default:${i + 1}`)

const run = <A, E>(effect: Effect.Effect<A, E>) => Effect.runPromise(effect)
const sorted = (xs: Iterable<string>) => [...xs].sort((a, b) => Number(a.split(":")[1]) - Number(b.split(":")[1]))
const intersection = (a: ReadonlyArray<string>, b: ReadonlyArray<string>) => {
  const set = new Set(b)
  return a.filter((x) => set.has(x))
}

describe("two Effect runners on one runner-storage cluster", () => {
  let cluster: Cluster
  let scope: Scope.Closeable
  let client: RunnerStorageClient
  let logDir: string
  let a: RunnerProcess
  let b: RunnerProcess
  let failed = false
  // entity id -> shard, learned from replies
  const entityShard = new Map<string, string>()

  const dumpLogs = () => {
    const parts = [cluster?.logs() ?? ""]
    for (const r of [a, b]) {
      if (r !== undefined) parts.push(`--- runner ${r.name} last lines ---\n${r.log().split("\n").slice(-60).join("\n")}`)
    }
    return parts.join("\n")
  }
  const guarded = (fn: (t: any) => Promise<void>) => async (t: any) => {
    try {
      await fn(t)
    } catch (error) {
      failed = true
      console.error(dumpLogs())
      throw error
    }
  }

  /** The store's lock records of a live runner. */
  const storeHeld = async (runner: RunnerProcess) =>
    sorted(await run(client.encoded.refresh(runner.address, allShards)))

  before(async () => {
    logDir = mkdtempSync(join(tmpdir(), "rs-effect-runners-"))
    cluster = await startCluster()
    scope = Scope.makeUnsafe()
    client = await run(Scope.provide(scope)(make({ endpoints: cluster.endpoints })))
    await run(client.setLockExpiration(E))
    const leader = await cluster.waitForLeader()
    assert.equal(Number((await adminStatus(leader.address)).lock_expiration_ms), E)
    ;[a, b] = await Promise.all(
      ["A", "B"].map((name) => startRunner({ name, endpoints: cluster.endpoints, lockExpirationMs: E, logDir }))
    ) as [RunnerProcess, RunnerProcess]
  })

  after(async () => {
    await Promise.all([a?.kill("SIGKILL"), b?.kill("SIGKILL")])
    if (scope !== undefined) await run(Scope.close(scope, Exit.void))
    if (cluster !== undefined) await cluster.stop()
    if (logDir === undefined) return
    if (!failed && process.env["RS_KEEP_TEST_DIRS"] === undefined) rmSync(logDir, { recursive: true, force: true })
    else console.error(`runner logs kept in ${logDir}`)
  })

  test(
    "the 300 shards are split between the runners, none held by both, and entity messages are answered",
    guarded(async (t) => {
      const started = Date.now()
      const split = await waitFor("the shards to be split between A and B", 60_000, async () => {
        const [sa, sb] = await Promise.all([a.shards(), b.shards()])
        if (sa.length === 0 || sb.length === 0) return undefined
        if (intersection(sa, sb).length > 0) return undefined
        if (sa.length + sb.length !== SHARDS) return undefined
        // the store's lock records agree with what the runners hold
        const [la, lb] = await Promise.all([storeHeld(a), storeHeld(b)])
        if (la.join() !== sorted(sa).join() || lb.join() !== sorted(sb).join()) return undefined
        return { sa: sorted(sa), sb: sorted(sb) }
      }, 250)
      t.diagnostic(`split after ${Date.now() - started} ms: A ${split.sa.length}, B ${split.sb.length}`)
      assert.deepEqual(intersection(split.sa, split.sb), [])
      assert.deepEqual(sorted([...split.sa, ...split.sb]), allShards)

      // both runners are in the store, healthy
      const runners = await run(client.encoded.getRunners)
      assert.deepEqual(
        runners.map(([json, healthy]) => [JSON.parse(json).address.port, healthy]).sort(),
        [[a.port, true], [b.port, true]].sort()
      )

      // entity messages through either runner reach the entity's owner
      const entityIds = Array.from({ length: 60 }, (_, i) => `entity-${i}`)
      const replies = await Promise.all(
        entityIds.map((id, i) => (i % 2 === 0 ? a : b).ping(id, `msg-${i}`))
      )
      const servedBy = { A: 0, B: 0 } as Record<string, number>
      replies.forEach((reply, i) => {
        assert.equal(reply.message, `msg-${i}`)
        const owner = reply.runner === "A" ? split.sa : split.sb
        assert.ok(owner.includes(reply.shard), `${entityIds[i]} (${reply.shard}) served by its owner ${reply.runner}`)
        servedBy[reply.runner] = (servedBy[reply.runner] ?? 0) + 1
        entityShard.set(entityIds[i]!, reply.shard)
      })
      assert.ok(servedBy["A"]! > 0 && servedBy["B"]! > 0, `both runners serve entities: ${JSON.stringify(servedBy)}`)

      // one entity instance, whichever runner the message is sent through
      assert.equal((await a.count("counter-1")).count, 1)
      assert.equal((await b.count("counter-1")).count, 2)
      assert.equal((await a.count("counter-1")).count, 3)
    })
  )

  test(
    "the store's leader is SIGKILLed: runners keep answering and keep every lock (no shard lost or doubled)",
    guarded(async (t) => {
      const base = { sa: sorted(await a.shards()), sb: sorted(await b.shards()) }
      assert.equal(base.sa.length + base.sb.length, SHARDS)
      const logStart = { A: a.log().length, B: b.log().length }

      let stop = false
      const pingResults: Array<{ ok: boolean; error?: string; ms: number }> = []
      const samples: Array<{ sa: Array<string>; sb: Array<string> }> = []
      const load = (async () => {
        let i = 0
        while (!stop) {
          const id = `entity-${i % 60}`
          const via = i % 2 === 0 ? a : b
          const t0 = Date.now()
          await via.ping(id, `load-${i}`, 15_000).then(
            () => pingResults.push({ ok: true, ms: Date.now() - t0 }),
            (error: Error) => pingResults.push({ ok: false, error: error.message, ms: Date.now() - t0 })
          )
          i++
          await sleep(50)
        }
      })()
      const sampler = (async () => {
        while (!stop) {
          const [sa, sb] = await Promise.all([a.shards(), b.shards()])
          samples.push({ sa: sorted(sa), sb: sorted(sb) })
          await sleep(200)
        }
      })()

      const refreshesBefore = { A: (await a.refreshes()).length, B: (await b.refreshes()).length }
      let killedAt = 0
      let electedAt = 0
      try {
        const leader = await cluster.waitForLeader()
        // Time the kill so that runner A's next lock refresh (Effect refreshes
        // every E/3 on a fixed schedule) is due ~300 ms after it, i.e. while
        // there is no leader. This sleep only places the fault.
        const interval = E / 3
        const lastStart = (await waitFor("runner A's first lock refresh", 10_000, async () => (await a.refreshes()).at(-1)))
          .start
        let killAt = lastStart + interval - 300
        while (killAt < Date.now() + 200) killAt += interval
        await sleep(killAt - Date.now())
        killedAt = Date.now()
        await cluster.kill(leader.id, "SIGKILL")
        const newLeader = await cluster.waitForLeader(15_000, leader.id)
        electedAt = Date.now()
        t.diagnostic(`node ${leader.id} killed; node ${newLeader.id} leader after ${electedAt - killedAt} ms`)
        // Keep working past E after the kill: had a refresh failed, the runner
        // would have dropped its shards, or the locks would have expired.
        await waitFor("E to pass since the kill", E + 5000, () => (Date.now() - killedAt >= E + 1000 ? true : undefined))
      } finally {
        stop = true
        await Promise.all([load, sampler])
      }

      const failures = pingResults.filter((r) => !r.ok)
      t.diagnostic(
        `${pingResults.length} pings, ${failures.length} failed, slowest ${Math.max(...pingResults.map((r) => r.ms))} ms; ` +
          `${samples.length} shard samples`
      )
      assert.ok(pingResults.length > 10, "the load ran")
      assert.deepEqual(failures, [], "every entity message was answered")
      for (const sample of samples) {
        assert.deepEqual(intersection(sample.sa, sample.sb), [], "no shard held by both runners")
        assert.deepEqual(sample.sa, base.sa, "runner A kept all its shards")
        assert.deepEqual(sample.sb, base.sb, "runner B kept all its shards")
      }
      // every lock refresh since before the kill succeeded and kept every shard
      const refreshed = {
        A: (await a.refreshes()).slice(refreshesBefore.A),
        B: (await b.refreshes()).slice(refreshesBefore.B)
      }
      for (const [name, records] of Object.entries(refreshed)) {
        assert.ok(records.length >= 3, `runner ${name} refreshed its locks (${records.length} times)`)
        for (const r of records) {
          assert.ok(r.ok, `runner ${name}: refresh at +${r.start - killedAt} ms failed: ${r.error}`)
          assert.equal(r.returned, r.requested, `runner ${name}: refresh at +${r.start - killedAt} ms lost shards`)
          assert.ok(r.end - r.start < E / 3, `runner ${name}: refresh took ${r.end - r.start} ms (Effect allows E/3)`)
        }
      }
      const duringElection = [...refreshed.A, ...refreshed.B].filter((r) => r.start >= killedAt && r.start < electedAt)
      t.diagnostic(
        `refreshes issued while there was no leader: ${
          duringElection.map((r) => `+${r.start - killedAt} ms took ${r.end - r.start} ms`).join(", ") || "none"
        }`
      )
      // (the kill is timed ~300 ms before a refresh; an election is slower than that)
      if (electedAt - killedAt > 700) {
        assert.ok(duringElection.length > 0, "a lock refresh was issued during the election (and succeeded)")
      }
      for (const [name, runner] of [["A", a], ["B", b]] as const) {
        const newLog = runner.log().slice(logStart[name])
        assert.doesNotMatch(newLog, /Shard lock storage is unhealthy/, `runner ${name}'s lock refreshes kept succeeding`)
      }
      // the store still has every lock where the runners think it is
      assert.deepEqual(await storeHeld(a), base.sa)
      assert.deepEqual(await storeHeld(b), base.sb)
      // and it still answers entity messages
      assert.equal((await a.ping("entity-1", "after")).message, "after")
    })
  )

  test(
    "a runner SIGKILLed without unregistering: after E the other runner acquires its shards",
    guarded(async (t) => {
      const base = { sa: sorted(await a.shards()), sb: sorted(await b.shards()) }
      assert.ok(base.sb.length > 0)
      const killedAt = Date.now()
      await b.kill("SIGKILL")
      let firstTakeover: number | undefined
      const done = await waitFor("runner A to hold all 300 shards", E + 45_000, async () => {
        const sa = await a.shards()
        if (firstTakeover === undefined && intersection(sa, base.sb).length > 0) firstTakeover = Date.now()
        return sa.length === SHARDS ? sorted(sa) : undefined
      }, 100)
      const tookOver = Date.now() - killedAt
      t.diagnostic(`A holds all shards ${tookOver} ms after B was killed (first of B's at ${firstTakeover! - killedAt} ms)`)
      assert.deepEqual(done, allShards)
      // B refreshed at most E/3 before it died, so its locks were held until
      // at least 2E/3 after the kill: A must not have had them earlier.
      assert.ok(
        firstTakeover! - killedAt >= (2 * E) / 3 - 300,
        `A took B's shards ${firstTakeover! - killedAt} ms after the kill, before B's locks could expire`
      )
      // the store agrees, and B is no longer a live runner
      assert.deepEqual(await storeHeld(a), allShards)
      await waitFor("B to drop out of getRunners", 5000, async () => {
        const runners = await run(client.encoded.getRunners)
        const ports = runners.map(([json]) => JSON.parse(json).address.port)
        return ports.length === 1 && ports[0] === a.port ? true : undefined
      })
      // entities that lived on B are answered by A now
      const formerlyOnB = [...entityShard].filter(([, shard]) => base.sb.includes(shard)).map(([id]) => id)
      assert.ok(formerlyOnB.length > 0)
      for (const id of formerlyOnB) {
        const reply = await a.ping(id, "moved")
        assert.equal(reply.runner, "A")
        assert.equal(reply.message, "moved")
      }
    })
  )
})
