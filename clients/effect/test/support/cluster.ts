/**
 * Starts a real runner-storage cluster from the built binary for the tests:
 * each node in its own temp data dir, on free loopback ports, and makes sure
 * every process started here is killed when the test process ends.
 */
import * as grpc from "@grpc/grpc-js"
import { type ChildProcess, execFileSync, spawn } from "node:child_process"
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { createServer } from "node:net"
import { tmpdir } from "node:os"
import { dirname, join, resolve } from "node:path"
import { fileURLToPath } from "node:url"
import { loadProto, type StatusResponse } from "./reference.js"

/** The package's root: the nearest directory above this file with a package.json (source or dist). */
const findPackageRoot = (): string => {
  let dir = dirname(fileURLToPath(import.meta.url))
  while (!existsSync(join(dir, "package.json"))) {
    const parent = dirname(dir)
    if (parent === dir) throw new Error("no package.json above the test support")
    dir = parent
  }
  return dir
}
export const packageRoot = findPackageRoot()
export const repoRoot = resolve(packageRoot, "..", "..")

export const binaryPath = (): string =>
  process.env["RUNNER_STORAGE_BIN"] !== undefined && process.env["RUNNER_STORAGE_BIN"] !== ""
    ? resolve(process.env["RUNNER_STORAGE_BIN"])
    : join(repoRoot, "target", "debug", "runner-storage")

// --- process bookkeeping: nothing outlives the test process ------------------

const children = new Set<ChildProcess>()

export const track = (child: ChildProcess): ChildProcess => {
  children.add(child)
  child.once("exit", () => children.delete(child))
  return child
}

const killAll = () => {
  for (const child of children) {
    try {
      child.kill("SIGKILL")
    } catch {
      // already gone
    }
  }
}
process.once("exit", killAll)
for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
  process.once(signal, () => {
    killAll()
    process.exit(128 + (signal === "SIGINT" ? 2 : signal === "SIGTERM" ? 15 : 1))
  })
}

// --- helpers ------------------------------------------------------------------

export const freePort = (): Promise<number> =>
  new Promise((resolvePort, reject) => {
    const server = createServer()
    server.unref()
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const address = server.address()
      if (address === null || typeof address === "string") {
        server.close()
        reject(new Error("no port"))
        return
      }
      const port = address.port
      server.close(() => resolvePort(port))
    })
  })

/** Distinct free ports (a port freed and handed out again is skipped). */
export const freePorts = async (count: number): Promise<Array<number>> => {
  const ports: Array<number> = []
  while (ports.length < count) {
    const port = await freePort()
    if (!ports.includes(port)) ports.push(port)
  }
  return ports
}

/** Thrown from a `waitFor` check: stop polling at once. */
export class Fatal extends Error {}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms))

/** Waits for `promise`, at most `ms` (the timer does not keep the process alive). */
export const atMost = (promise: Promise<unknown>, ms: number): Promise<void> =>
  new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, ms)
    promise.then(
      () => {
        clearTimeout(timer)
        resolve()
      },
      () => {
        clearTimeout(timer)
        resolve()
      }
    )
  })

/**
 * Polls `check` until it returns a value other than `undefined`, at most until
 * `timeoutMs`; then fails with `what` and the last error/value seen.
 */
export const waitFor = async <A>(
  what: string,
  timeoutMs: number,
  check: () => Promise<A | undefined> | A | undefined,
  intervalMs = 100
): Promise<A> => {
  const deadline = Date.now() + timeoutMs
  let lastError: unknown
  for (;;) {
    try {
      const value = await check()
      if (value !== undefined) return value
      lastError = undefined
    } catch (error) {
      if (error instanceof Fatal) throw error
      lastError = error
    }
    if (Date.now() >= deadline) {
      throw new Error(
        `timed out after ${timeoutMs} ms waiting for ${what}` +
          (lastError !== undefined ? `; last error: ${String((lastError as Error)?.message ?? lastError)}` : "")
      )
    }
    await sleep(intervalMs)
  }
}

// --- a raw Admin client (independent of the code under test) -----------------

const proto = loadProto()

