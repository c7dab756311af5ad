/**
 * Namespaces on one real store: fully isolated (runners, machine ids,
 * locks); the E rule (set on first use from ShardingConfig, a mismatch
 * refused naming both values, taken over on request, a refresh interval
 * above E / 2 refused); and two Effect clusters of real runners in two
 * namespaces at once, never seeing each other's runners or shards.
 */
import { expect, layer } from "@effect/vitest"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Runner from "effect/cluster/Runner"
import * as RunnerAddress from "effect/cluster/RunnerAddress"
import * as RunnerStorage from "effect/cluster/RunnerStorage"
import * as ShardId from "effect/cluster/ShardId"
import * as ShardingConfig from "effect/cluster/ShardingConfig"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { layer as storageLayer, type Options } from "../src/index.js"
import { type Cluster, waitFor } from "./support/cluster.js"
import { clientOf, clusterLayer, reach, TestCluster } from "./support/layers.js"
import { type RunnerProcess, startRunner } from "./support/runner.js"

const address = RunnerAddress.make("127.0.0.1", 43001)
const runner = Runner.make({ address, groups: ["default"], weight: 1 })
const shard = (id: number) => ShardId.make("default", id)

const storageIn = (cluster: Cluster, options: Partial<Options>, sharding?: Partial<ShardingConfig.ShardingConfig["Service"]>) =>
  Effect.map(
    Layer.build(
      sharding === undefined
        ? storageLayer(reach(cluster, options))
        : storageLayer(reach(cluster, options)).pipe(Layer.provide(ShardingConfig.layer(sharding)))
    ),
    (context) => Context.get(context, RunnerStorage.RunnerStorage)
  )

