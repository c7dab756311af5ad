/**
 * The options of `layer` / `make`, their defaults, the `Config` that
 * `layerConfig()` reads by default, and their validation into what the
 * client runs with (`Resolved`). Reading the TLS files happens here, once,
 * when the layer is built.
 */
import * as Config from "effect/Config"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Schedule from "effect/Schedule"
import { createHash, randomUUID } from "node:crypto"
import { readFileSync } from "node:fs"
import { InvalidNamespaceError, InvalidOptionError, type RunnerStorageCallError } from "./errors.js"
import type { Tls } from "./transport.js"

/** TLS towards the nodes: PEM text, or the path of a PEM file, for each part. */
export interface TlsOptions {
  /** The CA that signed the nodes' certificates. Default: Node's bundled CAs. */
  readonly ca?: string | Uint8Array | undefined
  /** A client certificate, for clusters that check one (the store does not require it). */
  readonly cert?: string | Uint8Array | undefined
  /** The client certificate's private key. */
  readonly key?: string | Uint8Array | Redacted.Redacted<string> | undefined
  /** The name the nodes' certificates must carry, when not the endpoint's host. */
  readonly serverName?: string | undefined
}

export interface Options {
  /**
   * The runner-storage nodes, as `"host:port"` (a comma-separated string is
   * accepted too). Any node will do: followers forward to the leader, and the
   * client follows the leader it learns of.
   */
  readonly endpoints: ReadonlyArray<string> | string
  /**
   * The namespace every call acts in (at most 255 bytes). Runners, locks,
   * machine ids and E are per namespace, as SqlRunnerStorage's table prefix
   * separates clusters. Default: `"default"`.
   */
  readonly namespace?: string | undefined
  /** The bearer token the cluster requires (its `auth_token`). Default: none. */
  readonly token?: Redacted.Redacted<string> | string | undefined
  /** TLS: `true` for the system's CAs, or the CA (and a client identity). Default: plaintext. */
  readonly tls?: TlsOptions | boolean | undefined
  /** Time budget of one logical call, retries included. Default: 5 seconds. */
  readonly deadline?: Duration.Input | undefined
  /**
   * Time budget of one attempt at one node (capped by what is left of
   * `deadline`); an attempt that runs out is retried at another node.
   * Default: 2 seconds.
   */
  readonly attemptTimeout?: Duration.Input | undefined
  /**
   * Delays between the attempts of one call; retrying also stops when the
   * schedule ends or at the deadline. Default: exponential from 25 ms,
   * doubling, capped at 500 ms, jittered.
   */
  readonly retrySchedule?: Schedule.Schedule<unknown, RunnerStorageCallError> | undefined
  /** The `RequestId.client_id` of this instance's writes. Default: a random UUID. */
  readonly clientId?: string | undefined
  /**
   * When the namespace already runs with another E than this runner's
   * `ShardingConfig.shardLockExpiration`: `false` (default) fails the layer,
   * `true` makes the namespace's E this runner's.
   */
  readonly takeOverLockExpiration?: boolean | undefined
}

export const defaultDeadline: Duration.Duration = Duration.seconds(5)
export const defaultAttemptTimeout: Duration.Duration = Duration.seconds(2)

export const defaultRetrySchedule: Schedule.Schedule<Duration.Duration, unknown> = Schedule.min([
  Schedule.exponential(Duration.millis(25), 2),
  Schedule.spaced(Duration.millis(500))
]).pipe(Schedule.jittered)

/** Most bytes of a namespace name (SPEC §3). */
export const NAMESPACE_BYTES_MAX = 255

/** What the client runs with, validated. */
export interface Resolved {
  readonly endpoints: ReadonlyArray<string>
  readonly namespace: string
  /** `"Bearer <token>"`, the header value. */
  readonly authorization: string | undefined
  readonly tls: Tls | undefined
  /** Tells TLS identities apart, so that sessions are shared only between equal ones. */
  readonly tlsKey: string
  readonly deadlineMs: number
  readonly attemptTimeoutMs: number
  readonly retrySchedule: Schedule.Schedule<unknown, RunnerStorageCallError>
  readonly clientId: string
  readonly takeOverLockExpiration: boolean
}

const ENDPOINT = /^(?:\[[0-9a-fA-F:.]+\]|[^\s:/[\]]+):(\d{1,5})$/

