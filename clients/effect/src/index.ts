/**
 * `@runner-storage/effect`: Effect cluster `RunnerStorage` over a
 * runner-storage (Raft-replicated) cluster.
 *
 * ```ts
 * import { RunnerStorageGrpc } from "@runner-storage/effect"
 * const storage = RunnerStorageGrpc.layer({ endpoints: ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"] })
 * ```
 */
export * as RunnerStorageGrpc from "./GrpcRunnerStorage.js"
export {
  defaultAttemptTimeout,
  defaultDeadline,
  defaultRetrySchedule,
  layer,
  make,
  makeEncoded,
  type Options,
  RunnerStorageCallError,
  type RunnerStorageClient
} from "./GrpcRunnerStorage.js"
export type { StatusResponse } from "./proto.js"
