/**
 * gRPC unary calls over Node's own `node:http2`, without grpc-js: one HTTP/2
 * session per endpoint (and TLS identity), shared by every client instance
 * of the process and closed when the last one is released.
 *
 * Why not grpc-js: for this client's small unary calls its per-call work
 * (call stack and filters, metadata objects, reflection-based codecs)
 * cost more CPU than the call's whole round trip on the server; see
 * `clients/effect/README.md` ("Speed") for the profile and the figures. What
 * a unary call needs is small: a POST with five headers, one length-prefixed
 * message each way, and the status in the trailers.
 *
 * This module knows HTTP/2 and the gRPC wire, nothing of Effect or of the
 * store's calls; `client.ts` decides where to send what and what to retry.
 */
import * as http2 from "node:http2"

/** gRPC status codes (the subset this client names). */
export const Code = {
  OK: 0,
  CANCELLED: 1,
  UNKNOWN: 2,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  ALREADY_EXISTS: 6,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  FAILED_PRECONDITION: 9,
  ABORTED: 10,
  OUT_OF_RANGE: 11,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  DATA_LOSS: 15,
  UNAUTHENTICATED: 16
} as const

const CODE_NAMES: ReadonlyArray<string> = Object.keys(Code)

export const codeName = (code: number): string => CODE_NAMES[code] ?? `CODE_${code}`

/** The metadata key in which a node names the leader (SPEC §6, `service/status.rs`). */
export const LEADER_KEY = "x-runner-storage-leader"

/** TLS material, already read: PEM bytes. */
export interface Tls {
  readonly ca: Buffer | undefined
  readonly cert: Buffer | undefined
  readonly key: Buffer | undefined
  readonly serverName: string | undefined
}

/** How a call ended, before any decoding of the message. */
export interface Reply {
  /** gRPC status; transport failures are `UNAVAILABLE`, a local timeout `DEADLINE_EXCEEDED`. */
  readonly code: number
  readonly message: string
  /** The response frame (5-byte prefix included) when `code` is OK. */
  readonly body: Buffer | undefined
  /** `x-runner-storage-leader` of the headers or trailers. */
  readonly leaderHint: string | undefined
  /** The attempt timed out here (no status from the server). */
  readonly timedOut: boolean
  /** The call may not have reached the server at all (no connection, refused stream). */
  readonly notSent: boolean
}

/** Requests one session carries before the next call opens a fresh one (stream ids are 31-bit, odd). */
const STREAMS_PER_SESSION_MAX = 1_000_000_000
/** How long an attempt's timeout waits for a PING answer before it declares the session dead. */
const PING_TIMEOUT_MS = 1000

/**
 * One shared HTTP/2 session to one endpoint. A session that errs, gets a
 * GOAWAY or closes is dropped and the next call dials a new one.
 */
export class Connection {
  users = 0
  private session: http2.ClientHttp2Session | undefined
  private streams = 0

  constructor(readonly address: string, private readonly tls: Tls | undefined, readonly key: string) {}

  /** The live session, dialled when there is none. */
  current(): http2.ClientHttp2Session {
    const existing = this.session
    if (existing !== undefined && !existing.destroyed && !existing.closed && this.streams < STREAMS_PER_SESSION_MAX) {
      this.streams++
      return existing
    }
    if (existing !== undefined) this.drop(existing)
    const session = this.dial()
    this.session = session
    this.streams = 1
    return session
  }

  private dial(): http2.ClientHttp2Session {
    const tls = this.tls
    const authority = `${tls === undefined ? "http" : "https"}://${this.address}`
    const session = tls === undefined
      ? http2.connect(authority)
      : http2.connect(authority, {
        ...(tls.ca !== undefined ? { ca: tls.ca } : {}),
        ...(tls.cert !== undefined ? { cert: tls.cert } : {}),
        ...(tls.key !== undefined ? { key: tls.key } : {}),
        ...(tls.serverName !== undefined ? { servername: tls.serverName } : {})
      })
    const forget = () => {
      if (this.session === session) this.session = undefined
    }
    // The session's error also fails its streams, which report it to their calls.
    session.on("error", forget)
    session.on("goaway", forget)
    session.on("close", forget)
    session.on("timeout", forget)
    session.setTimeout(0)
    return session
  }