export const validateNamespace = (namespace: string): Effect.Effect<string, InvalidNamespaceError> => {
  if (namespace === "") {
    return Effect.fail(new InvalidNamespaceError({ namespace, reason: "it is empty (omit it for \"default\")" }))
  }
  const bytes = Buffer.byteLength(namespace, "utf8")
  if (bytes > NAMESPACE_BYTES_MAX) {
    return Effect.fail(
      new InvalidNamespaceError({ namespace, reason: `it has ${bytes} bytes; at most ${NAMESPACE_BYTES_MAX} are allowed` })
    )
  }
  return Effect.succeed(namespace)
}

const validateEndpoints = (endpoints: ReadonlyArray<string> | string): Effect.Effect<Array<string>, InvalidOptionError> =>
  Effect.suspend(() => {
    const list = typeof endpoints === "string" ? endpoints.split(",") : [...endpoints]
    const out: Array<string> = []
    for (const raw of list) {
      const endpoint = raw.trim()
      if (endpoint === "") continue
      const match = ENDPOINT.exec(endpoint)
      if (match === null || Number(match[1]) > 65535) {
        return Effect.fail(
          new InvalidOptionError({ option: "endpoints", reason: `${JSON.stringify(endpoint)} is not "host:port"` })
        )
      }
      if (!out.includes(endpoint)) out.push(endpoint)
    }
    if (out.length === 0) return Effect.fail(new InvalidOptionError({ option: "endpoints", reason: "none given" }))
    return Effect.succeed(out)
  })

const duration = (option: string, input: Duration.Input | undefined, fallback: Duration.Duration) =>
  Effect.suspend(() => {
    const parsed = input === undefined ? Option.some(fallback) : Duration.fromInput(input)
    const ms = Option.isSome(parsed) ? Duration.toMillis(parsed.value) : NaN
    if (!(ms >= 1) || !Number.isFinite(ms)) {
      return Effect.fail(new InvalidOptionError({ option, reason: `${String(input)} is not a duration of at least 1 ms` }))
    }
    return Effect.succeed(ms)
  })

const authorizationOf = (token: Redacted.Redacted<string> | string | undefined) =>
  Effect.suspend(() => {
    if (token === undefined) return Effect.succeed(undefined)
    const value = Redacted.isRedacted(token) ? Redacted.value(token) : token
    // an HTTP/2 header value: visible ASCII
    if (value === "" || !/^[\x21-\x7e]+$/.test(value)) {
      return Effect.fail(
        new InvalidOptionError({ option: "token", reason: "it must be non-empty visible ASCII (a bearer token)" })
      )
    }
    return Effect.succeed(`Bearer ${value}`)
  })

/** PEM text as given, or the contents of the file it names. */
const pem = (option: string, value: string | Uint8Array | Redacted.Redacted<string> | undefined) =>
  Effect.suspend(() => {
    if (value === undefined) return Effect.succeed(undefined)
    const raw = Redacted.isRedacted(value) ? Redacted.value(value) : value
    if (typeof raw !== "string") return Effect.succeed(Buffer.from(raw))
    if (raw.includes("-----BEGIN")) return Effect.succeed(Buffer.from(raw, "utf8"))
    return Effect.try({
      try: () => readFileSync(raw),
      catch: (error) =>
        new InvalidOptionError({ option, reason: `cannot read ${raw}: ${(error as Error).message}` })
    })
  })

const tlsOf = (tls: TlsOptions | boolean | undefined) =>
  Effect.gen(function*() {
    if (tls === undefined || tls === false) return undefined
    const options: TlsOptions = tls === true ? {} : tls
    const resolved: Tls = {
      ca: yield* pem("tls.ca", options.ca),
      cert: yield* pem("tls.cert", options.cert),
      key: yield* pem("tls.key", options.key),
      serverName: options.serverName
    }
    if ((resolved.cert === undefined) !== (resolved.key === undefined)) {
      return yield* Effect.fail(
        new InvalidOptionError({ option: "tls", reason: "a client certificate needs its key, and a key its certificate" })
      )
    }
    return resolved
  })

