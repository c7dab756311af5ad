/**
 * Where each call goes and what is retried: the client under the layer.
 *
 * - A call goes to the endpoint that answered last (`preferred`). With none
 *   known (start, or it failed), the client asks every node's `Admin.Status`
 *   and goes to the node that says it leads, else to a `leader_address`
 *   hint, else to any node that answered (it forwards, or answers
 *   `UNAVAILABLE`). A node's `x-runner-storage-leader` metadata (on
 *   `UNAVAILABLE`, and on an answer a follower forwarded) moves the next
 *   call to the leader it names. Leaders not in `endpoints` are added.
 * - `UNAVAILABLE` (transport failures included) and an attempt that ran out
 *   of time are retried on the next endpoint after the `retrySchedule`
 *   delay, until the call's deadline; every other status is not.
 * - Every write carries `RequestId { client_id, sequence }`: the sequence
 *   grows with each logical call and its retries reuse it, so the store
 *   applies a retried write once.
 *
 * The common case, the preferred endpoint answering, runs as one
 * `Effect.callback` around one HTTP/2 request: no schedule, no fiber, no
 * timer besides the attempt's own.
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Semaphore from "effect/Semaphore"
import type { OutgoingHttpHeaders } from "node:http2"
import * as codec from "./codec.js"
import { RunnerStorageCallError } from "./errors.js"
import type { Resolved } from "./options.js"
import {
  acquireConnection,
  baseHeaders,
  Code,
  type Connection,
  messageOf,
  releaseConnection,
  type Reply,
  unary
} from "./transport.js"

/** One RPC: its path and how its answer decodes. */
export interface Method<Res> {
  readonly call: string
  readonly method: string
  readonly path: string
  readonly decode: (buffer: Buffer, start: number, end: number) => Res
}

const method = <Res>(
  service: "RunnerStorage" | "Admin",
  call: string,
  decode: (buffer: Buffer, start: number, end: number) => Res
): Method<Res> => ({
  call,
  method: `runner_storage.v1.${service}/${call}`,
  path: `/runner_storage.v1.${service}/${call}`,
  decode
})

/** Every RPC this client makes. */
export const methods = {
  getRunners: method("RunnerStorage", "GetRunners", codec.decodeGetRunners),
  register: method("RunnerStorage", "Register", codec.decodeRegister),
  unregister: method("RunnerStorage", "Unregister", codec.decodeNothing),
  setRunnerHealth: method("RunnerStorage", "SetRunnerHealth", codec.decodeNothing),
  acquire: method("RunnerStorage", "Acquire", codec.decodeShardIds),
  refresh: method("RunnerStorage", "Refresh", codec.decodeShardIds),
  release: method("RunnerStorage", "Release", codec.decodeNothing),
  releaseAll: method("RunnerStorage", "ReleaseAll", codec.decodeNothing),
  status: method("Admin", "Status", codec.decodeStatus),
  setLockExpiration: method("Admin", "SetLockExpiration", codec.decodeNothing),
  ensureLockExpiration: method("Admin", "EnsureLockExpiration", codec.decodeEnsureLockExpiration),
  listNamespaces: method("Admin", "ListNamespaces", codec.decodeListNamespaces)
} as const

interface Endpoint {
  readonly address: string
  readonly connection: Connection
  /** When a call here last failed in a way that says "try elsewhere" (0: never). */
  failedAt: number
}

/** Recently failed endpoints are tried last for this long. */
const FAILURE_MEMORY_MS = 1000
/** Bounds of one `Admin.Status` probe while looking for the leader. */
const DISCOVERY_TIMEOUT_MS = { min: 50, max: 1000 }
/** Most endpoints a client learns from leader hints, beyond those it was given. */
const LEARNED_ENDPOINTS_MAX = 16

/** A leader hint that can be dialled from elsewhere. */
const isDialable = (address: string) =>
  /^.+:\d{1,5}$/.test(address) && !address.startsWith("0.0.0.0:") && !address.startsWith("[::]:")

