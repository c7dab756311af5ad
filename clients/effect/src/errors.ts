/**
 * The errors of this package, all tagged (`Data.TaggedError`), each with a
 * message that names the problem and the values involved.
 *
 * - `RunnerStorageCallError`: a call to the store failed. It reaches Effect's
 *   Sharding as the `cause` of a `PersistenceError`, as every
 *   `RunnerStorage` failure must.
 * - `InvalidOptionError`, `InvalidNamespaceError`: the options are wrong;
 *   the layer fails to build.
 * - `LockExpirationMismatchError`, `InvalidShardingConfigError`: the E rule
 *   (`README.md`, "The lock expiration E"); the layer fails to build.
 */
import * as Data from "effect/Data"
import { codeName } from "./transport.js"

/** A call to the store failed, after `attempts` tries. */
export class RunnerStorageCallError extends Data.TaggedError("RunnerStorageCallError")<{
  /** gRPC status code (`UNAVAILABLE` for a transport failure, `DEADLINE_EXCEEDED` when time ran out). */
  readonly code: number
  /** The call: `"Acquire"`, `"GetRunners"`, `"EnsureLockExpiration"`, ... */
  readonly call: string
  /** The full gRPC method: `"runner_storage.v1.RunnerStorage/Acquire"`. */
  readonly method: string
  /** The status message of the server or the transport. */
  readonly details: string
  /** The endpoint of the last attempt (`undefined` when none was made). */
  readonly endpoint: string | undefined
  /** Tries made by this logical call. */
  readonly attempts: number
  /** The namespace the call acted in. */
  readonly namespace: string
  /** Whether trying again may succeed. */
  readonly retryable: boolean
  /** The last attempt's error, when the deadline ended a retried call. */
  readonly cause?: unknown
}> {
  /** The name of `code`: `"UNAVAILABLE"`, `"INVALID_ARGUMENT"`, ... */
  get codeName(): string {
    return codeName(this.code)
  }

  override get message(): string {
    return `runner-storage ${this.call}${this.endpoint !== undefined ? ` at ${this.endpoint}` : ""}` +
      `${this.namespace === "default" ? "" : ` (namespace ${JSON.stringify(this.namespace)})`} failed after ` +
      `${this.attempts} attempt(s): ${this.codeName}: ${this.details}`
  }
}

/** An option of `layer` / `layerConfig` / `make` is not valid. */
export class InvalidOptionError extends Data.TaggedError("InvalidOptionError")<{
  /** The option: `"endpoints"`, `"token"`, `"tls.ca"`, `"deadline"`, ... */
  readonly option: string
  readonly reason: string
}> {
  override get message(): string {
    return `runner-storage: option ${this.option}: ${this.reason}`
  }
}

/** The namespace is empty or longer than 255 bytes (`NAMESPACE_BYTES_MAX`). */
export class InvalidNamespaceError extends Data.TaggedError("InvalidNamespaceError")<{
  readonly namespace: string
  readonly reason: string
}> {
  override get message(): string {
    return `runner-storage: namespace ${JSON.stringify(this.namespace)} is not valid: ${this.reason}`
  }
}

/**
 * The namespace runs with another lock expiration E than this runner's
 * `ShardingConfig.shardLockExpiration`, and `takeOverLockExpiration` is off.
 */
export class LockExpirationMismatchError extends Data.TaggedError("LockExpirationMismatchError")<{
  readonly namespace: string
  /** This runner's `shardLockExpiration`, in ms. */
  readonly runnerLockExpirationMs: number
  /** The E the namespace runs with, in ms. */
  readonly storeLockExpirationMs: number
}> {
  override get message(): string {
    return `runner-storage: namespace ${JSON.stringify(this.namespace)} runs with a lock expiration of ` +
      `${this.storeLockExpirationMs} ms, but this runner's ShardingConfig.shardLockExpiration is ` +
      `${this.runnerLockExpirationMs} ms. Every runner of a namespace must use the store's E: set ` +
      `shardLockExpiration to ${this.storeLockExpirationMs} ms, or pass takeOverLockExpiration: true to make ` +
      `the namespace's E ${this.runnerLockExpirationMs} ms (for every runner in it).`
  }
}

/** The runner's `ShardingConfig` breaks the E rule: a refresh interval above E / 2. */
export class InvalidShardingConfigError extends Data.TaggedError("InvalidShardingConfigError")<{
  readonly shardLockRefreshIntervalMs: number
  readonly shardLockExpirationMs: number
  readonly reason: string
}> {
  override get message(): string {
    return `runner-storage: ShardingConfig.shardLockRefreshInterval (${this.shardLockRefreshIntervalMs} ms) ` +
      `with shardLockExpiration (${this.shardLockExpirationMs} ms): ${this.reason}`
  }
}

/** What building the layer can fail with (besides a `ConfigError` for `layerConfig`). */
export type RunnerStorageLayerError =
  | InvalidOptionError
  | InvalidNamespaceError
  | LockExpirationMismatchError
  | InvalidShardingConfigError
  | RunnerStorageCallError
