/**
 * The test clusters as Effect services, for `@effect/vitest`'s `layer(...)`:
 * started when the layer is built, killed (every process) when it is
 * released. Tests run with the live clock (`excludeTestServices`): the
 * client's deadlines and Effect's schedules must see real time.
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Scope from "effect/Scope"
import { make, type Options, type RunnerStorageClient } from "../../src/index.js"
import { type Cluster, type ClusterOptions, startCluster } from "./cluster.js"

export class TestCluster extends Context.Service<TestCluster, Cluster>()("test/TestCluster") {}

export const clusterLayer = (options: ClusterOptions = {}): Layer.Layer<TestCluster> =>
  Layer.effect(
    TestCluster,
    Effect.acquireRelease(
      Effect.promise(() => startCluster(options)),
      (cluster) => Effect.promise(() => cluster.stop())
    )
  )

/** The client options that reach the test cluster (TLS CA and token included). */
export const reach = (cluster: Cluster, extra: Partial<Options> = {}): Options => ({
  endpoints: cluster.endpoints,
  ...(cluster.access.ca !== undefined ? { tls: { ca: cluster.access.ca } } : {}),
  ...(cluster.access.token !== undefined ? { token: cluster.access.token } : {}),
  ...extra
})

/** A client of the test cluster, closed with the test's scope. */
export const clientOf = (cluster: Cluster, extra: Partial<Options> = {}) => make(reach(cluster, extra))

/** Builds a client outside any test scope (closed by the returned function). */
export const standaloneClient = async (
  options: Options
): Promise<{ client: RunnerStorageClient; close: () => Promise<void> }> => {
  const scope = Scope.makeUnsafe()
  const client = await Effect.runPromise(Scope.provide(scope)(make(options)))
  return { client, close: () => Effect.runPromise(Scope.close(scope, Exit.void)) }
}
