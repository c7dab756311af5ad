/**
 * A throwaway local PostgreSQL for the bench: Debian's server binaries
 * (`postgresql`, installed by `scripts/bench.sh` when missing), a fresh data
 * dir in a temp dir, a free loopback port, fsync and synchronous_commit on
 * (its defaults: every commit waits for its WAL fsync, as every write of
 * runner-storage waits for its log's fdatasync). `stop()` ends it and
 * deletes the data dir.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process"
import { chownSync, closeSync, existsSync, openSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs"
import { createConnection } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { freePort, track, waitFor } from "../test/support/cluster.js"

export interface Postgres {
  readonly host: string
  readonly port: number
  readonly username: string
  readonly database: string
  readonly version: string
  /** The postmaster's pid (its backends are its children). */
  readonly pid: number
  readonly stop: () => Promise<void>
}

/** The newest server under /usr/lib/postgresql/<version>/bin. */
const findBin = (): string => {
  const root = "/usr/lib/postgresql"
  const versions = existsSync(root) ? readdirSync(root).filter((v) => existsSync(join(root, v, "bin", "postgres"))) : []
  versions.sort((a, b) => Number(b) - Number(a))
  if (versions.length === 0) {
    throw new Error("no PostgreSQL server under /usr/lib/postgresql (scripts/bench.sh installs Debian's postgresql)")
  }
  return join(root, versions[0]!, "bin")
}

/**
 * postgres refuses to run as root: run it as the `postgres` user then, with
 * setpriv, which execs (no process in between to forward signals).
 */
const asServerUser = (command: string, args: ReadonlyArray<string>): [string, Array<string>] =>
  process.getuid?.() === 0
    ? ["setpriv", ["--reuid=postgres", "--regid=postgres", "--init-groups", "--", command, ...args]]
    : [command, [...args]]

const canConnect = (host: string, port: number) =>
  new Promise<boolean>((resolve) => {
    const socket = createConnection({ host, port }, () => {
      socket.destroy()
      resolve(true)
    })
    socket.once("error", () => resolve(false))
  })

export const startPostgres = async (options: { readonly maxConnections: number }): Promise<Postgres> => {
  const bin = findBin()
  const dir = mkdtempSync(join(tmpdir(), "rs-bench-pg-"))
  const dataDir = join(dir, "data")
  const username = "bench"
  if (process.getuid?.() === 0) {
    const pw = execFileSync("id", ["-u", "postgres"]).toString().trim()
    const gid = execFileSync("id", ["-g", "postgres"]).toString().trim()
    chownSync(dir, Number(pw), Number(gid))
  }
  const [initdb, initArgs] = asServerUser(join(bin, "initdb"), [
    "-D",
    dataDir,
    "-U",
    username,
    "--auth=trust",
    "--no-instructions",
    "-E",
    "UTF8"
  ])
  execFileSync(initdb, initArgs, { stdio: ["ignore", "ignore", "pipe"] })
  const port = await freePort()
  const host = "127.0.0.1"
  const [postgres, args] = asServerUser(join(bin, "postgres"), [
    "-D",
    dataDir,
    "-p",
    String(port),
    "-c",
    `listen_addresses=${host}`,
    "-c",
    `unix_socket_directories=${dir}`,
    "-c",
    `max_connections=${options.maxConnections}`,
    "-c",
    "fsync=on",
    "-c",
    "synchronous_commit=on"
  ])
  const logPath = join(dir, "postgres.log")
  const logFd = openSync(logPath, "a")
  const child: ChildProcess = track(spawn(postgres, args, { stdio: ["ignore", logFd, logFd] }))
  closeSync(logFd)
  const log = () => (existsSync(logPath) ? readFileSync(logPath, "utf8") : "")
  try {
    await waitFor("PostgreSQL to accept connections", 30_000, async () => {
      if (child.exitCode !== null) throw new Error(`postgres exited (${child.exitCode}):\n${log()}`)
      return (await canConnect(host, port)) && /ready to accept connections/.test(log()) ? true : undefined
    }, 100)
  } catch (error) {
    child.kill("SIGKILL")
    rmSync(dir, { recursive: true, force: true })
    throw error
  }
  const version = execFileSync(join(bin, "postgres"), ["--version"]).toString().trim()
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise<void>((r) => child.once("exit", () => r()))
      child.kill("SIGINT") // fast shutdown
      await Promise.race([exited, new Promise((r) => setTimeout(r, 10_000).unref())])
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL")
    }
    rmSync(dir, { recursive: true, force: true })
  }
  return { host, port, username, database: "postgres", version, pid: child.pid!, stop }
}
