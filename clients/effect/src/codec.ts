/**
 * Static protobuf codecs for the messages of `runner_storage.v1`
 * (`proto/runner_storage.proto`) this client sends and reads: no reflection,
 * no descriptor loaded at run time, no file read. Each request is written
 * straight into one buffer that already holds the 5-byte gRPC frame header,
 * so a call allocates that buffer and nothing else to encode.
 *
 * Field numbers are the proto's; `test/codec.test.ts` checks every encoder
 * and decoder here against the .proto file through protobufjs.
 *
 * Proto3: fields at their default (empty string, false, 0) are not written;
 * the namespace `"default"` travels as the empty string (what a client that
 * knows no namespaces sends).
 */

// --- field numbers (runner_storage.proto) --------------------------------------

/** `namespace = 14` on every request. */
const FIELD_NAMESPACE = 14
/** `request_id = 15` on every write. */
const FIELD_REQUEST_ID = 15

const WIRE_VARINT = 0
const WIRE_FIXED64 = 1
const WIRE_LENGTH = 2
const WIRE_FIXED32 = 5

/** The gRPC message prefix: a compressed flag and a 4-byte big-endian length. */
export const FRAME_HEADER_BYTES = 5

const tag = (field: number, wire: number) => (field << 3) | wire

// --- sizes -----------------------------------------------------------------------

const varintSize = (value: number): number => {
  if (value < 0x80) return 1
  if (value < 0x4000) return 2
  if (value < 0x200000) return 3
  if (value < 0x10000000) return 4
  let size = 5
  let rest = Math.floor(value / 0x800000000)
  while (rest > 0) {
    size++
    rest = Math.floor(rest / 0x80)
  }
  return size
}

/** A length-delimited field of `bytes` bytes (tags of fields 1..15 take one byte). */
const lengthFieldSize = (bytes: number) => 1 + varintSize(bytes) + bytes

// --- the writer --------------------------------------------------------------------

/** Writes protobuf fields into a buffer sized beforehand. */
class Writer {
  offset = FRAME_HEADER_BYTES
  constructor(readonly buffer: Buffer) {}

  varint(value: number) {
    const buffer = this.buffer
    while (value >= 0x80) {
      buffer[this.offset++] = (value % 0x80) | 0x80
      value = Math.floor(value / 0x80)
    }
    buffer[this.offset++] = value
  }

  string(field: number, value: string, bytes: number) {
    if (bytes === 0) return
    this.buffer[this.offset++] = tag(field, WIRE_LENGTH)
    this.varint(bytes)
    this.offset += bytes === value.length
      ? this.buffer.latin1Write(value, this.offset, bytes)
      : this.buffer.utf8Write(value, this.offset, bytes)
  }

  bool(field: number, value: boolean) {
    if (!value) return
    this.buffer[this.offset++] = tag(field, WIRE_VARINT)
    this.buffer[this.offset++] = 1
  }

  uint(field: number, value: number) {
    if (value === 0) return
    this.buffer[this.offset++] = tag(field, WIRE_VARINT)
    this.varint(value)
  }
}

/** Byte length of a string in UTF-8 (ASCII strings, the usual case, are quick). */
const utf8Bytes = (value: string): number => {
  for (let i = 0; i < value.length; i++) {
    if (value.charCodeAt(i) >= 0x80) return Buffer.byteLength(value, "utf8")
  }
  return value.length
}

declare module "node:buffer" {
  interface Buffer {
    latin1Write(value: string, offset: number, length: number): number
    utf8Write(value: string, offset: number, length: number): number
    latin1Slice(start: number, end: number): string
    utf8Slice(start: number, end: number): string
  }
}

/** The frame for a message of `bodyBytes` bytes: header written, body to fill. */
const frame = (bodyBytes: number): Writer => {
  const buffer = Buffer.allocUnsafe(FRAME_HEADER_BYTES + bodyBytes)
  buffer[0] = 0
  buffer.writeUInt32BE(bodyBytes, 1)
  return new Writer(buffer)
}

