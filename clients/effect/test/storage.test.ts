/**
 * Effect's RunnerStorage expectations through this package's layer, against a
 * real 3-node runner-storage cluster started from the built binary.
 */
import * as grpc from "@grpc/grpc-js"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Scope from "effect/Scope"
import { PersistenceError } from "effect/cluster/ClusterError"
import * as Runner from "effect/cluster/Runner"
import * as RunnerAddress from "effect/cluster/RunnerAddress"
import * as RunnerStorage from "effect/cluster/RunnerStorage"
import * as ShardId from "effect/cluster/ShardId"
import assert from "node:assert/strict"
import { after, before, describe, test } from "node:test"
import { layer, make, type RunnerStorageClient, RunnerStorageCallError } from "../src/index.js"
import { loadProto } from "../src/proto.js"
import { adminStatus, type Cluster, startCluster, waitFor } from "./support/cluster.js"

const run = <A, E>(effect: Effect.Effect<A, E>) => Effect.runPromise(effect)

const runner = (port: number, groups: Array<string> = ["default"], weight = 1) =>
  Runner.make({ address: RunnerAddress.make("127.0.0.1", port), groups, weight })

const shard = (id: number) => ShardId.make("default", id)
const ids = (shards: ReadonlyArray<ShardId.ShardId>) => shards.map((s) => s.toString())

const failureOf = (exit: Exit.Exit<unknown, unknown>): RunnerStorageCallError => {
  assert.ok(Exit.isFailure(exit), "expected a failure")
  const error = Exit.findErrorOption(exit)
  assert.equal(error._tag, "Some")
  const value = (error as { value: unknown }).value
  assert.ok(value instanceof PersistenceError, `expected PersistenceError, got ${String(value)}`)
  assert.ok(value.cause instanceof RunnerStorageCallError)
  return value.cause
}

