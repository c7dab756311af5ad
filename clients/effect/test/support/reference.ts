/**
 * A reference client for the tests, independent of the code under test:
 * grpc-js with the repository's `proto/runner_storage.proto` loaded by
 * `@grpc/proto-loader` (reflection, `keepCase: true, longs: Number,
 * defaults: true`). The package itself uses neither (see `src/codec.ts`).
 */
import * as grpc from "@grpc/grpc-js"
import * as protoLoader from "@grpc/proto-loader"
import { existsSync } from "node:fs"
import { dirname, join, resolve } from "node:path"
import { fileURLToPath } from "node:url"

export interface RequestId {
  readonly client_id: string
  readonly sequence: number
}

export interface RunnerEntry {
  readonly runner: string
  readonly healthy: boolean
}

export interface GetRunnersResponse {
  readonly runners: ReadonlyArray<RunnerEntry>
}

export interface RegisterResponse {
  readonly machine_id: number
}

export interface ShardIdsResponse {
  readonly shard_ids: ReadonlyArray<string>
}

export interface Member {
  readonly node_id: number
  readonly address: string
  readonly voter: boolean
}

export interface StatusResponse {
  readonly node_id: number
  readonly role: string
  readonly leader_id: number
  readonly leader_address: string
  readonly term: number
  readonly commit_index: number
  readonly applied_index: number
  readonly members: ReadonlyArray<Member>
  readonly lock_expiration_ms: number
}

/** The RPC names of `runner_storage.v1.RunnerStorage`. */
export type StorageMethod =
  | "GetRunners"
  | "Register"
  | "Unregister"
  | "SetRunnerHealth"
  | "Acquire"
  | "Refresh"
  | "Release"
  | "ReleaseAll"

/** The RPC names of `runner_storage.v1.Admin`. */
export type AdminMethod = "Status" | "SetLockExpiration" | "EnsureLockExpiration" | "ListNamespaces"

export type UnaryCallback<Res> = (error: grpc.ServiceError | null, response?: Res) => void

/** A dynamically generated grpc-js client: one method per RPC. */
export type DynamicClient<Method extends string> =
  & grpc.Client
  & {
    readonly [M in Method]: (
      request: object,
      metadata: grpc.Metadata,
      options: grpc.CallOptions,
      callback: UnaryCallback<any>
    ) => grpc.ClientUnaryCall
  }

export type ClientConstructor<Method extends string> = new(
  address: string,
  credentials: grpc.ChannelCredentials,
  options?: grpc.ChannelOptions
) => DynamicClient<Method>

export interface LoadedProto {
  readonly RunnerStorage: ClientConstructor<StorageMethod>
  readonly Admin: ClientConstructor<AdminMethod>
  readonly path: string
}

const PROTO_FILE = "runner_storage.proto"

/** The repository's proto dir: <repo>/proto, two levels above the package. */
export const protoDir = (): string => {
  let dir = dirname(fileURLToPath(import.meta.url))
  while (!existsSync(join(dir, "package.json"))) dir = dirname(dir)
  return resolve(dir, "..", "..", "proto")
}

export const protoPath = (): string => join(protoDir(), PROTO_FILE)

const cache = new Map<string, LoadedProto>()

export const loadProto = (): LoadedProto => {
  const path = protoPath()
  if (!existsSync(path)) throw new Error(`reference client: cannot find ${path}`)
  const cached = cache.get(path)
  if (cached !== undefined) return cached
  const definition = protoLoader.loadSync(path, {
    keepCase: true,
    longs: Number,
    enums: String,
    defaults: true,
    oneofs: true
  })
  const pkg = grpc.loadPackageDefinition(definition) as any
  const v1 = pkg?.runner_storage?.v1
  if (v1?.RunnerStorage === undefined || v1?.Admin === undefined) {
    throw new Error(`runner-storage: ${path} does not define runner_storage.v1.RunnerStorage and Admin`)
  }
  const loaded: LoadedProto = { RunnerStorage: v1.RunnerStorage, Admin: v1.Admin, path }
  cache.set(path, loaded)
  return loaded
}

/** One unary call through the reference client (a channel of its own, closed after). */
export const referenceCall = <Res = any>(
  address: string,
  service: "RunnerStorage" | "Admin",
  method: StorageMethod | AdminMethod,
  request: object,
  options: { readonly credentials?: grpc.ChannelCredentials; readonly metadata?: grpc.Metadata; readonly timeoutMs?: number } = {}
): Promise<Res> => {
  const proto = loadProto()
  const Client = (service === "Admin" ? proto.Admin : proto.RunnerStorage) as unknown as ClientConstructor<string>
  const client = new Client(address, options.credentials ?? grpc.credentials.createInsecure())
  return new Promise<Res>((resolveCall, reject) =>
    client[method]!(
      request,
      options.metadata ?? new grpc.Metadata(),
      { deadline: new Date(Date.now() + (options.timeoutMs ?? 5000)) },
      (error, response) => {
        client.close()
        if (error) reject(error)
        else resolveCall(response as Res)
      }
    )
  )
}
