/**
 * The client's own behaviour (retries, RequestId reuse, leader following,
 * error mapping, deadline, scope) against in-process fake gRPC servers that
 * implement runner_storage.v1 and misbehave on purpose. No binary needed.
 */
import * as grpc from "@grpc/grpc-js"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Exit from "effect/Exit"
import * as Scope from "effect/Scope"
import { PersistenceError } from "effect/cluster/ClusterError"
import * as RunnerStorage from "effect/cluster/RunnerStorage"
import assert from "node:assert/strict"
import { after, before, describe, test } from "node:test"
import { layer, make, type Options, RunnerStorageCallError } from "../src/index.js"
import { loadProto } from "../src/proto.js"
import { freePort } from "./support/cluster.js"

type Behaviour = (method: string, request: any) =>
  | { readonly ok: object }
  | { readonly error: grpc.status; readonly details?: string }
  | "hang"

interface FakeNode {
  readonly address: string
  readonly calls: Array<{ readonly method: string; readonly request: any }>
  behaviour: Behaviour
  status: () => object
  readonly stop: () => Promise<void>
}

const proto = loadProto()

const startFake = async (): Promise<FakeNode> => {
  const server = new grpc.Server()
  const node: Partial<FakeNode> & { calls: FakeNode["calls"] } = { calls: [] }
  const handler = (method: string) => (call: grpc.ServerUnaryCall<any, any>, callback: grpc.sendUnaryData<any>) => {
    node.calls.push({ method, request: call.request })
    const result = node.behaviour!(method, call.request)
    if (result === "hang") return // never answers: the client's timeout must fire
    if ("ok" in result) callback(null, result.ok)
    else callback({ code: result.error, details: result.details ?? "fake failure" } as grpc.ServiceError)
  }
  const storageMethods = [
    "GetRunners",
    "Register",
    "Unregister",
    "SetRunnerHealth",
    "Acquire",
    "Refresh",
    "Release",
    "ReleaseAll"
  ]
  const impl: Record<string, any> = {}
  for (const m of storageMethods) impl[m] = handler(m)
  server.addService((proto.RunnerStorage as any).service, impl)
  server.addService((proto.Admin as any).service, {
    Status: (_call: unknown, callback: grpc.sendUnaryData<any>) => callback(null, node.status!()),
    SetLockExpiration: handler("SetLockExpiration")
  })
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (error, port) =>
      error ? reject(error) : resolve(port)
    )
  )
  ;(node as { address: string }).address = `127.0.0.1:${port}`
  node.behaviour = defaultBehaviour
  node.status = () => ({ node_id: 1, role: "leader", leader_id: 1, leader_address: node.address, term: 1 })
  ;(node as any).stop = () => new Promise<void>((resolve) => server.tryShutdown(() => resolve()))
  return node as FakeNode
}

const defaultBehaviour: Behaviour = (method, request) => {
  switch (method) {
    case "GetRunners":
      return { ok: { runners: [] } }
    case "Register":
      return { ok: { machine_id: 1 } }
    case "Acquire":
    case "Refresh":
      return { ok: { shard_ids: request.shard_ids } }
    default:
      return { ok: {} }
  }
}

const withClient = <A>(options: Options, f: (client: Effect.Success<ReturnType<typeof make>>) => Effect.Effect<A, any>) =>
  Effect.runPromise(Effect.scoped(Effect.flatMap(make(options), f)))

const failureOf = (exit: Exit.Exit<unknown, unknown>): RunnerStorageCallError => {
  assert.ok(Exit.isFailure(exit), "expected a failure")
  const error = Exit.findErrorOption(exit)
  assert.equal(error._tag, "Some")
  const value = (error as any).value
  assert.ok(value instanceof PersistenceError, `expected PersistenceError, got ${String(value)}`)
  assert.ok(value.cause instanceof RunnerStorageCallError, "cause is a RunnerStorageCallError")
  return value.cause
}