/** The state of one logical call across its attempts. */
interface CallState {
  readonly deadlineAt: number
  attempts: number
  last: RunnerStorageCallError | undefined
}

/** The client of one layer instance; its connections are the process's shared ones. */
export class Client {
  private readonly endpoints: Array<Endpoint> = []
  private preferred: Endpoint | undefined
  private roundRobin = 0
  private sequence = 0
  private closed = false
  private readonly discoveryLock = Semaphore.makeUnsafe(1)
  private readonly headers = new Map<string, OutgoingHttpHeaders>()
  readonly ns: codec.Namespace
  readonly id: codec.ClientId

  constructor(readonly options: Resolved) {
    this.ns = codec.namespaceOf(options.namespace)
    this.id = codec.clientIdOf(options.clientId)
    for (const address of options.endpoints) this.add(address)
  }

  /** Releases this client's shares of the connections; later calls fail. */
  close() {
    if (this.closed) return
    this.closed = true
    for (const endpoint of this.endpoints) releaseConnection(endpoint.connection)
  }

  currentEndpoint(): string | undefined {
    return this.preferred?.address
  }

  knownEndpoints(): ReadonlyArray<string> {
    return this.endpoints.map((e) => e.address)
  }

  /** The next write's sequence (retries of one call reuse it). */
  nextSequence(): number {
    return ++this.sequence
  }

  private add(address: string): Endpoint {
    const existing = this.endpoints.find((e) => e.address === address)
    if (existing !== undefined) return existing
    const connection = acquireConnection(address, this.options.tls, this.options.tlsKey)
    const endpoint: Endpoint = { address, connection, failedAt: 0 }
    this.endpoints.push(endpoint)
    return endpoint
  }

  private headersOf(path: string): OutgoingHttpHeaders {
    let headers = this.headers.get(path)
    if (headers === undefined) {
      headers = baseHeaders(path, this.options.authorization)
      this.headers.set(path, headers)
    }
    return headers
  }

  private recentlyFailed(endpoint: Endpoint) {
    return endpoint.failedAt !== 0 && Date.now() - endpoint.failedAt < FAILURE_MEMORY_MS
  }

  /** Follows a leader hint: the next calls go to the node it names. */
  private follow(hint: string | undefined, from: Endpoint) {
    if (hint === undefined || hint === from.address || !isDialable(hint) || this.closed) return
    const known = this.endpoints.find((e) => e.address === hint)
    if (known !== undefined) {
      this.preferred = known
    } else if (this.endpoints.length < this.options.endpoints.length + LEARNED_ENDPOINTS_MAX) {
      this.preferred = this.add(hint)
    }
  }

  /**
   * One logical call: `encode(sequence)` builds its request once (retries
   * resend the same bytes, so the same RequestId).
   */
  call<Res>(m: Method<Res>, body: Buffer): Effect.Effect<Res, RunnerStorageCallError> {
    return Effect.suspend(() => {
      const state: CallState = { deadlineAt: Date.now() + this.options.deadlineMs, attempts: 0, last: undefined }
      const preferred = this.preferred
      if (this.closed || preferred === undefined) return this.retrying(m, body, state)
      return Effect.catch(this.attempt(m, body, preferred, state), (error) =>
        error.retryable ? this.retrying(m, body, state) : Effect.fail(error))
    })
  }

  /** One try at one endpoint. */
  private attempt<Res>(m: Method<Res>, body: Buffer, endpoint: Endpoint, state: CallState) {
    return Effect.callback<Res, RunnerStorageCallError>((resume) => {
      if (this.closed) {
        resume(Effect.fail(this.error(m, state, Code.CANCELLED, "the client's scope is closed", undefined, false)))
        return
      }
      state.attempts++
      const timeoutMs = Math.max(1, Math.min(this.options.attemptTimeoutMs, state.deadlineAt - Date.now()))
      const cancel = unary(endpoint.connection, this.headersOf(m.path), body, timeoutMs, (reply) => {
        resume(this.settle(m, endpoint, state, reply))
      })
      return Effect.sync(cancel)
    })
  }

