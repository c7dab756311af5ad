// The client as it was before the HTTP/2 transport and static codecs
// (commit 7da4fee, grpc-js + proto-loader reflection + Effect's
// makeEncoded), kept for the bench only: the "before" of README.md's
// "Speed" figures, measured beside the current client on the same cluster.
/**
 * Effect cluster `RunnerStorage` backed by a runner-storage cluster over gRPC.
 *
 * The gRPC calls implement Effect's string-level `RunnerStorage.Encoded`
 * interface; `layer` adapts it with Effect's own `RunnerStorage.makeEncoded`,
 * so runner/shard encoding is byte-exact with Effect's SQL storage.
 *
 * Behaviour of every call:
 * - it goes to the endpoint that last answered; when none is known it asks the
 *   nodes' `Admin.Status` for the leader (and follows `leader_address` hints);
 * - `UNAVAILABLE`, broken connections and an attempt timing out are retried on
 *   the next endpoint after a backoff (`retrySchedule`), until `deadline`;
 * - `INVALID_ARGUMENT`, `FAILED_PRECONDITION`, `RESOURCE_EXHAUSTED` (and any
 *   other status) are not retried;
 * - every write carries a `RequestId { client_id, sequence }`: one random
 *   client id per layer instance, a sequence that increases per logical call
 *   and is reused by that call's retries, so the store applies it once;
 * - every failure is a `PersistenceError` whose `cause` is a
 *   `RunnerStorageCallError` (gRPC code, details, endpoint, attempts).
 *
 * The gRPC channels are closed when the layer's scope closes.
 */
import * as grpc from "@grpc/grpc-js"
import { randomUUID } from "node:crypto"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import * as Semaphore from "effect/Semaphore"
import { PersistenceError } from "effect/cluster/ClusterError"
import * as RunnerStorage from "effect/cluster/RunnerStorage"
import {
  type AdminMethod,
  type DynamicClient,
  type GetRunnersResponse,
  loadProto,
  type RegisterResponse,
  type RequestId,
  type ShardIdsResponse,
  type StatusResponse,
  type StorageMethod
} from "./proto.js"

// -----------------------------------------------------------------------------
// options
// -----------------------------------------------------------------------------

export interface Options {
  /**
   * The runner-storage nodes, as `"host:port"` (a comma-separated string is
   * accepted too). Any node will do: followers forward to the leader, and the
   * client follows the leader it learns from `Admin.Status`.
   */
  readonly endpoints: ReadonlyArray<string> | string
  /**
   * Time budget of one logical call, retries included. Default: 5 seconds.
   */
  readonly deadline?: Duration.Input | undefined
  /**
   * Time budget of one attempt at one endpoint (capped by what is left of
   * `deadline`). An attempt that runs out is retried at another endpoint.
   * Default: 2 seconds.
   */
  readonly attemptTimeout?: Duration.Input | undefined
  /**
   * Delay between attempts of one call. Retrying also stops when the
   * schedule ends or the deadline passes. Default: exponential from 25 ms,
   * doubling, capped at 500 ms, jittered.
   */
  readonly retrySchedule?: Schedule.Schedule<unknown, RunnerStorageCallError> | undefined
  /**
   * The `RequestId.client_id` of this instance. Default: a random UUID.
   */
  readonly clientId?: string | undefined
  /**
   * Path of `runner_storage.proto`. Default: the copy shipped in the package,
   * or the repository's `proto/` when used from the repository.
   */
  readonly protoPath?: string | undefined
  /** Default: insecure (plaintext) credentials. */
  readonly credentials?: grpc.ChannelCredentials | undefined
  /** Extra grpc-js channel options. */
  readonly channelOptions?: grpc.ChannelOptions | undefined
}

export const defaultDeadline: Duration.Duration = Duration.seconds(5)
export const defaultAttemptTimeout: Duration.Duration = Duration.seconds(2)

export const defaultRetrySchedule: Schedule.Schedule<Duration.Duration, unknown> = Schedule.min([
  Schedule.exponential(Duration.millis(25), 2),
  Schedule.spaced(Duration.millis(500))
]).pipe(Schedule.jittered)

