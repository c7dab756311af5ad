/**
 * Effect's `RunnerStorage` over the client: the string-level
 * `RunnerStorage.Encoded` calls, and the typed service built from them.
 *
 * The typed service behaves exactly as `RunnerStorage.makeEncoded(encoded)`
 * (Effect's adapter, which `SqlRunnerStorage` uses too): addresses and
 * shard ids in their string forms, runners as Effect's JSON, a runner that
 * does not decode dropped from `getRunners`, an `acquire` of no shards
 * answered `[]` without a call. It differs in one way only, speed: decoding
 * a runner's JSON through its Schema costs ~5 µs, and `getRunners` answers
 * the same runners call after call, so decoded runners and shard ids are
 * kept (by their exact string) in bounded caches; `test/storage.test.ts`
 * checks the two adapters agree.
 */
import * as Effect from "effect/Effect"
import { PersistenceError } from "effect/cluster/ClusterError"
import * as MachineId from "effect/cluster/MachineId"
import * as Runner from "effect/cluster/Runner"
import * as RunnerStorage from "effect/cluster/RunnerStorage"
import * as ShardId from "effect/cluster/ShardId"
import { type Client, methods } from "./client.js"
import * as codec from "./codec.js"
import type { RunnerStorageCallError } from "./errors.js"

/** Most decoded runners (and, apart, shard ids) kept; a full cache starts over. */
const DECODED_CACHE_MAX = 65_536

type Failing<A> = Effect.Effect<A, PersistenceError>

const persistence = <A>(effect: Effect.Effect<A, RunnerStorageCallError>): Failing<A> =>
  Effect.mapError(effect, (cause) => new PersistenceError({ cause }))

/** `RunnerStorage.Encoded` over the client: one RPC per call. */
export const makeEncoded = (client: Client): RunnerStorage.Encoded => {
  const ns = client.ns
  const id = client.id
  const getRunnersBody = codec.encodeNamespaceOnly(ns)
  return {
    getRunners: persistence(client.call(methods.getRunners, getRunnersBody)),
    register: (address, runner, healthy) =>
      persistence(Effect.suspend(() =>
        client.call(methods.register, codec.encodeRegister(ns, id, client.nextSequence(), address, runner, healthy))
      )),
    unregister: (address) =>
      persistence(Effect.suspend(() =>
        client.call(methods.unregister, codec.encodeAddressOnly(ns, id, client.nextSequence(), address))
      )),
    setRunnerHealth: (address, healthy) =>
      persistence(Effect.suspend(() =>
        client.call(methods.setRunnerHealth, codec.encodeSetRunnerHealth(ns, id, client.nextSequence(), address, healthy))
      )),
    acquire: (address, shardIds) =>
      persistence(Effect.suspend(() =>
        client.call(methods.acquire, codec.encodeShardIds(ns, id, client.nextSequence(), address, shardIds))
      )),
    refresh: (address, shardIds) =>
      persistence(Effect.suspend(() =>
        client.call(methods.refresh, codec.encodeShardIds(ns, id, client.nextSequence(), address, shardIds))
      )),
    release: (address, shardId) =>
      persistence(Effect.suspend(() =>
        client.call(methods.release, codec.encodeRelease(ns, id, client.nextSequence(), address, shardId))
      )),
    releaseAll: (address) =>
      persistence(Effect.suspend(() =>
        client.call(methods.releaseAll, codec.encodeAddressOnly(ns, id, client.nextSequence(), address))
      ))
  }
}

/** A bounded string-keyed memo of a pure decoding. */
class Decoded<A> {
  private readonly entries = new Map<string, A>()
  constructor(private readonly decode: (text: string) => A) {}

  get(text: string): A {
    let value = this.entries.get(text)
    if (value === undefined && !this.entries.has(text)) {
      value = this.decode(text)
      if (this.entries.size >= DECODED_CACHE_MAX) this.entries.clear()
      this.entries.set(text, value)
    }
    return value as A
  }
}

// The cache is shared by every instance: the decoding is pure and the values immutable.
const runners = new Decoded<Runner.Runner | null>((json) => {
  try {
    return Runner.Runner.decodeSync(json)
  } catch {
    return null
  }
})
const shardIds = new Decoded<ShardId.ShardId>((text) => ShardId.fromString(text))

const addressOf = (address: { readonly host: string; readonly port: number }) => `${address.host}:${address.port}`

/** The typed `RunnerStorage` over the client (as `RunnerStorage.makeEncoded` of `makeEncoded`). */
export const makeStorage = (client: Client): RunnerStorage.RunnerStorage["Service"] => {
  const encoded = makeEncoded(client)
  const toShardIds = (texts: ReadonlyArray<string>) => {
    const out = new Array<ShardId.ShardId>(texts.length)
    for (let i = 0; i < texts.length; i++) out[i] = shardIds.get(texts[i]!)
    return out
  }
  const toTexts = (ids: Iterable<ShardId.ShardId>) => Array.from(ids, (id) => id.toString())
  return RunnerStorage.RunnerStorage.of({
    getRunners: Effect.map(encoded.getRunners, (entries) => {
      const results: Array<[Runner.Runner, boolean]> = []
      for (let i = 0; i < entries.length; i++) {
        const [json, healthy] = entries[i]!
        const runner = runners.get(json)
        if (runner !== null) results.push([runner, healthy])
      }
      return results
    }),
    register: (runner, healthy) =>
      Effect.map(encoded.register(addressOf(runner.address), Runner.Runner.encodeSync(runner), healthy), MachineId.make),
    unregister: (address) => encoded.unregister(addressOf(address)),
    setRunnerHealth: (address, healthy) => encoded.setRunnerHealth(addressOf(address), healthy),
    acquire: (address, ids) => {
      const texts = toTexts(ids)
      if (texts.length === 0) return Effect.succeed([])
      return Effect.map(encoded.acquire(addressOf(address), texts as [string, ...Array<string>]), toShardIds)
    },
    refresh: (address, ids) => Effect.map(encoded.refresh(addressOf(address), toTexts(ids)), toShardIds),
    release: (address, shardId) => encoded.release(addressOf(address), shardId.toString()),
    releaseAll: (address) => encoded.releaseAll(addressOf(address))
  })
}