const finish = (writer: Writer): Buffer => {
  // the sizes computed first and the bytes written must agree
  if (writer.offset !== writer.buffer.length) {
    throw new Error(`runner-storage codec: wrote ${writer.offset} of ${writer.buffer.length} bytes`)
  }
  return writer.buffer
}

// --- requests ------------------------------------------------------------------------

/** What every request carries: the namespace (`""` for `"default"`), encoded once per client. */
export interface Namespace {
  readonly wire: string
  readonly bytes: number
}

export const namespaceOf = (name: string): Namespace => {
  const wire = name === "default" ? "" : name
  return { wire, bytes: utf8Bytes(wire) }
}

/** `RequestId { client_id = 1, sequence = 2 }`, the client id measured once. */
export interface ClientId {
  readonly value: string
  readonly bytes: number
}

export const clientIdOf = (value: string): ClientId => ({ value, bytes: utf8Bytes(value) })

const requestIdBodySize = (client: ClientId, sequence: number) =>
  lengthFieldSize(client.bytes) + (sequence === 0 ? 0 : 1 + varintSize(sequence))

const requestIdSize = (client: ClientId, sequence: number) => lengthFieldSize(requestIdBodySize(client, sequence))

const writeRequestId = (writer: Writer, client: ClientId, sequence: number) => {
  writer.buffer[writer.offset++] = tag(FIELD_REQUEST_ID, WIRE_LENGTH)
  writer.varint(requestIdBodySize(client, sequence))
  writer.string(1, client.value, client.bytes)
  writer.uint(2, sequence)
}

const namespaceSize = (ns: Namespace) => (ns.bytes === 0 ? 0 : lengthFieldSize(ns.bytes))

/** A request of optional address (1), then fields, namespace (14) and request id (15). */
const request = (
  ns: Namespace,
  client: ClientId | undefined,
  sequence: number,
  fieldsSize: number,
  write: (writer: Writer) => void
): Buffer => {
  const size = fieldsSize + namespaceSize(ns) + (client === undefined ? 0 : requestIdSize(client, sequence))
  const writer = frame(size)
  write(writer)
  writer.string(FIELD_NAMESPACE, ns.wire, ns.bytes)
  if (client !== undefined) writeRequestId(writer, client, sequence)
  return finish(writer)
}

const stringSize = (bytes: number) => (bytes === 0 ? 0 : lengthFieldSize(bytes))
const boolSize = (value: boolean) => (value ? 2 : 0)
const uintSize = (value: number) => (value === 0 ? 0 : 1 + varintSize(value))

/** `GetRunnersRequest`, `StatusRequest`: the namespace only. */
export const encodeNamespaceOnly = (ns: Namespace): Buffer => request(ns, undefined, 0, 0, () => {})

/** `ListNamespacesRequest {}`. */
export const encodeEmpty = (): Buffer => frame(0).buffer

/** `RegisterRequest { address = 1, runner = 2, healthy = 3 }`. */
export const encodeRegister = (
  ns: Namespace,
  client: ClientId,
  sequence: number,
  address: string,
  runner: string,
  healthy: boolean
): Buffer => {
  const a = utf8Bytes(address)
  const r = utf8Bytes(runner)
  return request(ns, client, sequence, stringSize(a) + stringSize(r) + boolSize(healthy), (w) => {
    w.string(1, address, a)
    w.string(2, runner, r)
    w.bool(3, healthy)
  })
}

/** `UnregisterRequest`, `ReleaseAllRequest`: `{ address = 1 }`. */
export const encodeAddressOnly = (ns: Namespace, client: ClientId, sequence: number, address: string): Buffer => {
  const a = utf8Bytes(address)
  return request(ns, client, sequence, stringSize(a), (w) => w.string(1, address, a))
}

/** `SetRunnerHealthRequest { address = 1, healthy = 2 }`. */
export const encodeSetRunnerHealth = (
  ns: Namespace,
  client: ClientId,
  sequence: number,
  address: string,
  healthy: boolean
): Buffer => {
  const a = utf8Bytes(address)
  return request(ns, client, sequence, stringSize(a) + boolSize(healthy), (w) => {
    w.string(1, address, a)
    w.bool(2, healthy)
  })
}

