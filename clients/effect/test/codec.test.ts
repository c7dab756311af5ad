/**
 * The static codecs of src/codec.ts against the contract itself: the
 * repository's proto/runner_storage.proto, read by protobufjs (reflection).
 * Requests written by the codec must decode there to what was meant; answers
 * encoded there must decode here.
 */
import { describe, expect, it } from "@effect/vitest"
import protobuf from "protobufjs"
import * as codec from "../src/codec.js"
import { protoPath } from "./support/reference.js"

const root = new protobuf.Root().loadSync(protoPath(), { keepCase: true })
const type = (name: string) => root.lookupType(`runner_storage.v1.${name}`)

/** Decodes a request frame of ours with protobufjs, defaults filled in. */
const asProto = (name: string, frame: Buffer) => {
  expect(frame[0]).toBe(0)
  expect(frame.readUInt32BE(1)).toBe(frame.length - 5)
  const message = type(name).decode(frame.subarray(5))
  return type(name).toObject(message, { longs: Number, defaults: true })
}

/** Encodes an answer with protobufjs and decodes it with ours. */
const fromProto = <A>(name: string, value: object, decode: (b: Buffer, s: number, e: number) => A): A => {
  const bytes = Buffer.from(type(name).encode(type(name).fromObject(value)).finish())
  const padded = Buffer.concat([Buffer.from([1, 2, 3]), bytes, Buffer.from([9])])
  return decode(padded, 3, 3 + bytes.length)
}

const staging = codec.namespaceOf("staging-é")
const plain = codec.namespaceOf("default")
const client = codec.clientIdOf("client-ü-1")

describe("codec: requests decode in protobufjs as meant", () => {
  it("the namespace travels as field 14; \"default\" as the empty string", () => {
    expect(asProto("GetRunnersRequest", codec.encodeNamespaceOnly(staging))).toEqual({ namespace: "staging-é" })
    expect(asProto("GetRunnersRequest", codec.encodeNamespaceOnly(plain))).toEqual({ namespace: "" })
    expect(codec.encodeNamespaceOnly(plain).length).toBe(5)
    expect(asProto("StatusRequest", codec.encodeNamespaceOnly(staging))).toEqual({ namespace: "staging-é" })
    expect(asProto("ListNamespacesRequest", codec.encodeEmpty())).toEqual({})
  })

  it("Register, with a request id whose sequence passes 32 bits", () => {
    const runner = '{"address":{"host":"h","port":1},"groups":["default"],"weight":1}'
    for (const [healthy, sequence] of [[true, 1], [false, 2 ** 40 + 3]] as const) {
      expect(asProto("RegisterRequest", codec.encodeRegister(staging, client, sequence, "h:1", runner, healthy))).toEqual({
        address: "h:1",
        runner,
        healthy,
        namespace: "staging-é",
        request_id: { client_id: "client-ü-1", sequence }
      })
    }
  })

  it("Unregister, ReleaseAll, SetRunnerHealth, Release", () => {
    const rid = { client_id: "client-ü-1", sequence: 7 }
    expect(asProto("UnregisterRequest", codec.encodeAddressOnly(plain, client, 7, "h:1"))).toEqual({
      address: "h:1",
      namespace: "",
      request_id: rid
    })
    expect(asProto("ReleaseAllRequest", codec.encodeAddressOnly(staging, client, 7, "h:1"))).toEqual({
      address: "h:1",
      namespace: "staging-é",
      request_id: rid
    })
    expect(asProto("SetRunnerHealthRequest", codec.encodeSetRunnerHealth(staging, client, 7, "h:1", true))).toEqual({
      address: "h:1",
      healthy: true,
      namespace: "staging-é",
      request_id: rid
    })
    expect(asProto("ReleaseRequest", codec.encodeRelease(staging, client, 7, "h:1", "default:12"))).toEqual({
      address: "h:1",
      shard_id: "default:12",
      namespace: "staging-é",
      request_id: rid
    })
  })

  it("Acquire and Refresh keep the shard ids in order, empty ones and non-ASCII ones too", () => {
    const shardIds = ["default:1", "groupé:300", "", "default:2"]
    for (const name of ["AcquireRequest", "RefreshRequest"]) {
      expect(asProto(name, codec.encodeShardIds(staging, client, 9, "127.0.0.1:34431", shardIds))).toEqual({
        address: "127.0.0.1:34431",
        shard_ids: shardIds,
        namespace: "staging-é",
        request_id: { client_id: "client-ü-1", sequence: 9 }
      })
    }
    expect(asProto("RefreshRequest", codec.encodeShardIds(plain, client, 10, "h:1", []))).toEqual({
      address: "h:1",
      shard_ids: [],
      namespace: "",
      request_id: { client_id: "client-ü-1", sequence: 10 }
    })
  })

  it("SetLockExpiration and EnsureLockExpiration", () => {
    expect(asProto("SetLockExpirationRequest", codec.encodeSetLockExpiration(staging, 35_000))).toEqual({
      lock_expiration_ms: 35_000,
      namespace: "staging-é"
    })
    expect(asProto("EnsureLockExpirationRequest", codec.encodeEnsureLockExpiration(staging, client, 3, 9000, true)))
      .toEqual({
        lock_expiration_ms: 9000,
        take_over: true,
        namespace: "staging-é",
        request_id: { client_id: "client-ü-1", sequence: 3 }
      })
  })
})

