/**
 * Effect cluster `RunnerStorage` backed by a runner-storage cluster over
 * gRPC: `layer(options)` for code, `layerConfig(...)` from `Config`, `make`
 * for the client with the admin calls.
 *
 * Building the layer validates the options (a named error for each wrong
 * one), opens nothing yet (HTTP/2 sessions are dialled on the first call and
 * shared by every instance of the process), and applies the E rule when a
 * `ShardingConfig` is in the context:
 * - `shardLockRefreshInterval` must be at most `shardLockExpiration / 2`;
 * - `Admin.EnsureLockExpiration` makes the namespace's E the runner's
 *   `shardLockExpiration` when nobody set it, and the layer fails with
 *   `LockExpirationMismatchError` when the namespace runs with another E
 *   (unless `takeOverLockExpiration`).
 */
import * as Config from "effect/Config"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import type * as Scope from "effect/Scope"
import { PersistenceError } from "effect/cluster/ClusterError"
import * as RunnerStorage from "effect/cluster/RunnerStorage"
import * as ShardingConfig from "effect/cluster/ShardingConfig"
import { Client, methods } from "./client.js"
import * as codec from "./codec.js"
import {
  InvalidShardingConfigError,
  LockExpirationMismatchError,
  RunnerStorageCallError,
  type RunnerStorageLayerError
} from "./errors.js"
import { config, type Options, resolve } from "./options.js"
import { makeEncoded as encodedOf, makeStorage } from "./storage.js"
import { Code } from "./transport.js"

/** How long `status` waits for each node. */
const STATUS_TIMEOUT_MS_MAX = 2000

/** The E a namespace runs with after `ensureLockExpiration`. */
export interface LockExpiration {
  readonly namespace: string
  readonly lockExpirationMs: number
  /** E had been set before this call (by another runner or an admin). */
  readonly previouslySet: boolean
}

/** The client: the `Encoded` calls, the typed storage, and the admin calls. */
export interface RunnerStorageClient {
  /** Effect's string-level storage interface, over gRPC. */
  readonly encoded: RunnerStorage.Encoded
  /** The typed `RunnerStorage` (what `layer` provides). */
  readonly storage: RunnerStorage.RunnerStorage["Service"]
  /** The namespace of every call. */
  readonly namespace: string
  /** `Admin.SetLockExpiration`: sets the namespace's E, whatever it was. */
  readonly setLockExpiration: (expiration: Duration.Input) => Effect.Effect<void, PersistenceError>
  /**
   * `Admin.EnsureLockExpiration`: makes the namespace's E `expiration` if
   * nobody set it before (or `takeOver`); answers the E in force after it.
   */
  readonly ensureLockExpiration: (
    expiration: Duration.Input,
    options?: { readonly takeOver?: boolean | undefined }
  ) => Effect.Effect<LockExpiration, RunnerStorageCallError>
  /** `Admin.ListNamespaces`: every namespace of the store with its E and counts. */
  readonly listNamespaces: Effect.Effect<ReadonlyArray<codec.NamespaceInfo>, RunnerStorageCallError>
  /** `Admin.Status` of every known endpoint (each node's own view; `undefined`: no answer). */
  readonly status: Effect.Effect<
    ReadonlyArray<{ readonly endpoint: string; readonly status: codec.StatusResponse | undefined }>
  >
  /** The `RequestId.client_id` of this client's writes. */
  readonly clientId: string
  /** The endpoint that answered last (or was found to lead). */
  readonly currentEndpoint: () => string | undefined
  /** The endpoints known (given ones and learned leader hints). */
  readonly endpoints: () => ReadonlyArray<string>
}

const millisOf = (input: Duration.Input) => Math.round(Duration.toMillis(Duration.fromInputUnsafe(input)))