/** How the reference client reaches a (possibly secured) cluster. */
export interface Access {
  /** PEM of the cluster CA: TLS on. */
  readonly ca?: Buffer | undefined
  readonly token?: string | undefined
}

export const credentialsOf = (access: Access = {}): grpc.ChannelCredentials =>
  access.ca !== undefined ? grpc.credentials.createSsl(access.ca) : grpc.credentials.createInsecure()

export const metadataOf = (access: Access = {}): grpc.Metadata => {
  const metadata = new grpc.Metadata()
  if (access.token !== undefined) metadata.set("authorization", `Bearer ${access.token}`)
  return metadata
}

export const adminStatus = (address: string, timeoutMs = 1000, access: Access = {}): Promise<StatusResponse> =>
  new Promise((resolveStatus, reject) => {
    const client = new proto.Admin(address, credentialsOf(access))
    client.Status({}, metadataOf(access), { deadline: new Date(Date.now() + timeoutMs) }, (error, response) => {
      client.close()
      if (error) reject(error)
      else resolveStatus(response as StatusResponse)
    })
  })

// --- the cluster ----------------------------------------------------------------

export interface ClusterNode {
  readonly id: number
  readonly address: string
  readonly dataDir: string
  readonly configPath: string
  readonly logPath: string
  process: ChildProcess | undefined
  /** set by `kill`, cleared by `start` */
  down: boolean
}

export interface Cluster {
  readonly dir: string
  readonly nodes: ReadonlyArray<ClusterNode>
  readonly endpoints: ReadonlyArray<string>
  /** Waits until some live node reports role "leader"; returns that node. */
  readonly waitForLeader: (timeoutMs?: number, excluding?: number) => Promise<ClusterNode>
  readonly kill: (id: number, signal?: NodeJS.Signals) => Promise<void>
  readonly start: (id: number) => void
  readonly stop: () => Promise<void>
  readonly logs: () => string
  /** How to reach it: the CA (with TLS) and the token. */
  readonly access: Access
  /** The gen-certs.sh directory, with TLS. */
  readonly tlsDir: string | undefined
}

export interface ClusterOptions {
  readonly size?: number
  readonly initialLockExpirationMs?: number
  /** The node binary; default `binaryPath()`. */
  readonly binary?: string
  /** Extra top-level config lines for every node (before its tables). */
  readonly extraConfig?: ReadonlyArray<string>
  /** Extra `[raft]` lines for every node. */
  readonly raftConfig?: ReadonlyArray<string>
  /** TLS on: certificates made by scripts/gen-certs.sh (node1..nodeN). */
  readonly tls?: boolean
  /** The bearer token every node requires. */
  readonly authToken?: string
}

