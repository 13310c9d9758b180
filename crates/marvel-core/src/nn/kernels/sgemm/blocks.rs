//! The depth (KC) and width (NC) of the blocks `sgemm` works in: KC fixed, NC fitted to this CPU's L2.
//!
//! - **KC = 256.** The kernel keeps a copied 12×KC tile of A in L1 (12 KiB) while 32-column panels of the packed
//!   block stream through from L2. On the Zen 4 EPYC (32 KiB 8-way L1d) KC of 128 and 160, which keep a whole
//!   KC×32 panel and the tile in L1 together, measured 3-7% slower than 256, and 384 or 512 no faster
//!   (`sgemm::bench`, GFLOP per CPU-second, S-128 / L-32 / single shapes): the panel's lines are read once per
//!   tile and L2 feeds them in time, so shallower blocks only add passes over C.
//! - **NC ≤ 512, and the KC×NC block at most half of L2**, the other half for A's KC-deep strip and C's rows,
//!   which pass through for every tile. NC of 256, 512 and 1024 measured within 3% of each other on both L2
//!   sizes seen (1 MiB Zen 4, 2 MiB Xeon: tuned at 512), so the cap; the L2 bound is for the cores with 512 KiB
//!   or less (Ice Lake client), where a 512 KiB block would evict everything else.

use std::sync::OnceLock;

use super::NR;

/// Block sizes, in floats: KC (depth, a multiple of 16 for the pack's 16×16 transposes) and NC (columns, a
/// multiple of NR).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Blocks {
    pub kc: usize,
    pub nc: usize,
}

const KC: usize = 256;
const NC_MAX: usize = 512;

/// This core's L2 size in bytes, from CPUID's deterministic cache parameters (leaf 4 on Intel, 0x8000001D on
/// AMD: same layout); None when neither lists a level-2 data or unified cache.
fn l2_bytes() -> Option<usize> {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    // Leaves above the reported maxima are not queried.
    let (max_basic, max_ext) = (__cpuid(0).eax, __cpuid(0x8000_0000).eax);
    [(4, max_basic), (0x8000_001D, max_ext)].into_iter().filter(|&(leaf, max)| max >= leaf).find_map(|(leaf, _)| {
        (0..16).map(|sub| __cpuid_count(leaf, sub)).take_while(|r| r.eax & 0x1f != 0).find_map(|r| {
            let (kind, level) = (r.eax & 0x1f, (r.eax >> 5) & 0x7);
            let ways = ((r.ebx >> 22) & 0x3ff) as usize + 1;
            let partitions = ((r.ebx >> 12) & 0x3ff) as usize + 1;
            let line = (r.ebx & 0xfff) as usize + 1;
            let sets = r.ecx as usize + 1;
            // Kinds: 1 data, 3 unified (0 ends the list).
            (level == 2 && (kind == 1 || kind == 3)).then_some(ways * partitions * line * sets)
        })
    })
}

impl Blocks {
    /// The blocks for this CPU's L2, found once per process; for 1 MiB when CPUID does not say.
    pub fn for_this_cpu() -> Blocks {
        static BLOCKS: OnceLock<Blocks> = OnceLock::new();
        *BLOCKS.get_or_init(|| Blocks::fit(l2_bytes().unwrap_or(1 << 20)))
    }

    /// KC = 256; NC the widest multiple of NR up to 512 whose block (4·KC·NC bytes) fills at most half of L2,
    /// and at least 2·NR.
    pub fn fit(l2: usize) -> Blocks {
        let nc = (l2 / 2 / (4 * KC) / NR * NR).clamp(2 * NR, NC_MAX);
        Blocks { kc: KC, nc }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_fit_their_l2() {
        // 2 MiB (Xeon) and 1 MiB (Zen 4): the measured 256×512; 512 KiB (Ice Lake client): a 256 KiB block.
        assert_eq!(Blocks::fit(2 << 20), Blocks { kc: 256, nc: 512 });
        assert_eq!(Blocks::fit(1 << 20), Blocks { kc: 256, nc: 512 });
        assert_eq!(Blocks::fit(512 << 10), Blocks { kc: 256, nc: 256 });
        for l2 in [1_280 << 10, 768 << 10, 200 << 10, 0] {
            let b = Blocks::fit(l2);
            assert!(b.nc.is_multiple_of(NR) && b.nc >= 2 * NR && b.nc <= NC_MAX, "{l2}: {b:?}");
            assert!(4 * b.kc * b.nc <= l2 / 2 || b.nc == 2 * NR, "{l2}: {b:?}");
        }
    }

    /// CPUID's answer on the machine running the tests is plausible for an x86-64 core (256 KiB to 8 MiB of L2).
    #[test]
    fn this_cpu_reports_its_l2() {
        let l2 = l2_bytes().expect("CPUID lists no L2");
        assert!((256 << 10..=8 << 20).contains(&l2), "{l2}");
    }
}