/** Validates the options and builds the client; its connection shares are released with the scope. */
export const make = (
  options: Options
): Effect.Effect<RunnerStorageClient, RunnerStorageLayerError, Scope.Scope> =>
  Effect.gen(function*() {
    const resolved = yield* resolve(options)
    const client = yield* Effect.acquireRelease(
      Effect.sync(() => new Client(resolved)),
      (client) => Effect.sync(() => client.close())
    )
    const ensureLockExpiration = (expiration: Duration.Input, opts?: { readonly takeOver?: boolean | undefined }) =>
      Effect.suspend(() => {
        const ms = millisOf(expiration)
        const body = codec.encodeEnsureLockExpiration(
          client.ns,
          client.id,
          client.nextSequence(),
          ms,
          opts?.takeOver ?? false
        )
        return Effect.map(client.call(methods.ensureLockExpiration, body), (answer): LockExpiration => ({
          namespace: resolved.namespace,
          lockExpirationMs: answer.lockExpirationMs,
          previouslySet: answer.previouslySet
        }))
      })
    const status = Effect.suspend(() =>
      client.statusAll(Math.min(resolved.deadlineMs, STATUS_TIMEOUT_MS_MAX))
    )
    return {
      encoded: encodedOf(client),
      storage: makeStorage(client),
      namespace: resolved.namespace,
      setLockExpiration: (expiration) =>
        Effect.suspend(() =>
          client.call(methods.setLockExpiration, codec.encodeSetLockExpiration(client.ns, millisOf(expiration)))
        ).pipe(Effect.asVoid, Effect.mapError((cause) => new PersistenceError({ cause }))),
      ensureLockExpiration,
      listNamespaces: Effect.suspend(() => client.call(methods.listNamespaces, codec.encodeEmpty())),
      status,
      clientId: resolved.clientId,
      currentEndpoint: () => client.currentEndpoint(),
      endpoints: () => client.knownEndpoints()
    } satisfies RunnerStorageClient
  })

/** The string-level `RunnerStorage.Encoded` alone (connection shares released with the scope). */
export const makeEncoded = (
  options: Options
): Effect.Effect<RunnerStorage.Encoded, RunnerStorageLayerError, Scope.Scope> =>
  Effect.map(make(options), (client) => client.encoded)

/**
 * The E rule, checked against the runner's `ShardingConfig`: its refresh
 * interval at most E / 2, and the namespace's E equal to its
 * `shardLockExpiration` (set on first use).
 */
export const applyLockExpirationRule = (
  client: RunnerStorageClient,
  sharding: ShardingConfig.ShardingConfig["Service"],
  takeOver: boolean
): Effect.Effect<LockExpiration, RunnerStorageLayerError> =>
  Effect.gen(function*() {
    const expirationMs = millisOf(sharding.shardLockExpiration)
    const refreshMs = millisOf(sharding.shardLockRefreshInterval)
    if (!(expirationMs >= 1)) {
      return yield* Effect.fail(
        new InvalidShardingConfigError({
          shardLockRefreshIntervalMs: refreshMs,
          shardLockExpirationMs: expirationMs,
          reason: "shardLockExpiration must be at least 1 ms"
        })
      )
    }
    if (!(refreshMs <= expirationMs / 2)) {
      return yield* Effect.fail(
        new InvalidShardingConfigError({
          shardLockRefreshIntervalMs: refreshMs,
          shardLockExpirationMs: expirationMs,
          reason: `the refresh interval must be at most half of the expiration (here at most ` +
            `${Math.floor(expirationMs / 2)} ms), so that a runner whose refresh fails once (a store election, ` +
            `a network hiccup) still refreshes before its locks expire and another runner takes its shards`
        })
      )
    }
    const answer = yield* client.ensureLockExpiration(expirationMs, { takeOver }).pipe(
      Effect.catchIf(
        (error) => error.code === Code.UNIMPLEMENTED,
        (error) => ensureOnOlderStore(client, expirationMs, takeOver, error)
      )
    )
    if (answer.lockExpirationMs !== expirationMs) {
      return yield* Effect.fail(
        new LockExpirationMismatchError({
          namespace: answer.namespace,
          runnerLockExpirationMs: expirationMs,
          storeLockExpirationMs: answer.lockExpirationMs
        })
      )
    }
    return answer
  })