export const startCluster = async (options: ClusterOptions = {}): Promise<Cluster> => {
  const bin = options.binary ?? binaryPath()
  if (!existsSync(bin)) {
    throw new Error(`runner-storage binary not found at ${bin} (build it, or set RUNNER_STORAGE_BIN)`)
  }
  const size = options.size ?? 3
  const dir = mkdtempSync(join(tmpdir(), "rs-effect-test-"))
  const ports = await freePorts(size)
  let tlsDir: string | undefined
  if (options.tls === true) {
    tlsDir = join(dir, "certs")
    const names = Array.from({ length: size }, (_, i) => `node${i + 1}`)
    execFileSync("bash", [join(repoRoot, "scripts", "gen-certs.sh"), tlsDir, ...names], { stdio: "ignore" })
  }
  const access: Access = {
    ...(tlsDir !== undefined ? { ca: readFileSync(join(tlsDir, "ca.pem")) } : {}),
    ...(options.authToken !== undefined ? { token: options.authToken } : {})
  }
  const nodes: Array<ClusterNode> = ports.map((port, i) => {
    const id = i + 1
    const nodeDir = join(dir, `node${id}`)
    mkdirSync(nodeDir, { recursive: true })
    return {
      id,
      address: `127.0.0.1:${port}`,
      dataDir: join(nodeDir, "data"),
      configPath: join(nodeDir, "config.toml"),
      logPath: join(nodeDir, "node.log"),
      process: undefined,
      down: false
    }
  })
  for (const node of nodes) {
    const lines = [
      `node_id = ${node.id}`,
      `listen = "${node.address}"`,
      `data_dir = "${node.dataDir}"`
    ]
    if (options.initialLockExpirationMs !== undefined) {
      lines.push(`initial_lock_expiration_ms = ${options.initialLockExpirationMs}`)
    }
    if (options.authToken !== undefined) lines.push(`auth_token = "${options.authToken}"`)
    lines.push(...(options.extraConfig ?? []))
    for (const peer of nodes) {
      lines.push("", "[[peers]]", `id = ${peer.id}`, `address = "${peer.address}"`)
    }
    if (options.raftConfig !== undefined) lines.push("", "[raft]", ...options.raftConfig)
    if (tlsDir !== undefined) {
      lines.push(
        "",
        "[tls]",
        `ca = "${join(tlsDir, "ca.pem")}"`,
        `cert = "${join(tlsDir, `node${node.id}.pem`)}"`,
        `key = "${join(tlsDir, `node${node.id}-key.pem`)}"`
      )
    }
    writeFileSync(node.configPath, lines.join("\n") + "\n")
  }

  const start = (id: number) => {
    const node = nodes.find((n) => n.id === id)!
    if (node.process !== undefined && node.process.exitCode === null && node.process.signalCode === null) {
      throw new Error(`node ${id} is already running`)
    }
    const log = openSync(node.logPath, "a")
    const child = spawn(bin, ["serve", "--config", node.configPath], {
      stdio: ["ignore", log, log],
      env: { ...process.env, RUST_LOG: process.env["RUST_LOG"] ?? "info" }
    })
    closeSync(log)
    node.down = false
    node.process = track(child)
  }

  const isRunning = (node: ClusterNode) =>
    node.process !== undefined && node.process.exitCode === null && node.process.signalCode === null

  const kill = async (id: number, signal: NodeJS.Signals = "SIGKILL") => {
    const node = nodes.find((n) => n.id === id)!
    const child = node.process
    node.down = true
    if (child === undefined || !isRunning(node)) return
    const exited = new Promise<void>((r) => child.once("exit", () => r()))
    child.kill(signal)
    await atMost(exited, 10_000)
  }

  const waitForLeader = (timeoutMs = 15_000, excluding?: number) =>
    waitFor(`a leader${excluding !== undefined ? ` other than node ${excluding}` : ""}`, timeoutMs, async () => {
      for (const node of nodes) {
        if (!node.down && !isRunning(node)) {
          throw new Fatal(`node ${node.id} exited unexpectedly (code ${node.process?.exitCode})\n${logs()}`)
        }
      }
      const live = nodes.filter(isRunning)
      const statuses = await Promise.all(live.map((n) => adminStatus(n.address, 500, access).catch(() => undefined)))
      for (let i = 0; i < live.length; i++) {
        const status = statuses[i]
        if (status?.role === "leader" && live[i]!.id !== excluding) return live[i]!
      }
      return undefined
    }, 100)

  const stop = async () => {
    await Promise.all(nodes.map((n) => kill(n.id, "SIGKILL")))
    if (process.env["RS_KEEP_TEST_DIRS"] === undefined) {
      rmSync(dir, { recursive: true, force: true })
    }
  }

  const logs = () =>
    nodes.map((n) => {
      let text = ""
      try {
        text = readFileSync(n.logPath, "utf8")
      } catch {
        text = "(no log)"
      }
      return `--- node ${n.id} (${n.address}) last lines ---\n${text.split("\n").slice(-40).join("\n")}`
    }).join("\n")

  for (const node of nodes) start(node.id)
  const cluster: Cluster = {
    dir,
    nodes,
    endpoints: nodes.map((n) => n.address),
    waitForLeader,
    kill,
    start,
    stop,
    logs,
    access,
    tlsDir
  }
  try {
    await cluster.waitForLeader(20_000)
  } catch (error) {
    const message = `${(error as Error).message}\n${logs()}`
    await stop()
    throw new Error(message)
  }
  return cluster
}
