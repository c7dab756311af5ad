/**
 * The storages under comparison, each built the way an Effect app builds it:
 * - `runner-storage`: this package's layer over a 3-node cluster;
 * - `pg-table` / `pg-advisory`: Effect's `SqlRunnerStorage` over
 *   `@effect/sql-pg`, with lock table rows (`shardLockDisableAdvisory`) or
 *   PostgreSQL advisory locks (its default).
 * Every storage instance gets its own client (its own PgClient pool; for
 * runner-storage, its own layer instance), as separate runner processes do.
 */
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as RunnerStorage from "effect/cluster/RunnerStorage"
import * as ShardingConfig from "effect/cluster/ShardingConfig"
import * as SqlRunnerStorage from "effect/cluster/SqlRunnerStorage"
import * as PgClient from "@effect/sql-pg/PgClient"
import { RunnerStorageGrpc } from "../src/index.js"
import * as Legacy from "./legacy/GrpcRunnerStorage.js"
import type { Postgres } from "./postgres.js"
import type { MakeStorage } from "./workloads.js"

export type BackendName =
  | "runner-storage"
  | "pg-table"
  | "pg-advisory"
  | "runner-storage-makeEncoded"
  | "runner-storage-legacy"
export const backendNames: ReadonlyArray<BackendName> = ["runner-storage", "pg-table", "pg-advisory"]

/** Connections of each storage instance's PgClient pool (one is reserved for the locks). */
const PG_POOL_CONNECTIONS = 3

const build = <E>(layer: Layer.Layer<RunnerStorage.RunnerStorage, E>): MakeStorage =>
  Effect.map(Layer.build(layer), (context) => Context.get(context, RunnerStorage.RunnerStorage))

export const makeBackend = (
  name: BackendName,
  options: {
    readonly endpoints: ReadonlyArray<string>
    readonly postgres: Postgres
    /** Isolates one bench line from the others: a table prefix / namespace. */
    readonly line: string
    readonly lockExpiration: Duration.Duration
  }
): MakeStorage => {
  const sharding = ShardingConfig.layer({
    shardLockExpiration: options.lockExpiration,
    shardLockDisableAdvisory: name === "pg-table"
  })
  switch (name) {
    case "runner-storage":
      return build(RunnerStorageGrpc.layer({ endpoints: options.endpoints }).pipe(Layer.provide(sharding)))
    case "runner-storage-makeEncoded":
      // this package's Encoded under Effect's own RunnerStorage.makeEncoded
      // (no decoded-runner cache): what the layer's own adapter saves
      return Effect.map(
        RunnerStorageGrpc.makeEncoded({ endpoints: options.endpoints }),
        RunnerStorage.makeEncoded
      )
    case "runner-storage-legacy":
      // the client before this package's rewrite (bench/legacy): grpc-js, proto-loader, makeEncoded
      return build(Legacy.layer({ endpoints: options.endpoints }))
    case "pg-table":
    case "pg-advisory":
      return build(
        SqlRunnerStorage.layerWith({ prefix: options.line }).pipe(
          Layer.provide(PgClient.layer({
            host: options.postgres.host,
            port: options.postgres.port,
            username: options.postgres.username,
            database: options.postgres.database,
            maxConnections: PG_POOL_CONNECTIONS
          })),
          Layer.provide(sharding)
        )
      )
  }
}