  /** After an attempt timed out: a session that does not answer a PING is dead, drop it. */
  probe() {
    const session = this.session
    if (session === undefined || session.destroyed) return
    const timer = setTimeout(() => this.drop(session), PING_TIMEOUT_MS)
    timer.unref()
    try {
      session.ping((error) => {
        clearTimeout(timer)
        if (error) this.drop(session)
      })
    } catch {
      clearTimeout(timer)
      this.drop(session)
    }
  }

  private drop(session: http2.ClientHttp2Session) {
    if (this.session === session) this.session = undefined
    if (!session.destroyed) session.destroy()
  }

  close() {
    const session = this.session
    this.session = undefined
    if (session !== undefined && !session.destroyed) session.close()
  }
}

/** The process's shared connections, by endpoint and TLS identity. */
const connections = new Map<string, Connection>()

/** Takes a share of the connection to `address` (dialled lazily, on the first call). */
export const acquireConnection = (address: string, tls: Tls | undefined, tlsKey: string): Connection => {
  const key = `${tlsKey}|${address}`
  let connection = connections.get(key)
  if (connection === undefined) {
    connection = new Connection(address, tls, key)
    connections.set(key, connection)
  }
  connection.users++
  return connection
}

/** Gives a share back; the last one closes the session. */
export const releaseConnection = (connection: Connection) => {
  connection.users--
  if (connection.users > 0) return
  if (connections.get(connection.key) === connection) connections.delete(connection.key)
  connection.close()
}

/** Connections open in this process (for tests). */
export const openConnections = (): number => connections.size

// --- one unary call --------------------------------------------------------------

/** The headers of a method, built once per client: the path, the gRPC ones and the token. */
export const baseHeaders = (path: string, authorization: string | undefined): http2.OutgoingHttpHeaders => ({
  [http2.constants.HTTP2_HEADER_METHOD]: "POST",
  [http2.constants.HTTP2_HEADER_PATH]: path,
  [http2.constants.HTTP2_HEADER_CONTENT_TYPE]: "application/grpc",
  [http2.constants.HTTP2_HEADER_TE]: "trailers",
  ...(authorization !== undefined ? { authorization } : {})
})

/** HTTP status → gRPC code, for answers that carry no grpc-status (the gRPC spec's table). */
const fromHttpStatus = (status: number): number => {
  switch (status) {
    case 400:
      return Code.INTERNAL
    case 401:
      return Code.UNAUTHENTICATED
    case 403:
      return Code.PERMISSION_DENIED
    case 404:
      return Code.UNIMPLEMENTED
    case 429:
    case 502:
    case 503:
    case 504:
      return Code.UNAVAILABLE
    default:
      return Code.UNKNOWN
  }
}

const header = (value: string | Array<string> | number | undefined): string | undefined =>
  value === undefined ? undefined : Array.isArray(value) ? value[0] : String(value)

const decodeGrpcMessage = (value: string | undefined): string => {
  if (value === undefined) return ""
  try {
    return decodeURIComponent(value)
  } catch {
    return value
  }
}

/**
 * Sends one request frame and calls `done` once with how it ended. Returns
 * a function that cancels the call (then `done` is not called).
 */
