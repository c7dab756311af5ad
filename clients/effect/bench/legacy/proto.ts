/**
 * Loading of `runner_storage.proto` (package `runner_storage.v1`) and the
 * TypeScript shapes of its messages, as `@grpc/proto-loader` presents them with
 * `keepCase: true, longs: Number, defaults: true`.
 */
import * as grpc from "@grpc/grpc-js"
import * as protoLoader from "@grpc/proto-loader"
import { existsSync } from "node:fs"
import { dirname, resolve } from "node:path"
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
export type AdminMethod = "Status" | "SetLockExpiration"

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

/**
 * Where the proto is looked for, in order: an explicit path, the package's own
 * `proto/` (copied there at build/pack time), and the repository's `proto/`
 * two levels above the package (`clients/effect` inside the repo).
 */
export const protoCandidates = (explicit?: string): ReadonlyArray<string> => {
  const here = dirname(fileURLToPath(import.meta.url))
  const candidates: Array<string> = []
  if (explicit !== undefined) candidates.push(resolve(explicit))
  const fromEnv = process.env["RUNNER_STORAGE_PROTO"]
  if (fromEnv !== undefined && fromEnv !== "") candidates.push(resolve(fromEnv))
  // this file is <pkg>/dist/bench/legacy/proto.js: the repository's proto/
  candidates.push(resolve(here, "..", "..", "..", "..", "..", "proto", PROTO_FILE))
  return candidates
}

const cache = new Map<string, LoadedProto>()

export const loadProto = (explicit?: string): LoadedProto => {
  const candidates = protoCandidates(explicit)
  const path = explicit !== undefined ? candidates[0] : candidates.find((p) => existsSync(p))
  if (path === undefined || !existsSync(path)) {
    throw new Error(`runner-storage: cannot find ${PROTO_FILE}; looked at ${candidates.join(", ")}`)
  }
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
