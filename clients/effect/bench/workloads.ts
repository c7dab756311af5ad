/**
 * The bench's workloads, written once against Effect's `RunnerStorage`, so
 * every backend runs the very same Node code:
 *
 * - `acquire-refresh`: N fibers, each with its own storage instance and
 *   runner (registered first), loop `acquire` of their 10 shards, then
 *   `refresh` of them. One op = one call.
 * - `get-runners`: 100 runners registered, N fibers (each its own storage
 *   instance) loop `getRunners`.
 * - `effect-mix`: Effect's own cadence, sped up 10×: R runners (own
 *   instances) share 300 shards round-robin; each calls `getRunners` every
 *   3 s / 10, `refresh` of its held shards every 10 s / 10
 *   (shardLockRefreshInterval), and `refresh(address, [shard])` before each
 *   persisted reply (Effect 4.1 confirms the lock first), 10 replies/s per
 *   runner (1/s, sped up). A fixed-rate workload: its figures are the
 *   latencies, the CPU per call and `late` (ticks more than a period behind).
 */
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import * as Runner from "effect/cluster/Runner"
import * as RunnerAddress from "effect/cluster/RunnerAddress"
import type * as RunnerStorage from "effect/cluster/RunnerStorage"
import * as ShardId from "effect/cluster/ShardId"
import { Latencies } from "./stats.js"

export type Storage = RunnerStorage.RunnerStorage["Service"]

/** Builds one storage instance of a backend, in the given scope. */
export type MakeStorage = Effect.Effect<Storage, unknown, Scope.Scope>

export interface Window {
  /** measuring starts (performance.now()) */
  readonly from: number
  /** measuring and the load end */
  readonly until: number
}

export interface Recorder {
  readonly kinds: Map<string, Latencies>
  failures: number
  firstFailure: string | undefined
}

export const makeRecorder = (): Recorder => ({ kinds: new Map(), failures: 0, firstFailure: undefined })

/** Runs `call`, recording its latency under `kind` when it falls in the window. */
const timed = <A>(
  recorder: Recorder,
  window: Window,
  kind: string,
  call: Effect.Effect<A, unknown>
): Effect.Effect<A | undefined> =>
  Effect.suspend(() => {
    const start = performance.now()
    return Effect.matchEffect(call, {
      onFailure: (error) =>
        Effect.sync(() => {
          if (start >= window.from && performance.now() <= window.until) {
            recorder.failures++
            recorder.firstFailure ??= String(error)
          }
          return undefined
        }),
      onSuccess: (value) =>
        Effect.sync(() => {
          const end = performance.now()
          if (start >= window.from && end <= window.until) {
            let latencies = recorder.kinds.get(kind)
            if (latencies === undefined) recorder.kinds.set(kind, latencies = new Latencies())
            latencies.record(end - start)
          }
          return value
        })
    })
  })

export const runnerAt = (port: number) =>
  Runner.make({ address: RunnerAddress.make("127.0.0.1", port), groups: ["default"], weight: 1 })

const shardsOf = (index: number, perRunner: number) =>
  Array.from({ length: perRunner }, (_, k) => ShardId.make("default", index * perRunner + k + 1))

const instances = (make: MakeStorage, count: number) =>
  Effect.forEach(Array.from({ length: count }), () => make, { concurrency: 4 })

export const acquireRefresh = (options: {
  readonly make: MakeStorage
  readonly n: number
  readonly basePort: number
  /** Called once set up: starts the warm-up and the measured window. */
  readonly begin: () => Window
  readonly recorder: Recorder
}) =>
  Effect.gen(function*() {
    const storages = yield* instances(options.make, options.n)
    const runners = storages.map((_, i) => runnerAt(options.basePort + i))
    yield* Effect.forEach(storages, (s, i) => s.register(runners[i]!, true), { concurrency: "unbounded" })
    const { recorder } = options
    const window = options.begin()
    const loop = (storage: Storage, i: number) =>
      Effect.gen(function*() {
        const address = runners[i]!.address
        const shards = shardsOf(i, 10)
        while (performance.now() < window.until) {
          yield* timed(recorder, window, "acquire", storage.acquire(address, shards))
          yield* timed(recorder, window, "refresh", storage.refresh(address, shards))
        }
      })
    yield* Effect.forEach(storages, loop, { concurrency: "unbounded", discard: true })
    yield* teardown(storages, runners)
  })