export const unary = (
  connection: Connection,
  headers: http2.OutgoingHttpHeaders,
  body: Buffer,
  timeoutMs: number,
  done: (reply: Reply) => void
): () => void => {
  let finished = false
  let stream: http2.ClientHttp2Stream
  const finish = (reply: Reply) => {
    if (finished) return
    finished = true
    clearTimeout(timer)
    done(reply)
  }
  const timer = setTimeout(() => {
    if (finished) return
    finish({
      code: Code.DEADLINE_EXCEEDED,
      message: `no answer from ${connection.address} within ${timeoutMs} ms`,
      body: undefined,
      leaderHint: undefined,
      timedOut: true,
      notSent: false
    })
    stream?.close(http2.constants.NGHTTP2_CANCEL)
    connection.probe()
  }, timeoutMs)
  try {
    stream = connection.current().request(
      { ...headers, "grpc-timeout": `${Math.max(1, Math.ceil(timeoutMs))}m` },
      { endStream: false }
    )
  } catch (error) {
    finish(transportFailure(connection, error, true))
    return () => {}
  }
  let httpStatus = 0
  let grpcStatus: string | undefined
  let grpcMessage: string | undefined
  let leaderHint: string | undefined
  let first: Buffer | undefined
  let chunks: Array<Buffer> | undefined
  let failure: unknown
  stream.on("response", (h) => {
    httpStatus = Number(h[":status"])
    grpcStatus = header(h["grpc-status"])
    grpcMessage = header(h["grpc-message"])
    leaderHint = header(h[LEADER_KEY])
  })
  stream.on("data", (chunk: Buffer) => {
    if (first === undefined) first = chunk
    else (chunks ??= [first]).push(chunk)
  })
  stream.on("trailers", (t) => {
    grpcStatus = header(t["grpc-status"]) ?? grpcStatus
    grpcMessage = header(t["grpc-message"]) ?? grpcMessage
    leaderHint = header(t[LEADER_KEY]) ?? leaderHint
  })
  stream.on("error", (error) => {
    failure = error
  })
  stream.on("close", () => {
    if (finished) return
    if (grpcStatus === undefined) {
      finish(
        failure !== undefined || httpStatus === 0
          ? transportFailure(connection, failure ?? `stream closed (code ${stream.rstCode})`, httpStatus === 0)
          : {
            code: httpStatus === 200 ? Code.UNKNOWN : fromHttpStatus(httpStatus),
            message: `HTTP status ${httpStatus} without a gRPC status from ${connection.address}`,
            body: undefined,
            leaderHint,
            timedOut: false,
            notSent: false
          }
      )
      return
    }
    const code = Number(grpcStatus)
    finish({
      code,
      message: decodeGrpcMessage(grpcMessage),
      body: code === Code.OK ? (chunks !== undefined ? Buffer.concat(chunks) : first) : undefined,
      leaderHint,
      timedOut: false,
      notSent: false
    })
  })
  stream.end(body)
  return () => {
    if (finished) return
    finished = true
    clearTimeout(timer)
    stream.close(http2.constants.NGHTTP2_CANCEL)
  }
}

/** A failure below gRPC: no connection, a reset stream, a closed session. */
const transportFailure = (connection: Connection, error: unknown, notSent: boolean): Reply => {
  const text = error instanceof Error ? describe(error) : String(error)
  return {
    code: Code.UNAVAILABLE,
    message: `${connection.address}: ${text}`,
    body: undefined,
    leaderHint: undefined,
    timedOut: false,
    notSent: notSent || /ECONNREFUSED|REFUSED_STREAM|ENOTFOUND|EHOSTUNREACH/.test(text)
  }
}

/** An error's message with its code and cause (Node's http2 errors wrap the socket's). */
const describe = (error: Error): string => {
  const code = (error as { code?: string }).code
  const cause = (error as { cause?: unknown }).cause
  let text = code !== undefined && !error.message.includes(code) ? `${code}: ${error.message}` : error.message
  if (cause instanceof Error) text += ` (${describe(cause)})`
  return text
}

/** The message of a successful reply's frame: [start, end) of `body`, or why it is not one. */
export const messageOf = (body: Buffer | undefined): { start: number; end: number } | string => {
  if (body === undefined || body.length < 5) return "an answer without a message"
  if (body[0] !== 0) return "a compressed message (this client asked for none)"
  const length = body.readUInt32BE(1)
  if (5 + length > body.length) return `a message of ${length} bytes cut short at ${body.length - 5}`
  return { start: 5, end: 5 + length }
}