layer(clusterLayer(), { excludeTestServices: true, timeout: "60 seconds" })("namespaces on one store", (it) => {
  it.effect("the same address in two namespaces is two runners, each with machine id 1 and its own locks", () =>
    Effect.gen(function*() {
      const cluster = yield* TestCluster
      const alpha = yield* storageIn(cluster, { namespace: "alpha" })
      const beta = yield* storageIn(cluster, { namespace: "beta" })
      expect(yield* alpha.register(runner, true)).toBe(1)
      expect(yield* beta.register(runner, true)).toBe(1)
      const other = Runner.make({ address: RunnerAddress.make("127.0.0.1", 43002), groups: ["default"], weight: 1 })
      expect(yield* beta.register(other, true)).toBe(2)
      expect((yield* alpha.getRunners).map(([r]) => r.address.port)).toEqual([43001])
      expect((yield* beta.getRunners).map(([r]) => r.address.port)).toEqual([43001, 43002])
      // one shard, held at once in both namespaces, by different runners
      expect((yield* alpha.acquire(address, [shard(1)])).length).toBe(1)
      expect((yield* beta.acquire(other.address, [shard(1)])).length).toBe(1)
      expect(yield* beta.acquire(address, [shard(1)])).toEqual([])
      yield* alpha.releaseAll(address)
      expect((yield* beta.refresh(other.address, [shard(1)])).length).toBe(1)
      const admin = yield* clientOf(cluster)
      const names = (yield* admin.listNamespaces).map((n) => n.namespace)
      expect(names).toEqual(expect.arrayContaining(["alpha", "beta"]))
      // the default namespace saw none of it
      expect((yield* admin.encoded.getRunners).length).toBe(0)
    }))

  it.effect("E rule: the first runner's shardLockExpiration becomes the namespace's E", () =>
    Effect.gen(function*() {
      const cluster = yield* TestCluster
      yield* storageIn(cluster, { namespace: "e-first" }, { shardLockExpiration: "12 seconds", shardLockRefreshInterval: "4 seconds" })
      const admin = yield* clientOf(cluster)
      expect((yield* admin.listNamespaces).find((n) => n.namespace === "e-first")).toMatchObject({
        lockExpirationMs: 12_000,
        lockExpirationSet: true
      })
      // a runner with the same E joins
      yield* storageIn(cluster, { namespace: "e-first" }, { shardLockExpiration: "12 seconds", shardLockRefreshInterval: "6 seconds" })
    }))

  it.effect("E rule: a runner with another E is refused, naming both; takeOverLockExpiration replaces it", () =>
    Effect.gen(function*() {
      const cluster = yield* TestCluster
      const sharding = { shardLockExpiration: "12 seconds", shardLockRefreshInterval: "4 seconds" } as const
      yield* storageIn(cluster, { namespace: "e-mismatch" }, sharding)
      const error = yield* Effect.flip(
        storageIn(cluster, { namespace: "e-mismatch" }, { ...sharding, shardLockExpiration: "20 seconds" })
      )
      expect(error._tag).toBe("LockExpirationMismatchError")
      expect(error.message).toMatch(/runs with a lock expiration of 12000 ms/)
      expect(error.message).toMatch(/shardLockExpiration is 20000 ms/)
      yield* storageIn(cluster, { namespace: "e-mismatch", takeOverLockExpiration: true }, {
        ...sharding,
        shardLockExpiration: "20 seconds"
      })
      const admin = yield* clientOf(cluster)
      expect((yield* admin.listNamespaces).find((n) => n.namespace === "e-mismatch")?.lockExpirationMs).toBe(20_000)
    }))

  it.effect("E rule: a refresh interval above E / 2 is refused, saying why", () =>
    Effect.gen(function*() {
      const cluster = yield* TestCluster
      const error = yield* Effect.flip(
        storageIn(cluster, { namespace: "e-refresh" }, { shardLockExpiration: "10 seconds", shardLockRefreshInterval: "6 seconds" })
      )
      expect(error._tag).toBe("InvalidShardingConfigError")
      expect(error.message).toMatch(/6000 ms.*10000 ms.*at most half/)
      // nothing was set in the store
      const admin = yield* clientOf(cluster)
      expect((yield* admin.listNamespaces).find((n) => n.namespace === "e-refresh")?.lockExpirationSet ?? false).toBe(false)
    }))

  it.effect("two Effect clusters in two namespaces at once never see each other's runners or shards", () =>
    Effect.gen(function*() {
      const cluster = yield* TestCluster
      const E = 9000
      const logDir = mkdtempSync(join(tmpdir(), "rs-effect-namespaces-"))
      const runners: Array<RunnerProcess & { namespace: string }> = []
      yield* Effect.addFinalizer(() =>
        Effect.promise(async () => {
          await Promise.all(runners.map((r) => r.kill("SIGKILL")))
          rmSync(logDir, { recursive: true, force: true })
        })
      )
      yield* Effect.promise(async () => {
        const started = await Promise.all(
          ["blue", "blue", "green", "green"].map((namespace, i) =>
            startRunner({ name: `${namespace}-${i}`, namespace, endpoints: cluster.endpoints, lockExpirationMs: E, logDir })
              .then((r) => Object.assign(r, { namespace }))
          )
        )
        runners.push(...started)
      })
      const of = (namespace: string) => runners.filter((r) => r.namespace === namespace)
      // each cluster splits all 300 shards between its own two runners
      const split = yield* Effect.promise(() =>
        waitFor("each cluster to hold its 300 shards", 90_000, async () => {
          const held = await Promise.all(runners.map((r) => r.shards()))
          const byNamespace = (ns: string) => held.filter((_, i) => runners[i]!.namespace === ns)
          for (const ns of ["blue", "green"]) {
            const [a, b] = byNamespace(ns) as [Array<string>, Array<string>]
            if (a.length === 0 || b.length === 0 || a.length + b.length !== 300) return undefined
            if (a.some((s) => b.includes(s))) return undefined
          }
          return held
        }, 250)
      )
      // shard default:1 is held in both namespaces at once, once in each
      const holders = split.map((shards, i) => (shards.includes("default:1") ? runners[i]!.namespace : undefined))
        .filter((x) => x !== undefined)
      expect(holders.sort()).toEqual(["blue", "green"])
      for (const r of runners) {
        const seen = yield* Effect.promise(() => r.runners())
        expect(seen.sort()).toEqual(of(r.namespace).map((x) => x.address).sort())
      }
      // entities are served within each cluster
      for (const ns of ["blue", "green"]) {
        const reply = yield* Effect.promise(() => of(ns)[0]!.ping("entity-1", ns))
        expect(reply.message).toBe(ns)
        expect(of(ns).map((r) => r.name)).toContain(reply.runner)
      }
    }))
})
