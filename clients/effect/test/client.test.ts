/**
 * The client's retries and deadlines against a real cluster that misbehaves
 * for real: a leader frozen with SIGSTOP (its attempts time out and go
 * elsewhere, the retried write applied once), and no quorum (the call's
 * deadline ends it with DEADLINE_EXCEEDED naming the last error).
 */
import { expect, layer } from "@effect/vitest"
import * as Effect from "effect/Effect"
import { callErrorOf } from "./support/exits.js"
import { clientOf, clusterLayer, TestCluster } from "./support/layers.js"

layer(clusterLayer(), { excludeTestServices: true, timeout: "60 seconds" })("the client on a misbehaving cluster", (it) => {
  it.effect("a frozen leader: the attempt times out, the call succeeds at the next leader, applied once", () =>
    Effect.gen(function*() {
      const cluster = yield* TestCluster
      const client = yield* clientOf(cluster, { attemptTimeout: "300 millis", deadline: "8 seconds" })
      const leader = yield* Effect.promise(() => cluster.waitForLeader())
      yield* client.encoded.getRunners
      expect(client.currentEndpoint()).toBe(leader.address)
      leader.process!.kill("SIGSTOP")
      yield* Effect.addFinalizer(() => Effect.sync(() => leader.process!.kill("SIGCONT")))
      const started = Date.now()
      const machineId = yield* client.encoded.register(
        "127.0.0.1:44001",
        '{"address":{"host":"127.0.0.1","port":44001},"groups":["default"],"weight":1}',
        true
      )
      expect(machineId).toBe(1)
      expect(Date.now() - started).toBeGreaterThanOrEqual(300)
      expect(client.currentEndpoint()).not.toBe(leader.address)
      leader.process!.kill("SIGCONT")
      // the write was applied once: the same address registered again keeps id 1, a new one gets 2
      expect(yield* client.encoded.register("127.0.0.1:44002", '{"address":{"host":"127.0.0.1","port":44002},"groups":["default"],"weight":1}', true))
        .toBe(2)
    }))

  it.effect("no quorum: DEADLINE_EXCEEDED after several attempts, naming the last error", () =>
    Effect.gen(function*() {
      const cluster = yield* TestCluster
      yield* Effect.promise(() => cluster.waitForLeader())
      const [a, b] = cluster.nodes.slice(0, 2)
      yield* Effect.promise(() => Promise.all([cluster.kill(a!.id), cluster.kill(b!.id)]))
      yield* Effect.addFinalizer(() =>
        Effect.promise(async () => {
          cluster.start(a!.id)
          cluster.start(b!.id)
          await cluster.waitForLeader()
        })
      )
      const client = yield* clientOf(cluster, { deadline: "1500 millis", attemptTimeout: "400 millis" })
      const started = Date.now()
      const cause = callErrorOf(yield* Effect.exit(client.encoded.releaseAll("127.0.0.1:44001")))
      const elapsed = Date.now() - started
      expect(cause.codeName).toBe("DEADLINE_EXCEEDED")
      expect(cause.attempts).toBeGreaterThan(1)
      expect(cause.details).toMatch(/deadline of 1500 ms exceeded; last error: (UNAVAILABLE|DEADLINE_EXCEEDED)/)
      expect(elapsed).toBeGreaterThanOrEqual(1400)
      expect(elapsed).toBeLessThan(4000)
    }))
})