const defaultChannelOptions: grpc.ChannelOptions = {
  // come back quickly after a node restarts (grpc-js defaults: 1 s .. 120 s)
  "grpc.initial_reconnect_backoff_ms": 100,
  "grpc.max_reconnect_backoff_ms": 1000,
  "grpc.keepalive_time_ms": 30_000,
  "grpc.keepalive_timeout_ms": 10_000
}

// -----------------------------------------------------------------------------
// errors
// -----------------------------------------------------------------------------

/**
 * The cause carried by every `PersistenceError` of this client.
 */
export class RunnerStorageCallError extends Error {
  readonly _tag = "RunnerStorageCallError"
  /** gRPC status code (`grpc.status`). */
  readonly code: grpc.status
  /** Name of the code, e.g. `"UNAVAILABLE"`. */
  readonly codeName: string
  /** The status message from the server or the transport. */
  readonly details: string
  /** `runner_storage.v1.<Service>/<Method>`. */
  readonly method: string
  /** The endpoint of the last attempt, if any. */
  readonly endpoint: string | undefined
  /** Whether another attempt may succeed. */
  readonly retryable: boolean
  /** Attempts made so far by the logical call. */
  readonly attempts: number

  constructor(props: {
    readonly code: grpc.status
    readonly details: string
    readonly method: string
    readonly endpoint: string | undefined
    readonly retryable: boolean
    readonly attempts: number
    readonly cause?: unknown
  }) {
    const codeName = grpc.status[props.code] ?? String(props.code)
    super(
      `runner-storage ${props.method}${props.endpoint ? ` at ${props.endpoint}` : ""} failed ` +
        `after ${props.attempts} attempt(s): ${codeName}: ${props.details}`,
      props.cause === undefined ? undefined : { cause: props.cause }
    )
    this.name = "RunnerStorageCallError"
    this.code = props.code
    this.codeName = codeName
    this.details = props.details
    this.method = props.method
    this.endpoint = props.endpoint
    this.retryable = props.retryable
    this.attempts = props.attempts
  }
}

// Transport failures that grpc-js does not always report as UNAVAILABLE.
const BROKEN_CONNECTION =
  /RST_STREAM|Session closed|ECONNRESET|ECONNREFUSED|EPIPE|ETIMEDOUT|socket hang up|Connection dropped|GOAWAY|No connection established|connection (?:closed|reset|refused)|transport error|broken pipe/i

const NEVER_RETRIED: ReadonlySet<grpc.status> = new Set([
  grpc.status.INVALID_ARGUMENT,
  grpc.status.FAILED_PRECONDITION,
  grpc.status.RESOURCE_EXHAUSTED
])

const isRetryable = (code: grpc.status, details: string, deadlineLeft: boolean): boolean => {
  if (NEVER_RETRIED.has(code)) return false
  switch (code) {
    case grpc.status.UNAVAILABLE:
      return true
    case grpc.status.DEADLINE_EXCEEDED:
      // the attempt's own timeout, not the call's
      return deadlineLeft
    case grpc.status.CANCELLED:
    case grpc.status.INTERNAL:
    case grpc.status.UNKNOWN:
      return BROKEN_CONNECTION.test(details)
    default:
      return false
  }
}

// -----------------------------------------------------------------------------
// transport
// -----------------------------------------------------------------------------

interface Endpoint {
  readonly address: string
  readonly storage: DynamicClient<StorageMethod>
  readonly admin: DynamicClient<AdminMethod>
  failedAt: number
}

const unary = <Res, M extends string = string>(
  client: DynamicClient<M>,
  method: M,
  request: object,
  deadline: Date
): Effect.Effect<Res, grpc.ServiceError | Error> =>
  Effect.callback<Res, grpc.ServiceError | Error>((resume) => {
    let call: grpc.ClientUnaryCall | undefined
    try {
      call = client[method](request, new grpc.Metadata(), { deadline }, (error, response) => {
        if (error) resume(Effect.fail(error))
        else resume(Effect.succeed(response as Res))
      })
    } catch (error) {
      resume(Effect.fail(error instanceof Error ? error : new Error(String(error))))
    }
    return Effect.sync(() => call?.cancel())
  })

