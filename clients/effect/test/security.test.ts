/**
 * A secured cluster (TLS with scripts/gen-certs.sh certificates, and a
 * bearer token on every call): the layer with the CA and the token works,
 * end to end; without the token, with a wrong one, or in plaintext it is
 * refused with an error that says why. And `layerConfig` reads every option
 * from `Config`.
 */
import { expect, layer } from "@effect/vitest"
import * as Config from "effect/Config"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as Runner from "effect/cluster/Runner"
import * as RunnerAddress from "effect/cluster/RunnerAddress"
import * as RunnerStorage from "effect/cluster/RunnerStorage"
import * as ShardingConfig from "effect/cluster/ShardingConfig"
import { join } from "node:path"
import { config, layer as storageLayer, layerConfig } from "../src/index.js"
import { clientOf, clusterLayer, reach, TestCluster } from "./support/layers.js"
import { callErrorOf } from "./support/exits.js"

const TOKEN = "t0ken-for-the-effect-tests"

const runner = Runner.make({ address: RunnerAddress.make("127.0.0.1", 45001), groups: ["default"], weight: 1 })

layer(clusterLayer({ tls: true, authToken: TOKEN }), { excludeTestServices: true, timeout: "60 seconds" })(
  "a cluster with TLS and a bearer token",
  (it) => {
    it.effect("TLS (the cluster's CA) and the token: every call works", () =>
      Effect.gen(function*() {
        const cluster = yield* TestCluster
        const context = yield* Layer.build(storageLayer(reach(cluster)))
        const storage = Context.get(context, RunnerStorage.RunnerStorage)
        expect(yield* storage.register(runner, true)).toBeGreaterThanOrEqual(1)
        expect((yield* storage.getRunners).map(([r]) => r.address.port)).toContain(45001)
        // through a follower too: it forwards with the token
        const leader = yield* Effect.promise(() => cluster.waitForLeader())
        const follower = cluster.nodes.find((n) => n.id !== leader.id)!
        const viaFollower = yield* clientOf(cluster, { endpoints: [follower.address] })
        expect((yield* viaFollower.encoded.getRunners).length).toBeGreaterThanOrEqual(1)
      }))

    it.effect("no token: UNAUTHENTICATED, not retried, saying a bearer token is required", () =>
      Effect.gen(function*() {
        const cluster = yield* TestCluster
        const client = yield* clientOf(cluster, { token: undefined })
        const cause = callErrorOf(yield* Effect.exit(client.encoded.getRunners))
        expect(cause.codeName).toBe("UNAUTHENTICATED")
        expect(cause.attempts).toBe(1)
        expect(cause.message).toMatch(/requires a bearer token/)
        const wrong = yield* clientOf(cluster, { token: Redacted.make("not-the-token") })
        const refused = callErrorOf(yield* Effect.exit(wrong.encoded.register("127.0.0.1:1", "{}", true)))
        expect(refused.codeName).toBe("UNAUTHENTICATED")
        expect(refused.details).toMatch(/not valid/)
      }))

    it.effect("plaintext, or TLS without the cluster's CA: refused, saying so", () =>
      Effect.gen(function*() {
        const cluster = yield* TestCluster
        const plaintext = yield* clientOf(cluster, { tls: undefined, deadline: "1 second" })
        const cause = callErrorOf(yield* Effect.exit(plaintext.encoded.getRunners))
        expect(cause.codeName).toMatch(/UNAVAILABLE|DEADLINE_EXCEEDED/)
        expect(cause.message.length).toBeGreaterThan(0)
        const untrusted = yield* clientOf(cluster, { tls: true, deadline: "1 second" })
        const unknownCa = callErrorOf(yield* Effect.exit(untrusted.encoded.getRunners))
        expect(unknownCa.message).toMatch(/certificate/i)
      }))

    it.effect("layerConfig reads every option from Config (a ConfigProvider), and works end to end", () =>
      Effect.gen(function*() {
        const cluster = yield* TestCluster
        const env = {
          RUNNER_STORAGE_ENDPOINTS: cluster.endpoints.join(","),
          RUNNER_STORAGE_NAMESPACE: "configured",
          RUNNER_STORAGE_TOKEN: TOKEN,
          RUNNER_STORAGE_TLS: "true",
          RUNNER_STORAGE_TLS_CA: join(cluster.tlsDir!, "ca.pem"),
          RUNNER_STORAGE_TLS_CERT: join(cluster.tlsDir!, "node1.pem"),
          RUNNER_STORAGE_TLS_KEY: join(cluster.tlsDir!, "node1-key.pem"),
          RUNNER_STORAGE_TLS_SERVER_NAME: "localhost",
          RUNNER_STORAGE_DEADLINE: "4 seconds",
          RUNNER_STORAGE_ATTEMPT_TIMEOUT: "1500 millis",
          RUNNER_STORAGE_CLIENT_ID: "configured-client",
          RUNNER_STORAGE_TAKE_OVER_LOCK_EXPIRATION: "true"
        }
        const provider = ConfigProvider.fromEnv({ env })
        const options = yield* Effect.provideService(config, ConfigProvider.ConfigProvider, provider)
        expect(options.endpoints).toBe(cluster.endpoints.join(","))
        expect(options.namespace).toBe("configured")
        expect(Redacted.isRedacted(options.token) && Redacted.value(options.token)).toBe(TOKEN)
        expect(options.tls).toMatchObject({ ca: env.RUNNER_STORAGE_TLS_CA, cert: env.RUNNER_STORAGE_TLS_CERT })
        const tls = options.tls as { key: unknown; serverName: string }
        expect(Redacted.isRedacted(tls.key)).toBe(true)
        expect(tls.serverName).toBe("localhost")
        expect(Duration.toMillis(Duration.fromInputUnsafe(options.deadline!))).toBe(4000)
        expect(Duration.toMillis(Duration.fromInputUnsafe(options.attemptTimeout!))).toBe(1500)
        expect(options.clientId).toBe("configured-client")
        expect(options.takeOverLockExpiration).toBe(true)

        // the layer from the same provider, with a runner's ShardingConfig (the E rule applies)
        const sharding = ShardingConfig.layer({ shardLockExpiration: "12 seconds", shardLockRefreshInterval: "4 seconds" })
        const context = yield* Layer.build(
          layerConfig().pipe(Layer.provide(sharding), Layer.provide(ConfigProvider.layer(provider)))
        )
        const storage = Context.get(context, RunnerStorage.RunnerStorage)
        expect(yield* storage.register(runner, true)).toBe(1)
        const admin = yield* clientOf(cluster)
        const namespaces = yield* admin.listNamespaces
        expect(namespaces.find((n) => n.namespace === "configured")).toMatchObject({
          lockExpirationMs: 12_000,
          liveRunners: 1
        })
        // a Config.Wrap of single keys works too
        const wrapped = layerConfig({
          endpoints: Config.String("RUNNER_STORAGE_ENDPOINTS"),
          token: Config.Redacted("RUNNER_STORAGE_TOKEN"),
          tls: Config.map(Config.String("RUNNER_STORAGE_TLS_CA"), (ca) => ({ ca }))
        }).pipe(Layer.provide(ConfigProvider.layer(provider)))
        const other = Context.get(yield* Layer.build(wrapped), RunnerStorage.RunnerStorage)
        expect(yield* other.getRunners).toBeInstanceOf(Array)
      }))
  }
)