/**
 * A store that predates namespaces ignores the namespace field: a client of
 * another namespace would silently share "default". Its missing
 * `Admin.ListNamespaces` tells.
 */
const checkNamespaceSupport = (client: RunnerStorageClient): Effect.Effect<void, RunnerStorageCallError> =>
  client.namespace === "default"
    ? Effect.void
    : Effect.asVoid(client.listNamespaces).pipe(
      Effect.mapError((error) => error.code === Code.UNIMPLEMENTED ? noNamespaces(client.namespace, error) : error)
    )

const noNamespaces = (namespace: string, error: RunnerStorageCallError) =>
  new RunnerStorageCallError({
    ...error,
    details: `this store does not support namespaces (it has no Admin.${error.call}), so namespace ` +
      `${JSON.stringify(namespace)} cannot be used with it: upgrade the store` + (error.details === "" ? "" : `; ${error.details}`)
  })

/**
 * `Admin.EnsureLockExpiration` on a store that predates it (UNIMPLEMENTED):
 * with the default namespace only, its one E is read from the leader's
 * `Admin.Status` (and, with `takeOver`, set with `Admin.SetLockExpiration`).
 */
const ensureOnOlderStore = (
  client: RunnerStorageClient,
  expirationMs: number,
  takeOver: boolean,
  unimplemented: RunnerStorageCallError
): Effect.Effect<LockExpiration, RunnerStorageCallError> =>
  Effect.gen(function*() {
    if (client.namespace !== "default") return yield* Effect.fail(noNamespaces(client.namespace, unimplemented))
    const statuses = yield* client.status
    const leader = statuses.map((s) => s.status).find((s) => s?.role === "leader")
    if (leader === undefined) return yield* Effect.fail(unimplemented)
    if (leader.lockExpirationMs !== expirationMs && takeOver) {
      yield* Effect.mapError(client.setLockExpiration(expirationMs), () => unimplemented)
      return { namespace: client.namespace, lockExpirationMs: expirationMs, previouslySet: true }
    }
    return { namespace: client.namespace, lockExpirationMs: leader.lockExpirationMs, previouslySet: true }
  })

/**
 * A `RunnerStorage` layer backed by a runner-storage cluster. Reads
 * `ShardingConfig` when the context has one and applies the E rule (see the
 * module's documentation).
 */
export const layer = (options: Options): Layer.Layer<RunnerStorage.RunnerStorage, RunnerStorageLayerError> =>
  Layer.effect(
    RunnerStorage.RunnerStorage,
    Effect.gen(function*() {
      const client = yield* make(options)
      const sharding = yield* Effect.serviceOption(ShardingConfig.ShardingConfig)
      if (Option.isSome(sharding)) {
        yield* applyLockExpirationRule(client, sharding.value, options.takeOverLockExpiration ?? false)
      } else {
        yield* checkNamespaceSupport(client)
        yield* Effect.logWarning(
          "runner-storage: no ShardingConfig in the layer's context, so its namespace's lock expiration is not " +
            "checked against shardLockExpiration; provide the runner's ShardingConfig to this layer"
        )
      }
      return client.storage
    })
  )

/**
 * `layer` with its options read from `Config`: by default `config` (the
 * `RUNNER_STORAGE_*` keys), or any `Config.Wrap<Options>`, e.g.
 * `layerConfig({ endpoints: Config.String("RS_ENDPOINTS"), token: Config.Redacted("RS_TOKEN") })`.
 */
export const layerConfig = (
  options: Config.Wrap<Options> = config
): Layer.Layer<RunnerStorage.RunnerStorage, RunnerStorageLayerError | Config.ConfigError> =>
  Layer.unwrap(Effect.map(Config.unwrap(options), layer))

export { config }