/** `AcquireRequest`, `RefreshRequest`: `{ address = 1, repeated shard_ids = 2 }`. */
export const encodeShardIds = (
  ns: Namespace,
  client: ClientId,
  sequence: number,
  address: string,
  shardIds: ReadonlyArray<string>
): Buffer => {
  const a = utf8Bytes(address)
  let size = stringSize(a)
  // a repeated string writes every element, empty ones too
  const lengths = new Array<number>(shardIds.length)
  for (let i = 0; i < shardIds.length; i++) {
    const bytes = utf8Bytes(shardIds[i]!)
    lengths[i] = bytes
    size += lengthFieldSize(bytes)
  }
  return request(ns, client, sequence, size, (w) => {
    w.string(1, address, a)
    for (let i = 0; i < shardIds.length; i++) {
      const bytes = lengths[i]!
      w.buffer[w.offset++] = tag(2, WIRE_LENGTH)
      w.varint(bytes)
      w.offset += w.buffer.utf8Write(shardIds[i]!, w.offset, bytes)
    }
  })
}

/** `ReleaseRequest { address = 1, shard_id = 2 }`. */
export const encodeRelease = (
  ns: Namespace,
  client: ClientId,
  sequence: number,
  address: string,
  shardId: string
): Buffer => {
  const a = utf8Bytes(address)
  const s = utf8Bytes(shardId)
  return request(ns, client, sequence, stringSize(a) + stringSize(s), (w) => {
    w.string(1, address, a)
    w.string(2, shardId, s)
  })
}

/** `SetLockExpirationRequest { lock_expiration_ms = 1 }` (no request id in the proto). */
export const encodeSetLockExpiration = (ns: Namespace, lockExpirationMs: number): Buffer =>
  request(ns, undefined, 0, uintSize(lockExpirationMs), (w) => w.uint(1, lockExpirationMs))

/** `EnsureLockExpirationRequest { lock_expiration_ms = 1, take_over = 2 }`. */
export const encodeEnsureLockExpiration = (
  ns: Namespace,
  client: ClientId,
  sequence: number,
  lockExpirationMs: number,
  takeOver: boolean
): Buffer =>
  request(ns, client, sequence, uintSize(lockExpirationMs) + boolSize(takeOver), (w) => {
    w.uint(1, lockExpirationMs)
    w.bool(2, takeOver)
  })

// --- the reader ----------------------------------------------------------------------

/** Thrown on bytes that are not the message expected. */
export class DecodeError extends Error {}

/** Reads protobuf fields of `buffer[offset, end)`. */
class Reader {
  constructor(readonly buffer: Buffer, public offset: number, readonly end: number) {}

  get done() {
    return this.offset >= this.end
  }

  varint(): number {
    const buffer = this.buffer
    let result = 0
    let multiplier = 1
    for (let i = 0; i < 10; i++) {
      if (this.offset >= this.end) throw new DecodeError("truncated varint")
      const byte = buffer[this.offset++]!
      result += (byte & 0x7f) * multiplier
      if (byte < 0x80) return result
      multiplier *= 0x80
    }
    throw new DecodeError("varint longer than 10 bytes")
  }

  /** The [start, end) of a length-delimited field's bytes; advances past them. */
  span(): number {
    const length = this.varint()
    const start = this.offset
    if (start + length > this.end) throw new DecodeError("length past the end of the message")
    this.offset = start + length
    return start
  }

  string(): string {
    const start = this.span()
    return this.buffer.utf8Slice(start, this.offset)
  }

  skip(wire: number) {
    switch (wire) {
      case WIRE_VARINT:
        this.varint()
        return
      case WIRE_FIXED64:
        this.offset += 8
        break
      case WIRE_LENGTH:
        this.span()
        return
      case WIRE_FIXED32:
        this.offset += 4
        break
      default:
        throw new DecodeError(`wire type ${wire} is not supported`)
    }
    if (this.offset > this.end) throw new DecodeError("fixed field past the end of the message")
  }
}

/** Calls `field(number, wire)` for each field; it returns false for a field it did not read. */
const fields = (reader: Reader, field: (number: number, wire: number) => boolean) => {
  while (!reader.done) {
    const key = reader.varint()
    const wire = key & 7
    if (!field(key >>> 3, wire)) reader.skip(wire)
  }
}

