/**
 * The data pipeline's random numbers: sfc32 (Chris Doty-Humphrey's Small Fast Counting generator, PractRand-clean,
 * 128 bits of state). Its whole state is four 32-bit words, so it goes into every checkpoint as it is and a resumed
 * run draws exactly the numbers the uninterrupted one would have drawn.
 */
export class Random {
  #s: Uint32Array

  /** A generator seeded from up to four 32-bit words (the seed, an epoch, a rank...). */
  constructor(...seed: number[]) {
    this.#s = new Uint32Array([seed[0] ?? 0, seed[1] ?? 0, seed[2] ?? 0, 1])
    this.#s[3] = (seed[3] ?? 0) ^ 0x9e3779b9
    // The first outputs of a counter-based generator still show its seed: discard them, as the author advises.
    for (let i = 0; i < 16; i++) this.uint32()
  }

  static fromState(state: readonly number[]): Random {
    const r = new Random()
    r.#s = Uint32Array.from(state)
    return r
  }

  state(): number[] {
    return Array.from(this.#s)
  }

  uint32(): number {
    const s = this.#s
    const t = (((s[0] + s[1]) >>> 0) + s[3]) >>> 0
    s[3] = (s[3] + 1) >>> 0
    s[0] = s[1] ^ (s[1] >>> 9)
    s[1] = (s[2] + (s[2] << 3)) >>> 0
    s[2] = ((s[2] << 21) | (s[2] >>> 11)) >>> 0
    s[2] = (s[2] + t) >>> 0
    return t
  }

  /** Uniform in [0, 1), 32 bits of resolution. */
  float(): number {
    return this.uint32() / 4294967296
  }

  /** Uniform integer in [0, n), n ≤ 2^32, without modulo bias. */
  below(n: number): number {
    const limit = 4294967296 - (4294967296 % n)
    for (;;) {
      const x = this.uint32()
      if (x < limit) return x % n
    }
  }

  /** A uniform permutation of 0..n-1 (Fisher–Yates). */
  permutation(n: number): number[] {
    const p = Array.from({ length: n }, (_, i) => i)
    for (let i = n - 1; i > 0; i--) {
      const j = this.below(i + 1)
      ;[p[i], p[j]] = [p[j], p[i]]
    }
    return p
  }
}