describe("RunnerStorage through the layer, on a real 3-node cluster", () => {
  let cluster: Cluster
  let scope: Scope.Closeable
  let storage: RunnerStorage.RunnerStorage["Service"]
  let client: RunnerStorageClient

  const r1 = runner(40001)
  const r2 = runner(40002, ["default", "other"], 2)

  before(async () => {
    cluster = await startCluster()
    scope = Scope.makeUnsafe()
    const context = await run(Layer.buildWithScope(layer({ endpoints: cluster.endpoints }), scope))
    storage = Context.get(context, RunnerStorage.RunnerStorage)
    client = await run(Scope.provide(scope)(make({ endpoints: cluster.endpoints })))
  })

  after(async () => {
    if (scope !== undefined) await run(Scope.close(scope, Exit.void))
    if (cluster !== undefined) await cluster.stop()
  })

  test("register twice gives the same machine id (1); the next runner gets 2", async () => {
    assert.equal(await run(storage.register(r1, true)), 1)
    assert.equal(await run(storage.register(r1, true)), 1)
    assert.equal(await run(storage.register(r2, true)), 2)
  })

  test("getRunners: live runners in machine id order, byte-exact JSON", async () => {
    const runners = await run(storage.getRunners)
    assert.equal(runners.length, 2)
    assert.deepEqual(runners.map(([r, healthy]) => [Runner.Runner.encodeSync(r), healthy]), [
      [Runner.Runner.encodeSync(r1), true],
      [Runner.Runner.encodeSync(r2), true]
    ])
    const raw = await run(client.encoded.getRunners)
    assert.deepEqual(raw, [
      ['{"address":{"host":"127.0.0.1","port":40001},"groups":["default"],"weight":1}', true],
      ['{"address":{"host":"127.0.0.1","port":40002},"groups":["default","other"],"weight":2}', true]
    ])
  })

  test("setRunnerHealth updates a runner; an unknown address is a no-op", async () => {
    await run(storage.setRunnerHealth(r2.address, false))
    let runners = await run(storage.getRunners)
    assert.deepEqual(runners.map(([r, h]) => [r.address.port, h]), [[40001, true], [40002, false]])
    await run(storage.setRunnerHealth(RunnerAddress.make("127.0.0.1", 49999), false))
    await run(storage.setRunnerHealth(r2.address, true))
    runners = await run(storage.getRunners)
    assert.deepEqual(runners.map(([r, h]) => [r.address.port, h]), [[40001, true], [40002, true]])
  })

  test("acquire / refresh / release / releaseAll of shards", async () => {
    assert.deepEqual(ids(await run(storage.acquire(r1.address, [shard(1), shard(2), shard(3)]))), [
      "default:1",
      "default:2",
      "default:3"
    ])
    // held by r1: r2 only gets the free one
    assert.deepEqual(ids(await run(storage.acquire(r2.address, [shard(2), shard(3), shard(4)]))), ["default:4"])
    // acquiring again what one holds keeps it
    assert.deepEqual(ids(await run(storage.acquire(r1.address, [shard(3), shard(1)]))), ["default:3", "default:1"])
    assert.deepEqual(
      ids(await run(storage.refresh(r1.address, [shard(1), shard(2), shard(3), shard(4)]))),
      ["default:1", "default:2", "default:3"]
    )
    assert.deepEqual(ids(await run(storage.refresh(r1.address, []))), [])
    await run(storage.release(r1.address, shard(2)))
    // releasing a shard one does not hold changes nothing
    await run(storage.release(r1.address, shard(4)))
    assert.deepEqual(ids(await run(storage.acquire(r2.address, [shard(2)]))), ["default:2"])
    assert.deepEqual(ids(await run(storage.refresh(r2.address, [shard(4), shard(2)]))), ["default:4", "default:2"])
    await run(storage.releaseAll(r1.address))
    assert.deepEqual(ids(await run(storage.refresh(r1.address, [shard(1), shard(3)]))), [])
    assert.deepEqual(ids(await run(storage.acquire(r2.address, [shard(1), shard(3)]))), ["default:1", "default:3"])
    // empty acquire: no call, no shards (Effect's makeEncoded)
    assert.deepEqual(await run(storage.acquire(r1.address, [])), [])
    await run(storage.releaseAll(r2.address))
    assert.deepEqual(
      ids(await run(storage.acquire(r1.address, [shard(1), shard(2), shard(3), shard(4)]))),
      ["default:1", "default:2", "default:3", "default:4"]
    )
    await run(storage.releaseAll(r1.address))
  })

  test("unregister removes the runner; re-registering reuses the smallest free machine id", async () => {
    await run(storage.unregister(r1.address))
    let runners = await run(storage.getRunners)
    assert.deepEqual(runners.map(([r]) => r.address.port), [40002])
    assert.equal(await run(storage.register(r1, true)), 1)
    runners = await run(storage.getRunners)
    assert.deepEqual(runners.map(([r]) => r.address.port), [40001, 40002])
    // unregistering an unknown address is fine
    await run(storage.unregister(RunnerAddress.make("127.0.0.1", 49998)))
  })

  test("malformed input is a PersistenceError (INVALID_ARGUMENT), not retried", async () => {
    const exit = await run(Effect.exit(client.encoded.register("no-port", "{}", true)))
    const cause = failureOf(exit)
    assert.equal(cause.codeName, "INVALID_ARGUMENT")
    assert.equal(cause.attempts, 1)
    assert.ok(cause.details.length > 0, "the status names the problem")
    const exit2 = await run(Effect.exit(client.encoded.acquire("127.0.0.1:1", ["not-a-shard"])))
    assert.equal(failureOf(exit2).codeName, "INVALID_ARGUMENT")
  })

  test("a write retried with the same RequestId is applied once (the server side of retries)", async () => {
    const proto = loadProto()
    const leader = await cluster.waitForLeader()
    const raw = new proto.RunnerStorage(leader.address, grpc.credentials.createInsecure())
    const call = (method: "Acquire" | "Release", request: object) =>
      new Promise<any>((resolve, reject) =>
        raw[method](request, new grpc.Metadata(), { deadline: new Date(Date.now() + 5000) }, (e, r) =>
          e ? reject(e) : resolve(r)
        )
      )
    try {
      const a = "127.0.0.1:41001"
      const b = "127.0.0.1:41002"
      const rid = (sequence: number) => ({ client_id: "storage-test-dedupe", sequence })
      assert.deepEqual((await call("Acquire", { address: a, shard_ids: ["default:50"], request_id: rid(1) })).shard_ids, [
        "default:50"
      ])
      await call("Release", { address: a, shard_id: "default:50", request_id: rid(2) })
      // the retry of sequence 1 gets its remembered answer and is not applied again
      assert.deepEqual((await call("Acquire", { address: a, shard_ids: ["default:50"], request_id: rid(1) })).shard_ids, [
        "default:50"
      ])
      // so the shard is free for another runner
      assert.deepEqual((await call("Acquire", { address: b, shard_ids: ["default:50"] })).shard_ids, ["default:50"])
    } finally {
      raw.close()
    }
  })

  test("locks expire after E (Admin.SetLockExpiration)", async () => {
    await run(client.setLockExpiration("1500 millis"))
    const statuses = await Promise.all(cluster.endpoints.map((e) => adminStatus(e)))
    const leader = statuses.find((s) => s.role === "leader")
    assert.equal(Number(leader?.lock_expiration_ms), 1500)
    const a = RunnerAddress.make("127.0.0.1", 42001)
    const b = RunnerAddress.make("127.0.0.1", 42002)
    assert.deepEqual(ids(await run(storage.acquire(a, [shard(60)]))), ["default:60"])
    const acquiredAt = Date.now()
    assert.deepEqual(ids(await run(storage.acquire(b, [shard(60)]))), [])
    await waitFor("the lock on default:60 to expire", 10_000, async () => {
      const got = ids(await run(storage.acquire(b, [shard(60)])))
      return got.length === 1 ? got : undefined
    }, 100)
    assert.ok(Date.now() - acquiredAt >= 1400, "not before E")
    // r1 and r2 stopped heartbeating too: after E they are no longer live
    await waitFor("runners to stop being live", 10_000, async () => {
      const runners = await run(storage.getRunners)
      return runners.length === 0 ? true : undefined
    })
    await run(client.setLockExpiration("35 seconds"))
  })

  test("the leader is SIGKILLed: calls through the layer succeed on the new leader", async (t) => {
    const leader = await cluster.waitForLeader()
    await run(storage.register(r1, true))
    await cluster.kill(leader.id, "SIGKILL")
    const started = Date.now()
    // the default deadline (5 s) covers an election
    const machineId = await run(storage.register(r1, true))
    assert.equal(machineId, 1)
    const after = Date.now() - started
    const newLeader = await cluster.waitForLeader(15_000, leader.id)
    assert.notEqual(newLeader.id, leader.id)
    assert.deepEqual(ids(await run(storage.acquire(r1.address, [shard(70)]))), ["default:70"])
    await run(client.encoded.getRunners)
    // the client moved off the dead node
    assert.notEqual(client.currentEndpoint(), leader.address)
    t.diagnostic(`write during failover took ${after} ms`)
  })
})