describe("client against fake servers", () => {
  let leader: FakeNode
  let follower: FakeNode
  before(async () => {
    leader = await startFake()
    follower = await startFake()
    follower.status = () => ({
      node_id: 2,
      role: "follower",
      leader_id: 1,
      leader_address: leader.address,
      term: 1
    })
  })
  after(async () => {
    await leader.stop()
    await follower.stop()
  })
  const reset = () => {
    leader.calls.length = 0
    follower.calls.length = 0
    leader.behaviour = defaultBehaviour
    follower.behaviour = defaultBehaviour
  }

  test("follows the leader hint of Admin.Status and remembers it", async () => {
    reset()
    const seen = await withClient({ endpoints: [follower.address] }, (client) =>
      Effect.gen(function*() {
        yield* client.encoded.getRunners
        yield* client.encoded.register("h:1", "{}", true)
        return { current: client.currentEndpoint(), endpoints: client.endpoints() }
      }))
    assert.equal(follower.calls.length, 0, "no storage call at the follower")
    assert.deepEqual(leader.calls.map((c) => c.method), ["GetRunners", "Register"])
    assert.equal(seen.current, leader.address)
    assert.deepEqual(seen.endpoints, [follower.address, leader.address])
  })

  test("a write carries a RequestId; retries of one call reuse its sequence", async () => {
    reset()
    let failures = 2
    leader.behaviour = (method, request) => {
      if (method === "Register" && failures-- > 0) return { error: grpc.status.UNAVAILABLE, details: "no leader" }
      return defaultBehaviour(method, request)
    }
    const machineId = await withClient({ endpoints: [leader.address], clientId: "client-x" }, (client) =>
      Effect.gen(function*() {
        const id = yield* client.encoded.register("h:1", "{}", true)
        yield* client.encoded.acquire("h:1", ["default:1"])
        yield* client.encoded.refresh("h:1", [])
        yield* client.encoded.release("h:1", "default:1")
        yield* client.encoded.releaseAll("h:1")
        yield* client.encoded.setRunnerHealth("h:1", false)
        yield* client.encoded.unregister("h:1")
        yield* client.encoded.getRunners
        return id
      }))
    assert.equal(machineId, 1)
    const writes = leader.calls.filter((c) => c.method !== "GetRunners")
    assert.deepEqual(writes.map((c) => c.method), [
      "Register",
      "Register",
      "Register",
      "Acquire",
      "Refresh",
      "Release",
      "ReleaseAll",
      "SetRunnerHealth",
      "Unregister"
    ])
    for (const w of writes) assert.equal(w.request.request_id?.client_id, "client-x")
    const sequences = writes.map((w) => Number(w.request.request_id.sequence))
    assert.deepEqual(sequences, [1, 1, 1, 2, 3, 4, 5, 6, 7])
    const read = leader.calls.find((c) => c.method === "GetRunners")!
    assert.equal(read.request.request_id, undefined, "reads carry no RequestId")
  })

  test("every layer instance has its own random client id", async () => {
    reset()
    await withClient({ endpoints: [leader.address] }, (c) => c.encoded.unregister("h:1"))
    await withClient({ endpoints: [leader.address] }, (c) => c.encoded.unregister("h:1"))
    const ids = leader.calls.map((c) => c.request.request_id.client_id)
    assert.equal(ids.length, 2)
    assert.notEqual(ids[0], ids[1])
    assert.match(ids[0], /^[0-9a-f-]{36}$/)
  })

  for (
    const code of [grpc.status.INVALID_ARGUMENT, grpc.status.FAILED_PRECONDITION, grpc.status.RESOURCE_EXHAUSTED]
  ) {
    test(`${grpc.status[code]} is not retried and becomes a PersistenceError`, async () => {
      reset()
      leader.behaviour = () => ({ error: code, details: "bad input: address" })
      const exit = await withClient({ endpoints: [leader.address] }, (c) =>
        Effect.exit(c.encoded.register("x", "{}", true)))
      const cause = failureOf(exit)
      assert.equal(cause.code, code)
      assert.equal(cause.details, "bad input: address")
      assert.equal(cause.attempts, 1)
      assert.equal(leader.calls.filter((c) => c.method === "Register").length, 1)
    })
  }

  test("a dead endpoint (connection refused) is skipped", async () => {
    reset()
    const deadPort = await freePort()
    // the leader hint points at the dead endpoint: the client must still get through
    follower.status = () => ({ node_id: 2, role: "follower", leader_id: 9, leader_address: `127.0.0.1:${deadPort}`, term: 2 })
    try {
      const result = await withClient(
        { endpoints: [`127.0.0.1:${deadPort}`, follower.address], deadline: "5 seconds" },
        (c) => c.encoded.acquire("h:1", ["default:7"])
      )
      assert.deepEqual(result, ["default:7"])
      assert.equal(follower.calls.length, 1)
    } finally {
      follower.status = () => ({ node_id: 2, role: "follower", leader_id: 1, leader_address: leader.address, term: 1 })
    }
  })

  test("an attempt that hangs times out and is retried with the same sequence", async () => {
    reset()
    let first = true
    leader.behaviour = (method, request) => {
      if (method === "Refresh" && first) {
        first = false
        return "hang"
      }
      return defaultBehaviour(method, request)
    }
    const started = Date.now()
    const result = await withClient(
      { endpoints: [leader.address], attemptTimeout: "200 millis", deadline: "3 seconds" },
      (c) => c.encoded.refresh("h:1", ["default:3"])
    )
    assert.deepEqual(result, ["default:3"])
    const refreshes = leader.calls.filter((c) => c.method === "Refresh")
    assert.equal(refreshes.length, 2)
    assert.equal(refreshes[0]!.request.request_id.sequence, refreshes[1]!.request.request_id.sequence)
    assert.ok(Date.now() - started < 2500)
  })

  test("the deadline bounds retries: PersistenceError with DEADLINE_EXCEEDED", async () => {
    reset()
    leader.behaviour = () => ({ error: grpc.status.UNAVAILABLE, details: "no quorum" })
    const started = Date.now()
    const exit = await withClient(
      { endpoints: [leader.address], deadline: "400 millis" },
      (c) => Effect.exit(c.encoded.releaseAll("h:1"))
    )
    const elapsed = Date.now() - started
    const cause = failureOf(exit)
    assert.ok(
      cause.code === grpc.status.DEADLINE_EXCEEDED || cause.code === grpc.status.UNAVAILABLE,
      `code ${cause.codeName}`
    )
    assert.match(cause.message, /no quorum/)
    assert.ok(cause.attempts > 1, `attempts ${cause.attempts}`)
    assert.ok(elapsed >= 350 && elapsed < 2000, `elapsed ${elapsed}`)
    const sequences = new Set(leader.calls.map((c) => c.request.request_id.sequence))
    assert.equal(sequences.size, 1, "all attempts of one call share a sequence")
  })

  test("layer: Effect's makeEncoded over the client; calls fail once the scope is closed", async () => {
    reset()
    const scope = Scope.makeUnsafe()
    const context = await Effect.runPromise(Layer.buildWithScope(layer({ endpoints: [leader.address] }), scope))
    const storage = Context.get(context, RunnerStorage.RunnerStorage)
    assert.deepEqual(await Effect.runPromise(storage.getRunners), [])
    assert.deepEqual(await Effect.runPromise(storage.acquire({ host: "h", port: 1 } as any, [])), [])
    assert.equal(leader.calls.filter((c) => c.method === "Acquire").length, 0, "empty acquire makes no call")
    await Effect.runPromise(Scope.close(scope, Exit.void))
    const exit = await Effect.runPromise(Effect.exit(storage.getRunners))
    const cause = failureOf(exit)
    assert.match(cause.details, /closed/)
  })
})
