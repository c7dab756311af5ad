// Copies the client API proto (the repo's proto/runner_storage.proto) into this
// package, so a packed/published package carries it. Inside the repo the
// runtime also finds ../../proto directly, so this copy is a convenience.
import { copyFileSync, existsSync, mkdirSync } from "node:fs"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"

const pkgRoot = join(dirname(fileURLToPath(import.meta.url)), "..")
const source = join(pkgRoot, "..", "..", "proto", "runner_storage.proto")
const target = join(pkgRoot, "proto", "runner_storage.proto")
if (existsSync(source)) {
  mkdirSync(dirname(target), { recursive: true })
  copyFileSync(source, target)
} else if (!existsSync(target)) {
  console.error(`copy-proto: neither ${source} nor ${target} exists`)
  process.exit(1)
}
