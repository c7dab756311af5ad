/** Reading failures of the storage in tests. */
import { expect } from "@effect/vitest"
import * as Exit from "effect/Exit"
import { PersistenceError } from "effect/cluster/ClusterError"
import { RunnerStorageCallError } from "../../src/index.js"

/** The RunnerStorageCallError under the PersistenceError of a failed exit. */
export const callErrorOf = (exit: Exit.Exit<unknown, unknown>): RunnerStorageCallError => {
  expect(Exit.isFailure(exit)).toBe(true)
  const error = Exit.findErrorOption(exit)
  expect(error._tag).toBe("Some")
  const value = (error as { value: unknown }).value
  expect(value).toBeInstanceOf(PersistenceError)
  const cause = (value as PersistenceError).cause
  expect(cause).toBeInstanceOf(RunnerStorageCallError)
  return cause as RunnerStorageCallError
}
