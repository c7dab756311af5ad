/**
 * Starts `fixtures/runner.js` (a real Effect cluster runner) as a separate
 * Node process and talks to it over IPC.
 */
import { type ChildProcess, fork } from "node:child_process"
import { closeSync, openSync, readFileSync } from "node:fs"
import { join } from "node:path"
import { atMost, freePort, packageRoot, track } from "./cluster.js"

const runnerScript = join(packageRoot, "dist", "test", "fixtures", "runner.js")

export interface RefreshRecord {
  readonly start: number
  readonly end: number
  readonly ok: boolean
  readonly requested: number
  readonly returned: number
  readonly error?: string
}

export interface PingReply {
  readonly message: string
  readonly runner: string
  readonly shard: string
}

/** What a runner reported holding at `t` (its Date.now()). */
export interface Sample {
  readonly runner: string
  readonly t: number
  readonly shards: ReadonlyArray<string>
}

export interface RunnerProcess {
  readonly name: string
  readonly address: string
  readonly port: number
  readonly logPath: string
  readonly child: ChildProcess
  readonly ping: (entityId: string, message?: string, timeoutMs?: number) => Promise<PingReply>
  readonly count: (entityId: string, timeoutMs?: number) => Promise<{ count: number; runner: string }>
  /** The lock refreshes this runner made (`RunnerStorage.refresh`), oldest first. */
  readonly refreshes: () => Promise<Array<RefreshRecord>>
  /** The shards this runner holds (`Sharding.hasShardId`), as "group:id". */
  readonly shards: () => Promise<Array<string>>
  /** The runners (addresses) this runner's storage sees. */
  readonly runners: () => Promise<Array<string>>
  readonly log: () => string
  readonly alive: () => boolean
  readonly kill: (signal?: NodeJS.Signals) => Promise<void>
}

export const startRunner = async (options: {
  readonly name: string
  readonly endpoints: ReadonlyArray<string>
  readonly lockExpirationMs: number
  readonly logDir: string
  readonly readyTimeoutMs?: number
  /** Default: a free one. */
  readonly port?: number
  readonly namespace?: string
  /** Receives the runner's 200 ms samples of the shards it holds. */
  readonly onSample?: (sample: Sample) => void
}): Promise<RunnerProcess> => {
  const port = options.port ?? await freePort()
  const logPath = join(options.logDir, `runner-${options.name}.log`)
  const log = openSync(logPath, "a")
  const child = track(fork(runnerScript, [], {
    stdio: ["ignore", log, log, "ipc"],
    env: {
      ...process.env,
      RUNNER_NAME: options.name,
      RUNNER_PORT: String(port),
      RS_ENDPOINTS: options.endpoints.join(","),
      RS_LOCK_EXPIRATION_MS: String(options.lockExpirationMs),
      RS_NAMESPACE: options.namespace ?? "default"
    }
  }))
  closeSync(log)

  let nextId = 0
  const pending = new Map<number, { resolve: (v: any) => void; reject: (e: Error) => void }>()
  let exited = false
  child.on("message", (message: any) => {
    if (message?.type === "sample") {
      options.onSample?.({ runner: `127.0.0.1:${port}`, t: message.t, shards: message.shards })
      return
    }
    if (message?.type !== "reply") return
    const waiter = pending.get(message.id)
    if (waiter === undefined) return
    pending.delete(message.id)
    if (message.ok) waiter.resolve(message.value)
    else waiter.reject(new Error(`${options.name}: ${message.error}`))
  })
  child.once("exit", (code, signal) => {
    exited = true
    for (const waiter of pending.values()) {
      waiter.reject(new Error(`runner ${options.name} exited (${code ?? signal})`))
    }
    pending.clear()
  })

  const request = <A>(message: object, timeoutMs: number): Promise<A> =>
    new Promise<A>((resolve, reject) => {
      if (exited || !child.connected) {
        reject(new Error(`runner ${options.name} is not running`))
        return
      }
      const id = nextId++
      const timer = setTimeout(() => {
        pending.delete(id)
        reject(new Error(`runner ${options.name}: no reply in ${timeoutMs} ms to ${JSON.stringify(message)}`))
      }, timeoutMs + 1000)
      pending.set(id, {
        resolve: (v) => {
          clearTimeout(timer)
          resolve(v)
        },
        reject: (e) => {
          clearTimeout(timer)
          reject(e)
        }
      })
      child.send({ ...message, id, timeoutMs })
    })

  const readLog = () => {
    try {
      return readFileSync(logPath, "utf8")
    } catch {
      return ""
    }
  }

  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`runner ${options.name} not ready in time\n${readLog()}`)),
      options.readyTimeoutMs ?? 30_000
    )
    child.on("message", (message: any) => {
      if (message?.type === "ready") {
        clearTimeout(timer)
        resolve()
      }
    })
    child.once("exit", (code, signal) => {
      clearTimeout(timer)
      reject(new Error(`runner ${options.name} exited during start (${code ?? signal})\n${readLog()}`))
    })
  })

  return {
    name: options.name,
    address: `127.0.0.1:${port}`,
    port,
    logPath,
    child,
    ping: (entityId, message = "hello", timeoutMs = 10_000) =>
      request({ type: "ping", entityId, message }, timeoutMs),
    count: (entityId, timeoutMs = 10_000) => request({ type: "count", entityId }, timeoutMs),
    shards: () => request<Array<string>>({ type: "shards" }, 5000),
    runners: () => request<Array<string>>({ type: "runners" }, 5000),
    refreshes: () => request<Array<RefreshRecord>>({ type: "refreshes" }, 5000),
    log: readLog,
    alive: () => !exited,
    kill: async (signal: NodeJS.Signals = "SIGKILL") => {
      if (exited) return
      const done = new Promise<void>((r) => child.once("exit", () => r()))
      child.kill(signal)
      await atMost(done, 20_000)
    }
  }
}
