/**
 * Effect's RunnerStorage expectations through this package's layer, against
 * a real 3-node runner-storage cluster started from the built binary.
 */
import { describe, expect, layer } from "@effect/vitest"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Scope from "effect/Scope"
import * as Runner from "effect/cluster/Runner"
import * as RunnerAddress from "effect/cluster/RunnerAddress"
import * as RunnerStorage from "effect/cluster/RunnerStorage"
import * as ShardId from "effect/cluster/ShardId"
import { layer as storageLayer } from "../src/index.js"
import { openConnections } from "../src/transport.js"
import { adminStatus, waitFor } from "./support/cluster.js"
import { callErrorOf } from "./support/exits.js"
import { clientOf, clusterLayer, reach, TestCluster } from "./support/layers.js"
import { referenceCall } from "./support/reference.js"

const runner = (port: number, groups: Array<string> = ["default"], weight = 1) =>
  Runner.make({ address: RunnerAddress.make("127.0.0.1", port), groups, weight })
const shard = (id: number) => ShardId.make("default", id)
const ids = (shards: ReadonlyArray<ShardId.ShardId>) => shards.map((s) => s.toString())

/** The typed storage of a fresh layer instance, built in the test's scope. */
const storageOf = Effect.gen(function*() {
  const cluster = yield* TestCluster
  const context = yield* Layer.build(storageLayer(reach(cluster)))
  return Context.get(context, RunnerStorage.RunnerStorage)
})