describe("codec: answers encoded by protobufjs decode here", () => {
  it("RegisterResponse, ShardIdsResponse, GetRunnersResponse", () => {
    expect(fromProto("RegisterResponse", { machine_id: 1025 }, codec.decodeRegister)).toBe(1025)
    expect(fromProto("RegisterResponse", {}, codec.decodeRegister)).toBe(0)
    expect(fromProto("ShardIdsResponse", { shard_ids: ["a:1", "é:2", ""] }, codec.decodeShardIds)).toEqual([
      "a:1",
      "é:2",
      ""
    ])
    const runners = [{ runner: '{"a":1}', healthy: true }, { runner: "ü", healthy: false }, { runner: "", healthy: true }]
    expect(fromProto("GetRunnersResponse", { runners }, codec.decodeGetRunners)).toEqual([
      ['{"a":1}', true],
      ["ü", false],
      ["", true]
    ])
  })

  it("EnsureLockExpirationResponse, StatusResponse, ListNamespacesResponse", () => {
    expect(
      fromProto("EnsureLockExpirationResponse", { lock_expiration_ms: 9000, previously_set: true }, codec.decodeEnsureLockExpiration)
    ).toEqual({ lockExpirationMs: 9000, previouslySet: true })
    const status = fromProto("StatusResponse", {
      node_id: 2,
      role: "leader",
      leader_id: 2,
      leader_address: "127.0.0.1:7002",
      term: 2 ** 33,
      commit_index: 10,
      applied_index: 9,
      members: [{ node_id: 1, address: "127.0.0.1:7001", voter: true }, { node_id: 4, address: "x:1", voter: false }],
      lock_expiration_ms: 35_000,
      snapshot_index: 5,
      snapshot_bytes: 6,
      resident_memory_bytes: 7,
      disk_bytes: 8,
      wall_clock_ms: 1_764_000_000_000,
      store_time_ms: 1_764_000_000_001
    }, codec.decodeStatus)
    expect(status).toEqual({
      nodeId: 2,
      role: "leader",
      leaderId: 2,
      leaderAddress: "127.0.0.1:7002",
      term: 2 ** 33,
      commitIndex: 10,
      appliedIndex: 9,
      members: [{ nodeId: 1, address: "127.0.0.1:7001", voter: true }, { nodeId: 4, address: "x:1", voter: false }],
      lockExpirationMs: 35_000,
      snapshotIndex: 5,
      snapshotBytes: 6,
      residentMemoryBytes: 7,
      diskBytes: 8,
      wallClockMs: 1_764_000_000_000,
      storeTimeMs: 1_764_000_000_001
    })
    const info = {
      namespace: "staging",
      lock_expiration_ms: 9000,
      lock_expiration_set: true,
      runners: 3,
      live_runners: 2,
      locks: 30,
      held_locks: 20,
      runners_max: 65536,
      locks_max: 1048576
    }
    expect(fromProto("ListNamespacesResponse", { namespaces: [info] }, codec.decodeListNamespaces)).toEqual([{
      namespace: "staging",
      lockExpirationMs: 9000,
      lockExpirationSet: true,
      runners: 3,
      liveRunners: 2,
      locks: 30,
      heldLocks: 20,
      runnersMax: 65536,
      locksMax: 1048576
    }])
  })

  it("unknown fields are skipped; a truncated message is a DecodeError", () => {
    // a ShardIdsResponse with fields 2 (varint), 3 (fixed64), 4 (fixed32), 5 (bytes) added
    const bytes = Buffer.from([0x0a, 1, 0x41, 0x10, 0x96, 0x01, 0x19, 1, 2, 3, 4, 5, 6, 7, 8, 0x25, 1, 2, 3, 4, 0x2a, 0])
    expect(codec.decodeShardIds(bytes, 0, bytes.length)).toEqual(["A"])
    const cut = Buffer.from([0x0a, 5, 0x41])
    expect(() => codec.decodeShardIds(cut, 0, cut.length)).toThrow(codec.DecodeError)
  })
})
