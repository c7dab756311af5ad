/**
 * Who held which shard when, from the runners' 200 ms samples, and the one
 * check that matters: no shard held by two runners at once.
 *
 * A runner instance that reports shard X in consecutive samples at t1..t2
 * held X throughout [t1, t2] (as far as 200 ms sampling can tell). Two
 * different runners (addresses: the store's locks are per address) whose
 * intervals for one shard intersect held it at the same time. A restarted
 * runner is a new instance: its intervals never span its downtime.
 */
import type { Sample } from "./runner.js"

interface Interval {
  readonly holder: string
  readonly instance: string
  readonly first: number
  last: number
}

export class Holdings {
  private readonly open = new Map<string, Map<string, Interval>>()
  private readonly closed = new Map<string, Array<Interval>>()
  /** The latest sample of each live instance. */
  readonly latest = new Map<string, Sample>()
  samples = 0

  add(instance: string, sample: Sample) {
    this.samples++
    this.latest.set(instance, sample)
    const open = this.open.get(instance) ?? new Map<string, Interval>()
    this.open.set(instance, open)
    const now = new Set(sample.shards)
    for (const [shard, interval] of open) {
      if (!now.has(shard)) {
        this.closeInterval(shard, interval)
        open.delete(shard)
      }
    }
    for (const shard of now) {
      const interval = open.get(shard)
      if (interval !== undefined) interval.last = sample.t
      else open.set(shard, { holder: sample.runner, instance, first: sample.t, last: sample.t })
    }
  }

  /** The instance is gone: its intervals end at its last sample. */
  end(instance: string) {
    const open = this.open.get(instance)
    if (open !== undefined) for (const [shard, interval] of open) this.closeInterval(shard, interval)
    this.open.delete(instance)
    this.latest.delete(instance)
  }

  private closeInterval(shard: string, interval: Interval) {
    const list = this.closed.get(shard) ?? []
    list.push(interval)
    this.closed.set(shard, list)
  }

  /** Every pair of runners that held a shard at the same time. */
  doubles(): Array<string> {
    const found: Array<string> = []
    const all = new Map<string, Array<Interval>>()
    for (const [shard, list] of this.closed) all.set(shard, [...list])
    for (const open of this.open.values()) {
      for (const [shard, interval] of open) all.set(shard, [...(all.get(shard) ?? []), interval])
    }
    for (const [shard, list] of all) {
      list.sort((a, b) => a.first - b.first)
      for (let i = 0; i < list.length; i++) {
        for (let j = i + 1; j < list.length && list[j]!.first <= list[i]!.last; j++) {
          const a = list[i]!
          const b = list[j]!
          if (a.holder === b.holder) continue
          found.push(`${shard}: ${a.holder} [${a.first}, ${a.last}] and ${b.holder} [${b.first}, ${b.last}]`)
        }
      }
    }
    return found
  }

  /** What the live instances hold now, by shard (from their latest samples). */
  current(): Map<string, Array<string>> {
    const byShard = new Map<string, Array<string>>()
    for (const sample of this.latest.values()) {
      for (const shard of sample.shards) byShard.set(shard, [...(byShard.get(shard) ?? []), sample.runner])
    }
    return byShard
  }
}