layer(clusterLayer(), { excludeTestServices: true, timeout: "60 seconds" })("RunnerStorage on a real 3-node cluster", (it) => {
  const r1 = runner(40001)
  const r2 = runner(40002, ["default", "other"], 2)

  it.effect("register twice gives the same machine id (1); the next runner gets 2", () =>
    Effect.gen(function*() {
      const storage = yield* storageOf
      expect(yield* storage.register(r1, true)).toBe(1)
      expect(yield* storage.register(r1, true)).toBe(1)
      expect(yield* storage.register(r2, true)).toBe(2)
    }))

  it.effect("getRunners: live runners in machine id order, byte-exact JSON, as Effect's makeEncoded decodes them", () =>
    Effect.gen(function*() {
      const storage = yield* storageOf
      const client = yield* clientOf(yield* TestCluster)
      const runners = yield* storage.getRunners
      expect(runners.map(([r, healthy]) => [Runner.Runner.encodeSync(r), healthy])).toEqual([
        [Runner.Runner.encodeSync(r1), true],
        [Runner.Runner.encodeSync(r2), true]
      ])
      expect(yield* client.encoded.getRunners).toEqual([
        ['{"address":{"host":"127.0.0.1","port":40001},"groups":["default"],"weight":1}', true],
        ['{"address":{"host":"127.0.0.1","port":40002},"groups":["default","other"],"weight":2}', true]
      ])
      // a runner whose JSON is not an Effect Runner (no groups) is dropped by both adapters alike
      yield* client.encoded.register("127.0.0.1:40009", '{"address":{"host":"127.0.0.1","port":40009}}', true)
      const effects = RunnerStorage.makeEncoded(client.encoded)
      const ours = yield* storage.getRunners
      expect(ours).toEqual(yield* effects.getRunners)
      expect(ours.length).toBe(2)
      yield* client.encoded.unregister("127.0.0.1:40009")
    }))

  it.effect("setRunnerHealth updates a runner; an unknown address is a no-op", () =>
    Effect.gen(function*() {
      const storage = yield* storageOf
      yield* storage.setRunnerHealth(r2.address, false)
      const ports = (rs: ReadonlyArray<readonly [Runner.Runner, boolean]>) => rs.map(([r, h]) => [r.address.port, h])
      expect(ports(yield* storage.getRunners)).toEqual([[40001, true], [40002, false]])
      yield* storage.setRunnerHealth(RunnerAddress.make("127.0.0.1", 49999), false)
      yield* storage.setRunnerHealth(r2.address, true)
      expect(ports(yield* storage.getRunners)).toEqual([[40001, true], [40002, true]])
    }))

  it.effect("acquire / refresh / release / releaseAll of shards", () =>
    Effect.gen(function*() {
      const storage = yield* storageOf
      expect(ids(yield* storage.acquire(r1.address, [shard(1), shard(2), shard(3)]))).toEqual([
        "default:1",
        "default:2",
        "default:3"
      ])
      // held by r1: r2 only gets the free one
      expect(ids(yield* storage.acquire(r2.address, [shard(2), shard(3), shard(4)]))).toEqual(["default:4"])
      expect(ids(yield* storage.acquire(r1.address, [shard(3), shard(1)]))).toEqual(["default:3", "default:1"])
      expect(ids(yield* storage.refresh(r1.address, [shard(1), shard(2), shard(3), shard(4)]))).toEqual([
        "default:1",
        "default:2",
        "default:3"
      ])
      expect(yield* storage.refresh(r1.address, [])).toEqual([])
      yield* storage.release(r1.address, shard(2))
      yield* storage.release(r1.address, shard(4)) // not r1's: nothing changes
      expect(ids(yield* storage.acquire(r2.address, [shard(2)]))).toEqual(["default:2"])
      expect(ids(yield* storage.refresh(r2.address, [shard(4), shard(2)]))).toEqual(["default:4", "default:2"])
      yield* storage.releaseAll(r1.address)
      expect(yield* storage.refresh(r1.address, [shard(1), shard(3)])).toEqual([])
      expect(ids(yield* storage.acquire(r2.address, [shard(1), shard(3)]))).toEqual(["default:1", "default:3"])
      expect(yield* storage.acquire(r1.address, [])).toEqual([]) // no call (Effect's makeEncoded)
      yield* storage.releaseAll(r2.address)
      // the shard ids answered are Effect's ShardId values
      const got = yield* storage.acquire(r1.address, [shard(1), shard(2)])
      expect(got.map((s) => ShardId.isShardId(s))).toEqual([true, true])
      yield* storage.releaseAll(r1.address)
    }))

  it.effect("unregister removes the runner; re-registering reuses the smallest free machine id", () =>
    Effect.gen(function*() {
      const storage = yield* storageOf
      yield* storage.unregister(r1.address)
      expect((yield* storage.getRunners).map(([r]) => r.address.port)).toEqual([40002])
      expect(yield* storage.register(r1, true)).toBe(1)
      expect((yield* storage.getRunners).map(([r]) => r.address.port)).toEqual([40001, 40002])
      yield* storage.unregister(RunnerAddress.make("127.0.0.1", 49998))
    }))

  it.effect("malformed input: a PersistenceError whose cause is a tagged RunnerStorageCallError, not retried", () =>
    Effect.gen(function*() {
      const client = yield* clientOf(yield* TestCluster)
      const cause = callErrorOf(yield* Effect.exit(client.encoded.register("no-port", "{}", true)))
      expect(cause._tag).toBe("RunnerStorageCallError")
      expect(cause.codeName).toBe("INVALID_ARGUMENT")
      expect(cause.call).toBe("Register")
      expect(cause.method).toBe("runner_storage.v1.RunnerStorage/Register")
      expect(cause.attempts).toBe(1)
      expect(cause.endpoint).toMatch(/^127\.0\.0\.1:\d+$/)
      expect(cause.details).toMatch(/address/)
      expect(cause.message).toMatch(/Register at 127\.0\.0\.1:\d+ failed after 1 attempt\(s\): INVALID_ARGUMENT/)
      const again = callErrorOf(yield* Effect.exit(client.encoded.acquire("127.0.0.1:1", ["not-a-shard"])))
      expect(again.codeName).toBe("INVALID_ARGUMENT")
    }))

  it.effect("a write retried with the same RequestId is applied once (the server side of retries)", () =>
    Effect.gen(function*() {
      const cluster = yield* TestCluster
      const leader = yield* Effect.promise(() => cluster.waitForLeader())
      const call = (method: "Acquire" | "Release", request: object) =>
        Effect.promise(() => referenceCall(leader.address, "RunnerStorage", method, request))
      const rid = (sequence: number) => ({ client_id: "storage-test-dedupe", sequence })
      const a = "127.0.0.1:41001"
      expect((yield* call("Acquire", { address: a, shard_ids: ["default:50"], request_id: rid(1) })).shard_ids)
        .toEqual(["default:50"])
      yield* call("Release", { address: a, shard_id: "default:50", request_id: rid(2) })
      // the retry of sequence 1 gets its remembered answer and is not applied again...
      expect((yield* call("Acquire", { address: a, shard_ids: ["default:50"], request_id: rid(1) })).shard_ids)
        .toEqual(["default:50"])
      // ...so the shard is free for another runner
      expect((yield* call("Acquire", { address: "127.0.0.1:41002", shard_ids: ["default:50"] })).shard_ids)
        .toEqual(["default:50"])
    }))

  it.effect("every layer instance of a process shares one HTTP/2 session per endpoint; the last scope closes them", () =>
    Effect.gen(function*() {
      const cluster = yield* TestCluster
      const before = openConnections()
      const scopes = [Scope.makeUnsafe(), Scope.makeUnsafe(), Scope.makeUnsafe()]
      const storages = yield* Effect.forEach(scopes, (scope) =>
        Effect.map(
          Scope.provide(scope)(Layer.build(storageLayer(reach(cluster)))),
          (context) => Context.get(context, RunnerStorage.RunnerStorage)
        ))
      for (const storage of storages) yield* storage.getRunners
      expect(openConnections()).toBe(before + cluster.endpoints.length)
      yield* Scope.close(scopes[0]!, Exit.void)
      yield* storages[1]!.getRunners
      yield* Scope.close(scopes[1]!, Exit.void)
      yield* Scope.close(scopes[2]!, Exit.void)
      expect(openConnections()).toBe(before)
      // a call made after its scope closed fails, and says why
      const cause = callErrorOf(yield* Effect.exit(storages[2]!.getRunners))
      expect(cause.codeName).toBe("CANCELLED")
      expect(cause.details).toMatch(/closed/)
    }))

  it.effect("a client given only a follower moves to the leader it names", () =>
    Effect.gen(function*() {
      const cluster = yield* TestCluster
      const leader = yield* Effect.promise(() => cluster.waitForLeader())
      const follower = cluster.nodes.find((n) => n.id !== leader.id)!
      const client = yield* clientOf(cluster, { endpoints: [follower.address] })
      yield* client.encoded.getRunners
      expect(client.currentEndpoint()).toBe(leader.address)
      expect(client.endpoints()).toEqual([follower.address, leader.address])
    }))

  it.effect("locks expire after E (Admin.SetLockExpiration)", () =>
    Effect.gen(function*() {
      const cluster = yield* TestCluster
      const client = yield* clientOf(cluster)
      const storage = client.storage
      yield* client.setLockExpiration("1500 millis")
      const leader = yield* Effect.promise(() => cluster.waitForLeader())
      expect(Number((yield* Effect.promise(() => adminStatus(leader.address))).lock_expiration_ms)).toBe(1500)
      const a = RunnerAddress.make("127.0.0.1", 42001)
      const b = RunnerAddress.make("127.0.0.1", 42002)
      expect(ids(yield* storage.acquire(a, [shard(60)]))).toEqual(["default:60"])
      const acquiredAt = Date.now()
      expect(yield* storage.acquire(b, [shard(60)])).toEqual([])
      yield* Effect.promise(() =>
        waitFor("the lock on default:60 to expire", 10_000, async () => {
          const got = await Effect.runPromise(storage.acquire(b, [shard(60)]))
          return got.length === 1 ? got : undefined
        })
      )
      expect(Date.now() - acquiredAt).toBeGreaterThanOrEqual(1400)
      // r1 and r2 stopped heartbeating too: after E they are no longer live
      yield* Effect.promise(() =>
        waitFor("runners to stop being live", 10_000, async () =>
          (await Effect.runPromise(storage.getRunners)).length === 0 ? true : undefined)
      )
      yield* client.setLockExpiration("35 seconds")
    }))

  it.effect("the leader is SIGKILLed: calls through the layer succeed on the new leader", () =>
    Effect.gen(function*() {
      const cluster = yield* TestCluster
      const storage = yield* storageOf
      const client = yield* clientOf(cluster)
      const leader = yield* Effect.promise(() => cluster.waitForLeader())
      yield* storage.register(r1, true)
      yield* client.encoded.getRunners
      yield* Effect.promise(() => cluster.kill(leader.id, "SIGKILL"))
      // the default deadline (5 s) covers an election
      expect(yield* storage.register(r1, true)).toBe(1)
      const newLeader = yield* Effect.promise(() => cluster.waitForLeader(15_000, leader.id))
      expect(newLeader.id).not.toBe(leader.id)
      expect(ids(yield* storage.acquire(r1.address, [shard(70)]))).toEqual(["default:70"])
      yield* client.encoded.getRunners
      expect(client.currentEndpoint()).not.toBe(leader.address)
    }))
})

