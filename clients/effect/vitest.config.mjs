// Tests run from their TypeScript sources; `npm test` builds dist/ first,
// since the runner processes they fork run dist/test/fixtures/runner.js.
import { defineConfig } from "vitest/config"

// Vitest 5 declares Node >= 22.12 and its reporter calls Map.groupBy (Node
// 21+) when it prints failures; Node 20 runs everything else. Until the
// machines run Node 22, the one missing function, as the spec defines it:
if (typeof Map.groupBy !== "function") {
  Map.groupBy = (items, key) => {
    const groups = new Map()
    let index = 0
    for (const item of items) {
      const k = key(item, index++)
      const group = groups.get(k)
      if (group === undefined) groups.set(k, [item])
      else group.push(item)
    }
    return groups
  }
}

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // the files start real clusters: one file at a time on 2 cores
    fileParallelism: false,
    pool: "forks",
    testTimeout: 120_000,
    hookTimeout: 120_000
  }
})