// --- responses -----------------------------------------------------------------------

/** `RegisterResponse { int64 machine_id = 1 }`. */
export const decodeRegister = (buffer: Buffer, start: number, end: number): number => {
  const reader = new Reader(buffer, start, end)
  let machineId = 0
  fields(reader, (number, wire) => {
    if (number !== 1 || wire !== WIRE_VARINT) return false
    machineId = reader.varint()
    return true
  })
  return machineId
}

/** `ShardIdsResponse { repeated string shard_ids = 1 }`. */
export const decodeShardIds = (buffer: Buffer, start: number, end: number): Array<string> => {
  const reader = new Reader(buffer, start, end)
  const shardIds: Array<string> = []
  fields(reader, (number, wire) => {
    if (number !== 1 || wire !== WIRE_LENGTH) return false
    shardIds.push(reader.string())
    return true
  })
  return shardIds
}

/** `GetRunnersResponse { repeated RunnerEntry runners = 1 }`, `RunnerEntry { runner = 1, healthy = 2 }`. */
export const decodeGetRunners = (
  buffer: Buffer,
  start: number,
  end: number
): Array<readonly [runner: string, healthy: boolean]> => {
  const reader = new Reader(buffer, start, end)
  const runners: Array<readonly [string, boolean]> = []
  fields(reader, (number, wire) => {
    if (number !== 1 || wire !== WIRE_LENGTH) return false
    const entryStart = reader.span()
    const entry = new Reader(buffer, entryStart, reader.offset)
    let runner = ""
    let healthy = false
    fields(entry, (n, w) => {
      if (n === 1 && w === WIRE_LENGTH) runner = entry.string()
      else if (n === 2 && w === WIRE_VARINT) healthy = entry.varint() !== 0
      else return false
      return true
    })
    runners.push([runner, healthy])
    return true
  })
  return runners
}

/** `EnsureLockExpirationResponse { lock_expiration_ms = 1, previously_set = 2 }`. */
export interface EnsureLockExpirationResponse {
  readonly lockExpirationMs: number
  readonly previouslySet: boolean
}

export const decodeEnsureLockExpiration = (buffer: Buffer, start: number, end: number): EnsureLockExpirationResponse => {
  const reader = new Reader(buffer, start, end)
  let lockExpirationMs = 0
  let previouslySet = false
  fields(reader, (number, wire) => {
    if (wire !== WIRE_VARINT) return false
    if (number === 1) lockExpirationMs = reader.varint()
    else if (number === 2) previouslySet = reader.varint() !== 0
    else return false
    return true
  })
  return { lockExpirationMs, previouslySet }
}

/** One node of `StatusResponse.members`. */
export interface Member {
  readonly nodeId: number
  readonly address: string
  readonly voter: boolean
}

/** `StatusResponse`: one node's own view. */
export interface StatusResponse {
  readonly nodeId: number
  readonly role: string
  readonly leaderId: number
  readonly leaderAddress: string
  readonly term: number
  readonly commitIndex: number
  readonly appliedIndex: number
  readonly members: ReadonlyArray<Member>
  readonly lockExpirationMs: number
  readonly snapshotIndex: number
  readonly snapshotBytes: number
  readonly residentMemoryBytes: number
  readonly diskBytes: number
  /** The node's wall clock when it answered (ms since the epoch; 0 from an older node). */
  readonly wallClockMs: number
  /** Store time: the leader's store clock, else the applied state's time. */
  readonly storeTimeMs: number
}

const decodeMember = (buffer: Buffer, start: number, end: number): Member => {
  const reader = new Reader(buffer, start, end)
  const member = { nodeId: 0, address: "", voter: false }
  fields(reader, (number, wire) => {
    if (number === 1 && wire === WIRE_VARINT) member.nodeId = reader.varint()
    else if (number === 2 && wire === WIRE_LENGTH) member.address = reader.string()
    else if (number === 3 && wire === WIRE_VARINT) member.voter = reader.varint() !== 0
    else return false
    return true
  })
  return member
}

