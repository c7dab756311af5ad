/**
 * `@runner-storage/effect`: Effect cluster `RunnerStorage` over a
 * runner-storage (Raft-replicated) cluster.
 *
 * ```ts
 * import { RunnerStorageGrpc } from "@runner-storage/effect"
 * const storage = RunnerStorageGrpc.layer({ endpoints: ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"] })
 * const fromEnv = RunnerStorageGrpc.layerConfig() // RUNNER_STORAGE_ENDPOINTS, RUNNER_STORAGE_TOKEN, ...
 * ```
 */
export * as RunnerStorageGrpc from "./GrpcRunnerStorage.js"
export {
  applyLockExpirationRule,
  config,
  layer,
  layerConfig,
  type LockExpiration,
  make,
  makeEncoded,
  type RunnerStorageClient
} from "./GrpcRunnerStorage.js"
export type { Member, NamespaceInfo, StatusResponse } from "./codec.js"
export {
  InvalidNamespaceError,
  InvalidOptionError,
  InvalidShardingConfigError,
  LockExpirationMismatchError,
  RunnerStorageCallError,
  type RunnerStorageLayerError
} from "./errors.js"
export {
  defaultAttemptTimeout,
  defaultDeadline,
  defaultRetrySchedule,
  NAMESPACE_BYTES_MAX,
  type Options,
  type TlsOptions
} from "./options.js"
export { Code, codeName } from "./transport.js"