  /** How an attempt's reply ends it: a decoded answer, or a (retryable?) error. */
  private settle<Res>(
    m: Method<Res>,
    endpoint: Endpoint,
    state: CallState,
    reply: Reply
  ): Effect.Effect<Res, RunnerStorageCallError> {
    if (reply.code === Code.OK) {
      const frame = messageOf(reply.body)
      if (typeof frame === "string") {
        return Effect.fail(this.error(m, state, Code.INTERNAL, `${endpoint.address} sent ${frame}`, endpoint, false))
      }
      let value: Res
      try {
        value = m.decode(reply.body!, frame.start, frame.end)
      } catch (error) {
        const details = `${endpoint.address} sent a message that does not decode: ${(error as Error).message}`
        return Effect.fail(this.error(m, state, Code.INTERNAL, details, endpoint, false))
      }
      endpoint.failedAt = 0
      this.preferred = endpoint
      this.follow(reply.leaderHint, endpoint)
      return Effect.succeed(value)
    }
    const timeLeft = Date.now() < state.deadlineAt - 1
    const retryable = reply.code === Code.UNAVAILABLE || (reply.code === Code.DEADLINE_EXCEEDED && timeLeft)
    if (retryable) {
      endpoint.failedAt = Date.now()
      if (this.preferred === endpoint) this.preferred = undefined
      this.follow(reply.leaderHint, endpoint)
    }
    return Effect.fail(this.error(m, state, reply.code, reply.message, endpoint, retryable))
  }

  private error(
    m: Method<unknown>,
    state: CallState,
    code: number,
    details: string,
    endpoint: Endpoint | undefined,
    retryable: boolean,
    cause?: unknown
  ): RunnerStorageCallError {
    const error = new RunnerStorageCallError({
      code,
      call: m.call,
      method: m.method,
      details,
      endpoint: endpoint?.address,
      attempts: state.attempts,
      namespace: this.options.namespace,
      retryable,
      ...(cause !== undefined ? { cause } : {})
    })
    state.last = error
    return error
  }

  /** The slow path: find an endpoint, try, wait, try again, until the deadline. */
  private retrying<Res>(m: Method<Res>, body: Buffer, state: CallState): Effect.Effect<Res, RunnerStorageCallError> {
    const once = Effect.suspend(() => {
      if (this.closed) {
        return Effect.fail(this.error(m, state, Code.CANCELLED, "the client's scope is closed", undefined, false))
      }
      return Effect.flatMap(this.pick(state.deadlineAt), (endpoint) => this.attempt(m, body, endpoint, state))
    })
    const outOfTime = () => {
      const last = state.last
      return this.error(
        m,
        state,
        Code.DEADLINE_EXCEEDED,
        `deadline of ${this.options.deadlineMs} ms exceeded` +
          (last !== undefined ? `; last error: ${last.codeName}: ${last.details}` : ""),
        last?.endpoint !== undefined ? this.endpoints.find((e) => e.address === last.endpoint) : undefined,
        false,
        last
      )
    }
    return once.pipe(
      Effect.retry({
        schedule: this.options.retrySchedule,
        while: (error) => error.retryable && Date.now() < state.deadlineAt
      }),
      // retrying stopped: out of time (a retryable error), or the schedule ended, or a final error
      Effect.catch((error) => Effect.fail(error.retryable && Date.now() >= state.deadlineAt - 1 ? outOfTime() : error)),
      Effect.timeoutOrElse({
        duration: Duration.millis(Math.max(0, state.deadlineAt - Date.now())),
        orElse: () => Effect.fail(outOfTime())
      })
    )
  }

  private pick(deadlineAt: number): Effect.Effect<Endpoint> {
    return Effect.suspend(() => this.preferred !== undefined ? Effect.succeed(this.preferred) : this.discover(deadlineAt))
  }