const tlsKeyOf = (tls: Tls | undefined): string => {
  if (tls === undefined) return "plaintext"
  const hash = createHash("sha256")
  for (const part of [tls.ca, tls.cert, tls.key]) hash.update(part ?? "-").update("\0")
  hash.update(tls.serverName ?? "-")
  return `tls:${hash.digest("hex")}`
}

export const resolve = (options: Options): Effect.Effect<Resolved, InvalidOptionError | InvalidNamespaceError> =>
  Effect.gen(function*() {
    const endpoints = yield* validateEndpoints(options.endpoints)
    const namespace = yield* validateNamespace(options.namespace ?? "default")
    const tls = yield* tlsOf(options.tls)
    const clientId = options.clientId ?? randomUUID()
    if (clientId === "") return yield* Effect.fail(new InvalidOptionError({ option: "clientId", reason: "it is empty" }))
    return {
      endpoints,
      namespace,
      authorization: yield* authorizationOf(options.token),
      tls,
      tlsKey: tlsKeyOf(tls),
      deadlineMs: yield* duration("deadline", options.deadline, defaultDeadline),
      attemptTimeoutMs: yield* duration("attemptTimeout", options.attemptTimeout, defaultAttemptTimeout),
      retrySchedule: options.retrySchedule ?? defaultRetrySchedule,
      clientId,
      takeOverLockExpiration: options.takeOverLockExpiration ?? false
    }
  })

// --- Config ------------------------------------------------------------------------

const optional = <A>(config: Config.Config<A>): Config.Config<A | undefined> => Config.withDefault(config, undefined)

/**
 * The options read from configuration, as `layerConfig()` reads them by
 * default (names as `runner-storage ctl` reads its own):
 *
 * | key | option |
 * |---|---|
 * | `RUNNER_STORAGE_ENDPOINTS` | `endpoints` (comma separated; required) |
 * | `RUNNER_STORAGE_NAMESPACE` | `namespace` |
 * | `RUNNER_STORAGE_TOKEN` | `token` (redacted) |
 * | `RUNNER_STORAGE_TLS` | `tls: true` (system CAs) when no CA is given |
 * | `RUNNER_STORAGE_TLS_CA`, `_TLS_CERT`, `_TLS_KEY` | `tls.ca`, `tls.cert`, `tls.key` (PEM or a file path; the key redacted) |
 * | `RUNNER_STORAGE_TLS_SERVER_NAME` | `tls.serverName` |
 * | `RUNNER_STORAGE_DEADLINE`, `RUNNER_STORAGE_ATTEMPT_TIMEOUT` | `deadline`, `attemptTimeout` (`"5 seconds"`) |
 * | `RUNNER_STORAGE_CLIENT_ID` | `clientId` |
 * | `RUNNER_STORAGE_TAKE_OVER_LOCK_EXPIRATION` | `takeOverLockExpiration` |
 */
export const config: Config.Config<Options> = Config.all({
  endpoints: Config.String("RUNNER_STORAGE_ENDPOINTS"),
  namespace: optional(Config.String("RUNNER_STORAGE_NAMESPACE")),
  token: optional(Config.Redacted("RUNNER_STORAGE_TOKEN")),
  tlsOn: Config.withDefault(Config.Boolean("RUNNER_STORAGE_TLS"), false),
  ca: optional(Config.String("RUNNER_STORAGE_TLS_CA")),
  cert: optional(Config.String("RUNNER_STORAGE_TLS_CERT")),
  key: optional(Config.Redacted("RUNNER_STORAGE_TLS_KEY")),
  serverName: optional(Config.String("RUNNER_STORAGE_TLS_SERVER_NAME")),
  deadline: optional(Config.Duration("RUNNER_STORAGE_DEADLINE")),
  attemptTimeout: optional(Config.Duration("RUNNER_STORAGE_ATTEMPT_TIMEOUT")),
  clientId: optional(Config.String("RUNNER_STORAGE_CLIENT_ID")),
  takeOverLockExpiration: optional(Config.Boolean("RUNNER_STORAGE_TAKE_OVER_LOCK_EXPIRATION"))
}).pipe(Config.map(({ ca, cert, key, serverName, tlsOn, ...rest }): Options => {
  const anyTls = ca !== undefined || cert !== undefined || key !== undefined || serverName !== undefined
  return { ...rest, tls: anyTls ? { ca, cert, key, serverName } : tlsOn }
}))