const normalizeEndpoints = (endpoints: ReadonlyArray<string> | string): Array<string> => {
  const list = typeof endpoints === "string" ? endpoints.split(",") : [...endpoints]
  const out: Array<string> = []
  for (const raw of list) {
    const endpoint = raw.trim()
    if (endpoint === "") continue
    if (!/^.+:\d{1,5}$/.test(endpoint)) {
      throw new Error(`runner-storage: endpoint ${JSON.stringify(endpoint)} is not "host:port"`)
    }
    if (!out.includes(endpoint)) out.push(endpoint)
  }
  if (out.length === 0) throw new Error("runner-storage: no endpoints given")
  return out
}

// a leader hint that cannot be dialled from elsewhere
const isDialable = (address: string) =>
  /^.+:\d{1,5}$/.test(address) && !address.startsWith("0.0.0.0:") && !address.startsWith("[::]:")

/** Recently failed endpoints are tried last for this long. */
const FAILURE_MEMORY_MS = 1000

/**
 * The client with everything the layer uses, plus the admin calls.
 */
export interface RunnerStorageClient {
  /** Effect's string-level storage interface, over gRPC. */
  readonly encoded: RunnerStorage.Encoded
  /** `Admin.SetLockExpiration`: sets the cluster-wide lock expiration E. */
  readonly setLockExpiration: (expiration: Duration.Input) => Effect.Effect<void, PersistenceError>
  /** `Admin.Status` of every known endpoint (each node's own view). */
  readonly status: Effect.Effect<
    ReadonlyArray<{ readonly endpoint: string; readonly status: StatusResponse | undefined; readonly error?: string }>
  >
  /** The `RequestId.client_id` of this client. */
  readonly clientId: string
  /** The endpoint that answered last (or was found to be the leader). */
  readonly currentEndpoint: () => string | undefined
  /** The endpoints known to this client (given ones and learned leader hints). */
  readonly endpoints: () => ReadonlyArray<string>
}

/**
 * Opens the gRPC channels (closed with the scope) and returns the client.
 */
