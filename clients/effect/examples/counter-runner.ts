/**
 * An Effect cluster runner whose RunnerStorage is a runner-storage cluster.
 *
 *   scripts/cluster.sh up                       # from the repo root
 *   cd clients/effect && npm ci && npm run build
 *   node dist/examples/counter-runner.js        # or: npm run example
 *
 * Environment (all optional):
 *   RS_ENDPOINTS  runner-storage nodes  (default 127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003)
 *   RUNNER_PORT   this runner's socket port (default 34431)
 *   RS_LOCK_EXPIRATION_MS  this runner's shardLockExpiration (default 35000): the layer
 *                 makes the namespace's E equal to it, or refuses to start if
 *                 the namespace already runs with another E
 *   RS_STAY=1     keep running after the demo (start several with different
 *                 RUNNER_PORTs to watch the shards split between them)
 */
import { NodeClusterSocket, NodeRuntime } from "@effect/platform-node"
import * as Console from "effect/Console"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import * as Entity from "effect/cluster/Entity"
import * as MessageStorage from "effect/cluster/MessageStorage"
import * as RunnerAddress from "effect/cluster/RunnerAddress"
import * as RunnerStorage from "effect/cluster/RunnerStorage"
import * as Sharding from "effect/cluster/Sharding"
import * as ShardId from "effect/cluster/ShardId"
import * as ShardingConfig from "effect/cluster/ShardingConfig"
import * as Rpc from "effect/rpc/Rpc"
import { RunnerStorageGrpc } from "../src/index.js"

const endpoints = (process.env["RS_ENDPOINTS"] ?? "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003").split(",")
const port = Number(process.env["RUNNER_PORT"] ?? 34431)
const lockExpiration = Duration.millis(Number(process.env["RS_LOCK_EXPIRATION_MS"] ?? 35_000))

// An entity with two RPCs; its state lives on whichever runner holds its shard.
const Counter = Entity.make("Counter", [
  Rpc.make("Increment", { payload: { amount: Schema.Number }, success: Schema.Number }),
  Rpc.make("Get", { success: Schema.Number })
])

const CounterLive = Counter.toLayer(Effect.gen(function*() {
  let count = 0
  return Counter.of({
    Increment: ({ payload }) => Effect.sync(() => (count += payload.amount)),
    Get: () => Effect.sync(() => count)
  })
}))

const shardingConfig = {
  runnerAddress: Option.some(RunnerAddress.make("127.0.0.1", port)),
  shardLockExpiration: lockExpiration
}

// The storage: any subset of the nodes works; the client follows the leader.
// Given the runner's ShardingConfig, it makes the namespace's E equal to
// shardLockExpiration (or fails, naming both, if the namespace runs with another).
const StorageLive = RunnerStorageGrpc.layer({
  endpoints,
  deadline: "5 seconds", // one logical call, retries included
  attemptTimeout: "2 seconds" // one try at one node
}).pipe(Layer.provide(ShardingConfig.layer(shardingConfig)))

const ClusterLive = NodeClusterSocket.layer({ storage: "byo", shardingConfig }).pipe(
  Layer.provide(MessageStorage.layerNoop) // volatile messages only, sent runner to runner
)

const program = Effect.gen(function*() {
  const storage = yield* RunnerStorage.RunnerStorage
  const sharding = yield* Sharding.Sharding
  const counters = yield* Counter.client

  for (const id of ["apples", "pears", "plums"]) {
    const value = yield* counters(id).Increment({ amount: 1 })
    yield* Console.log(`counter ${id} = ${value}`)
  }
  const runners = yield* storage.getRunners
  yield* Console.log(
    `runners in the store: ${runners.map(([r, healthy]) => `${r.address.host}:${r.address.port}${healthy ? "" : " (unhealthy)"}`).join(", ")}`
  )
  const held = Array.from({ length: 300 }, (_, i) => ShardId.make("default", i + 1)).filter((s) => sharding.hasShardId(s))
  yield* Console.log(`this runner holds ${held.length} of 300 shards`)
  if (process.env["RS_STAY"] === "1") {
    yield* Console.log("staying up (Ctrl-C to stop: the runner releases its shards and unregisters)")
    return yield* Effect.never
  }
})

program.pipe(
  Effect.provide(CounterLive.pipe(Layer.provideMerge(ClusterLive), Layer.provideMerge(StorageLive))),
  NodeRuntime.runMain
)