  /** `Admin.Status` of one endpoint, or undefined when it did not answer. */
  statusOf(endpoint: Endpoint, timeoutMs: number): Effect.Effect<codec.StatusResponse | undefined> {
    return Effect.callback<codec.StatusResponse | undefined>((resume) => {
      const body = codec.encodeNamespaceOnly(this.ns)
      const cancel = unary(endpoint.connection, this.headersOf(methods.status.path), body, timeoutMs, (reply) => {
        const frame = reply.code === Code.OK ? messageOf(reply.body) : "failed"
        if (typeof frame === "string") return resume(Effect.succeed(undefined))
        try {
          resume(Effect.succeed(codec.decodeStatus(reply.body!, frame.start, frame.end)))
        } catch {
          resume(Effect.succeed(undefined))
        }
      })
      return Effect.sync(cancel)
    })
  }

  /** `Admin.Status` of every known endpoint. */
  statusAll(timeoutMs: number) {
    return Effect.forEach([...this.endpoints], (endpoint) =>
      Effect.map(this.statusOf(endpoint, timeoutMs), (status) => ({ endpoint: endpoint.address, status })), {
      concurrency: "unbounded"
    })
  }

  /**
   * Finds where to send the next attempt: the leader if some node knows it,
   * else a live node (it forwards or answers UNAVAILABLE), else the next one.
   */
  private discover(deadlineAt: number): Effect.Effect<Endpoint> {
    return this.discoveryLock.withPermits(1)(Effect.suspend(() => {
      if (this.preferred !== undefined) return Effect.succeed(this.preferred)
      const timeoutMs = Math.max(
        DISCOVERY_TIMEOUT_MS.min,
        Math.min(DISCOVERY_TIMEOUT_MS.max, deadlineAt - Date.now())
      )
      const endpoints = [...this.endpoints]
      return Effect.map(
        Effect.forEach(endpoints, (e) => this.statusOf(e, timeoutMs), { concurrency: "unbounded" }),
        (statuses) => this.choose(endpoints, statuses)
      )
    }))
  }

  private choose(endpoints: ReadonlyArray<Endpoint>, statuses: ReadonlyArray<codec.StatusResponse | undefined>) {
    const answered: Array<{ endpoint: Endpoint; status: codec.StatusResponse }> = []
    endpoints.forEach((endpoint, i) => {
      const status = statuses[i]
      if (status === undefined) endpoint.failedAt = Date.now()
      else answered.push({ endpoint, status })
    })
    answered.sort((a, b) => b.status.term - a.status.term)
    const leaders = answered.filter((r) => r.status.role === "leader")
    // a leader that just failed a call (stepping down, lost its quorum)
    // is tried again only when nothing else is left
    const leader = leaders.find((r) => !this.recentlyFailed(r.endpoint))
    if (leader !== undefined) {
      this.preferred = leader.endpoint
      return leader.endpoint
    }
    for (const r of answered) {
      const hint = r.status.leaderAddress
      if (hint === "" || !isDialable(hint) || this.closed) continue
      const known = this.endpoints.find((e) => e.address === hint)
      const endpoint = known ?? (this.endpoints.length < this.options.endpoints.length + LEARNED_ENDPOINTS_MAX
        ? this.add(hint)
        : undefined)
      if (endpoint !== undefined && !this.recentlyFailed(endpoint)) return endpoint
    }
    const live = answered.map((r) => r.endpoint).filter((e) => !this.recentlyFailed(e))
    if (live.length > 0) return live[(this.roundRobin++) % live.length]!
    if (leaders.length > 0) return leaders[0]!.endpoint
    for (let i = 0; i < this.endpoints.length; i++) {
      const endpoint = this.endpoints[(this.roundRobin++) % this.endpoints.length]!
      if (!this.recentlyFailed(endpoint)) return endpoint
    }
    return this.endpoints[(this.roundRobin++) % this.endpoints.length]!
  }
}