export const getRunners = (options: {
  readonly make: MakeStorage
  readonly n: number
  readonly runners: number
  readonly basePort: number
  /** Called once set up: starts the warm-up and the measured window. */
  readonly begin: () => Window
  readonly recorder: Recorder
}) =>
  Effect.gen(function*() {
    const storages = yield* instances(options.make, options.n)
    const runners = Array.from({ length: options.runners }, (_, i) => runnerAt(options.basePort + i))
    yield* Effect.forEach(runners, (r) => storages[0]!.register(r, true), { concurrency: 8, discard: true })
    const seen = (yield* storages[0]!.getRunners).length
    if (seen !== options.runners) {
      return yield* Effect.fail(new Error(`getRunners saw ${seen} runners, not ${options.runners}`))
    }
    const { recorder } = options
    const window = options.begin()
    yield* Effect.forEach(storages, (storage) =>
      Effect.gen(function*() {
        while (performance.now() < window.until) {
          yield* timed(recorder, window, "getRunners", storage.getRunners)
        }
      }), { concurrency: "unbounded", discard: true })
    yield* Effect.forEach(runners, (r) => storages[0]!.unregister(r.address), { concurrency: 8, discard: true })
  })

/** The effect-mix periods in ms (Effect's defaults divided by the speedup). */
export const mixPeriods = (speedup: number) => ({
  getRunners: 3000 / speedup,
  refresh: 10_000 / speedup,
  reply: 1000 / speedup
})

export const effectMix = (options: {
  readonly make: MakeStorage
  readonly runners: number
  readonly shards: number
  readonly speedup: number
  readonly basePort: number
  /** Called once set up: starts the warm-up and the measured window. */
  readonly begin: () => Window
  readonly recorder: Recorder
  readonly late: { count: number }
}) =>
  Effect.gen(function*() {
    const storages = yield* instances(options.make, options.runners)
    const runners = storages.map((_, i) => runnerAt(options.basePort + i))
    const owned = runners.map((_, i) =>
      Array.from({ length: options.shards }, (_, s) => s).filter((s) => s % options.runners === i).map((s) =>
        ShardId.make("default", s + 1)
      )
    )
    yield* Effect.forEach(storages, (s, i) =>
      Effect.andThen(s.register(runners[i]!, true), s.acquire(runners[i]!.address, owned[i]!)), {
      concurrency: "unbounded",
      discard: true
    })
    const periods = mixPeriods(options.speedup)
    const { recorder } = options
    const window = options.begin()
    // A periodic task: tick k is due at start + k * period (staggered per runner).
    const every = (period: number, offset: number, tick: (k: number) => Effect.Effect<unknown>) =>
      Effect.gen(function*() {
        const start = performance.now() + offset
        for (let k = 0;; k++) {
          const due = start + k * period
          if (due >= window.until) return
          const now = performance.now()
          if (now < due) yield* Effect.sleep(due - now)
          else if (now - due > period && due >= window.from) options.late.count++
          yield* tick(k)
        }
      })
    yield* Effect.forEach(storages, (storage, i) => {
      const address = runners[i]!.address
      const held = owned[i]!
      const stagger = (i / storages.length)
      return Effect.all([
        every(periods.getRunners, stagger * periods.getRunners, () =>
          timed(recorder, window, "getRunners", storage.getRunners)),
        every(periods.refresh, stagger * periods.refresh, () =>
          timed(recorder, window, "refresh", storage.refresh(address, held))),
        every(periods.reply, stagger * periods.reply, (k) =>
          timed(recorder, window, "refresh1", storage.refresh(address, [held[k % held.length]!])))
      ], { concurrency: "unbounded", discard: true })
    }, { concurrency: "unbounded", discard: true })
    yield* teardown(storages, runners)
  })

const teardown = (storages: ReadonlyArray<Storage>, runners: ReadonlyArray<Runner.Runner>) =>
  Effect.forEach(storages, (s, i) =>
    Effect.andThen(s.releaseAll(runners[i]!.address), s.unregister(runners[i]!.address)), {
    concurrency: 8,
    discard: true
  })