/** The uint64 fields of `StatusResponse` by number. */
const STATUS_NUMBERS: Record<number, keyof StatusResponse> = {
  1: "nodeId",
  3: "leaderId",
  5: "term",
  6: "commitIndex",
  7: "appliedIndex",
  9: "lockExpirationMs",
  10: "snapshotIndex",
  11: "snapshotBytes",
  12: "residentMemoryBytes",
  13: "diskBytes",
  14: "wallClockMs",
  15: "storeTimeMs"
}

export const decodeStatus = (buffer: Buffer, start: number, end: number): StatusResponse => {
  const reader = new Reader(buffer, start, end)
  const status: Record<string, unknown> = {
    nodeId: 0,
    role: "",
    leaderId: 0,
    leaderAddress: "",
    term: 0,
    commitIndex: 0,
    appliedIndex: 0,
    members: [],
    lockExpirationMs: 0,
    snapshotIndex: 0,
    snapshotBytes: 0,
    residentMemoryBytes: 0,
    diskBytes: 0,
    wallClockMs: 0,
    storeTimeMs: 0
  }
  const members: Array<Member> = []
  fields(reader, (number, wire) => {
    const numeric = STATUS_NUMBERS[number]
    if (numeric !== undefined && wire === WIRE_VARINT) status[numeric] = reader.varint()
    else if (number === 2 && wire === WIRE_LENGTH) status["role"] = reader.string()
    else if (number === 4 && wire === WIRE_LENGTH) status["leaderAddress"] = reader.string()
    else if (number === 8 && wire === WIRE_LENGTH) {
      const memberStart = reader.span()
      members.push(decodeMember(buffer, memberStart, reader.offset))
    } else return false
    return true
  })
  status["members"] = members
  return status as unknown as StatusResponse
}

/** `NamespaceInfo` of `ListNamespacesResponse`. */
export interface NamespaceInfo {
  readonly namespace: string
  readonly lockExpirationMs: number
  readonly lockExpirationSet: boolean
  readonly runners: number
  readonly liveRunners: number
  readonly locks: number
  readonly heldLocks: number
  readonly runnersMax: number
  readonly locksMax: number
}

const NAMESPACE_NUMBERS: Record<number, keyof NamespaceInfo> = {
  2: "lockExpirationMs",
  4: "runners",
  5: "liveRunners",
  6: "locks",
  7: "heldLocks",
  8: "runnersMax",
  9: "locksMax"
}

const decodeNamespaceInfo = (buffer: Buffer, start: number, end: number): NamespaceInfo => {
  const reader = new Reader(buffer, start, end)
  const info: Record<string, unknown> = {
    namespace: "",
    lockExpirationMs: 0,
    lockExpirationSet: false,
    runners: 0,
    liveRunners: 0,
    locks: 0,
    heldLocks: 0,
    runnersMax: 0,
    locksMax: 0
  }
  fields(reader, (number, wire) => {
    const numeric = NAMESPACE_NUMBERS[number]
    if (numeric !== undefined && wire === WIRE_VARINT) info[numeric] = reader.varint()
    else if (number === 1 && wire === WIRE_LENGTH) info["namespace"] = reader.string()
    else if (number === 3 && wire === WIRE_VARINT) info["lockExpirationSet"] = reader.varint() !== 0
    else return false
    return true
  })
  return info as unknown as NamespaceInfo
}

/** `ListNamespacesResponse { repeated NamespaceInfo namespaces = 1 }`. */
export const decodeListNamespaces = (buffer: Buffer, start: number, end: number): Array<NamespaceInfo> => {
  const reader = new Reader(buffer, start, end)
  const namespaces: Array<NamespaceInfo> = []
  fields(reader, (number, wire) => {
    if (number !== 1 || wire !== WIRE_LENGTH) return false
    const infoStart = reader.span()
    namespaces.push(decodeNamespaceInfo(buffer, infoStart, reader.offset))
    return true
  })
  return namespaces
}

/** For the responses whose content is not read (`UnregisterResponse {}`, ...). */
export const decodeNothing = (_buffer: Buffer, _start: number, _end: number): void => undefined