export const make = (options: Options): Effect.Effect<RunnerStorageClient, never, Scope.Scope> =>
  Effect.gen(function*() {
    const proto = loadProto(options.protoPath)
    const initial = normalizeEndpoints(options.endpoints)
    const deadlineMs = Duration.toMillis(Duration.fromInputUnsafe(options.deadline ?? defaultDeadline))
    const attemptMs = Duration.toMillis(Duration.fromInputUnsafe(options.attemptTimeout ?? defaultAttemptTimeout))
    const retrySchedule: Schedule.Schedule<unknown, RunnerStorageCallError> = options.retrySchedule ??
      defaultRetrySchedule
    const credentials = options.credentials ?? grpc.credentials.createInsecure()
    const channelOptions: grpc.ChannelOptions = { ...defaultChannelOptions, ...options.channelOptions }
    const clientId = options.clientId ?? randomUUID()

    const endpoints: Array<Endpoint> = []
    let closed = false
    const addEndpoint = (address: string): Endpoint => {
      const existing = endpoints.find((e) => e.address === address)
      if (existing !== undefined) return existing
      const endpoint: Endpoint = {
        address,
        storage: new proto.RunnerStorage(address, credentials, channelOptions),
        admin: new proto.Admin(address, credentials, channelOptions),
        failedAt: 0
      }
      endpoints.push(endpoint)
      return endpoint
    }

    yield* Effect.acquireRelease(
      Effect.sync(() => {
        for (const address of initial) addEndpoint(address)
      }),
      () =>
        Effect.sync(() => {
          closed = true
          for (const endpoint of endpoints) {
            endpoint.storage.close()
            endpoint.admin.close()
          }
        })
    )

    let preferred: Endpoint | undefined
    let roundRobin = 0
    let sequence = 0
    const discoveryLock = Semaphore.makeUnsafe(1)

    const markFailed = (endpoint: Endpoint) => {
      endpoint.failedAt = Date.now()
      if (preferred === endpoint) preferred = undefined
    }
    const recentlyFailed = (endpoint: Endpoint) => Date.now() - endpoint.failedAt < FAILURE_MEMORY_MS

    const statusOf = (endpoint: Endpoint, timeoutMs: number) =>
      unary<StatusResponse, AdminMethod>(endpoint.admin, "Status", {}, new Date(Date.now() + timeoutMs)).pipe(
        Effect.map((status) => ({ endpoint, status, error: undefined as string | undefined })),
        Effect.catch((error) =>
          Effect.succeed({ endpoint, status: undefined as StatusResponse | undefined, error: error.message })
        )
      )

    const nextRoundRobin = (): Endpoint => {
      for (let i = 0; i < endpoints.length; i++) {
        const endpoint = endpoints[(roundRobin++) % endpoints.length]!
        if (!recentlyFailed(endpoint)) return endpoint
      }
      return endpoints[(roundRobin++) % endpoints.length]!
    }

    // Finds where to send the next attempt: the leader if some node knows it,
    // else a live node (it forwards or answers UNAVAILABLE), else the next one.
    const discover = (deadlineAt: number): Effect.Effect<Endpoint> =>
      discoveryLock.withPermits(1)(Effect.suspend(() => {
        if (preferred !== undefined) return Effect.succeed(preferred)
        const timeoutMs = Math.max(50, Math.min(1000, deadlineAt - Date.now()))
        return Effect.forEach([...endpoints], (endpoint) => statusOf(endpoint, timeoutMs), {
          concurrency: "unbounded"
        }).pipe(Effect.map((results) => {
          const answered = results.filter((r) => r.status !== undefined)
          for (const r of results) if (r.status === undefined) r.endpoint.failedAt = Date.now()
          const byTerm = [...answered].sort((a, b) => b.status!.term - a.status!.term)
          const leaders = byTerm.filter((r) => r.status!.role === "leader")
          // a leader that just failed a call (stepping down, lost its quorum)
          // is tried again only when nothing else is left
          const leader = leaders.find((r) => !recentlyFailed(r.endpoint))
          if (leader !== undefined) {
            preferred = leader.endpoint
            return leader.endpoint
          }
          for (const r of byTerm) {
            const hint = r.status!.leader_address
            if (hint === "" || !isDialable(hint) || closed) continue
            const endpoint = addEndpoint(hint)
            if (!recentlyFailed(endpoint)) return endpoint
          }
          const live = answered.map((r) => r.endpoint).filter((e) => !recentlyFailed(e))
          if (live.length > 0) return live[(roundRobin++) % live.length]!
          if (leaders.length > 0) return leaders[0]!.endpoint
          return nextRoundRobin()
        }))
      }))

    const pick = (deadlineAt: number): Effect.Effect<Endpoint> =>
      Effect.suspend(() => preferred !== undefined ? Effect.succeed(preferred) : discover(deadlineAt))

    const invoke = <Res>(
      service: "RunnerStorage" | "Admin",
      method: StorageMethod | AdminMethod,
      makeRequest: () => object
    ): Effect.Effect<Res, PersistenceError> =>
      Effect.suspend(() => {
        const fullMethod = `runner_storage.v1.${service}/${method}`
        const request = makeRequest() // once per logical call: retries reuse its RequestId
        const deadlineAt = Date.now() + deadlineMs
        let attempts = 0
        let last: RunnerStorageCallError | undefined

        const attempt: Effect.Effect<Res, RunnerStorageCallError> = Effect.gen(function*() {
          if (closed) {
            return yield* Effect.fail(
              new RunnerStorageCallError({
                code: grpc.status.CANCELLED,
                details: "the client's scope is closed",
                method: fullMethod,
                endpoint: undefined,
                retryable: false,
                attempts
              })
            )
          }
          const endpoint = yield* pick(deadlineAt)
          attempts++
          const attemptDeadline = new Date(Math.min(deadlineAt, Date.now() + attemptMs))
          const client = (service === "Admin" ? endpoint.admin : endpoint.storage) as unknown as DynamicClient<string>
          return yield* unary<Res>(client, method, request, attemptDeadline).pipe(
            Effect.tap(() =>
              Effect.sync(() => {
                endpoint.failedAt = 0
                preferred = endpoint
              })
            ),
            Effect.mapError((error) => {
              const code: grpc.status = typeof (error as grpc.ServiceError).code === "number"
                ? (error as grpc.ServiceError).code
                : grpc.status.UNKNOWN
              const details = (error as grpc.ServiceError).details ?? error.message
              const retryable = isRetryable(code, details, Date.now() < deadlineAt - 5)
              if (retryable) markFailed(endpoint)
              last = new RunnerStorageCallError({
                code,
                details,
                method: fullMethod,
                endpoint: endpoint.address,
                retryable,
                attempts,
                cause: error
              })
              return last
            })
          )
        })

        return attempt.pipe(
          Effect.retry({
            schedule: retrySchedule,
            while: (error) => error.retryable && Date.now() < deadlineAt
          }),
          Effect.timeoutOrElse({
            duration: Duration.millis(deadlineMs),
            orElse: () =>
              Effect.fail(
                new RunnerStorageCallError({
                  code: grpc.status.DEADLINE_EXCEEDED,
                  details: `deadline of ${deadlineMs} ms exceeded` +
                    (last ? `; last error: ${last.codeName}: ${last.details}` : ""),
                  method: fullMethod,
                  endpoint: last?.endpoint,
                  retryable: false,
                  attempts,
                  cause: last
                })
              )
          }),
          Effect.mapError((cause) => new PersistenceError({ cause }))
        )
      })

    const requestId = (): RequestId => ({ client_id: clientId, sequence: ++sequence })

    const encoded: RunnerStorage.Encoded = {
      getRunners: invoke<GetRunnersResponse>("RunnerStorage", "GetRunners", () => ({})).pipe(
        Effect.map((response) => response.runners.map((entry) => [entry.runner, entry.healthy] as const))
      ),
      register: (address, runner, healthy) =>
        invoke<RegisterResponse>("RunnerStorage", "Register", () => ({
          address,
          runner,
          healthy,
          request_id: requestId()
        })).pipe(Effect.map((response) => Number(response.machine_id))),
      unregister: (address) =>
        Effect.asVoid(invoke("RunnerStorage", "Unregister", () => ({ address, request_id: requestId() }))),
      setRunnerHealth: (address, healthy) =>
        Effect.asVoid(
          invoke("RunnerStorage", "SetRunnerHealth", () => ({ address, healthy, request_id: requestId() }))
        ),
      acquire: (address, shardIds) =>
        invoke<ShardIdsResponse>("RunnerStorage", "Acquire", () => ({
          address,
          shard_ids: shardIds,
          request_id: requestId()
        })).pipe(Effect.map((response) => [...response.shard_ids])),
      refresh: (address, shardIds) =>
        invoke<ShardIdsResponse>("RunnerStorage", "Refresh", () => ({
          address,
          shard_ids: shardIds,
          request_id: requestId()
        })).pipe(Effect.map((response) => [...response.shard_ids])),
      release: (address, shardId) =>
        Effect.asVoid(
          invoke("RunnerStorage", "Release", () => ({ address, shard_id: shardId, request_id: requestId() }))
        ),
      releaseAll: (address) =>
        Effect.asVoid(invoke("RunnerStorage", "ReleaseAll", () => ({ address, request_id: requestId() })))
    }

    const setLockExpiration = (expiration: Duration.Input) =>
      Effect.asVoid(
        invoke("Admin", "SetLockExpiration", () => ({
          lock_expiration_ms: Math.round(Duration.toMillis(Duration.fromInputUnsafe(expiration)))
        }))
      )

    const status = Effect.suspend(() =>
      Effect.forEach([...endpoints], (endpoint) => statusOf(endpoint, Math.min(deadlineMs, 2000)), {
        concurrency: "unbounded"
      })
    ).pipe(
      Effect.map((results) =>
        results.map((r) => ({
          endpoint: r.endpoint.address,
          status: r.status,
          ...(r.error !== undefined ? { error: r.error } : {})
        }))
      )
    )

    return {
      encoded,
      setLockExpiration,
      status,
      clientId,
      currentEndpoint: () => preferred?.address,
      endpoints: () => endpoints.map((e) => e.address)
    } satisfies RunnerStorageClient
  })

/**
 * The string-level `RunnerStorage.Encoded` over gRPC (channels closed with the
 * scope).
 */
export const makeEncoded = (options: Options): Effect.Effect<RunnerStorage.Encoded, never, Scope.Scope> =>
  Effect.map(make(options), (client) => client.encoded)

/**
 * A `RunnerStorage` layer backed by a runner-storage cluster, built with
 * Effect's `RunnerStorage.makeEncoded`.
 */
export const layer = (options: Options): Layer.Layer<RunnerStorage.RunnerStorage> =>
  Layer.effect(RunnerStorage.RunnerStorage, Effect.map(makeEncoded(options), RunnerStorage.makeEncoded))