describe("options", () => {
  // validated before any connection is made: no cluster needed
  layer(Layer.empty, { excludeTestServices: true })((it) => {
    it.effect("a bad endpoint, namespace or token is a named error", () =>
      Effect.gen(function*() {
        const fails = (options: Parameters<typeof storageLayer>[0]) =>
          Effect.flip(Effect.scoped(Layer.build(storageLayer(options))))
        const endpoint = yield* fails({ endpoints: ["no-port"] })
        expect(endpoint._tag).toBe("InvalidOptionError")
        expect(endpoint.message).toMatch(/endpoints: "no-port" is not "host:port"/)
        const empty = yield* fails({ endpoints: ["127.0.0.1:1"], namespace: "" })
        expect(empty._tag).toBe("InvalidNamespaceError")
        const long = yield* fails({ endpoints: ["127.0.0.1:1"], namespace: "n".repeat(256) })
        expect(long._tag).toBe("InvalidNamespaceError")
        expect(long.message).toMatch(/256 bytes; at most 255/)
        const token = yield* fails({ endpoints: ["127.0.0.1:1"], token: "two words" })
        expect(token._tag).toBe("InvalidOptionError")
        const ca = yield* fails({ endpoints: ["127.0.0.1:1"], tls: { ca: "/nonexistent/ca.pem" } })
        expect(ca.message).toMatch(/tls\.ca: cannot read \/nonexistent\/ca\.pem/)
      }))
  })
})
