//! The buffers of the decoder's inference pass on the CPU, reused from layer to layer.
//!
//! At the released size an activation of the last level is 128 x 256 x 256 values, 32 MiB per image: above
//! glibc's largest mmap threshold, so as a fresh tensor each one is mapped, zeroed by the kernel page by page on
//! first touch and unmapped when dropped (the VQGAN decoder made about 130k page faults per image that way, a fifth
//! of its CPU time). Here every buffer is sized for the largest activation of the pass, so any buffer serves any
//! layer, and only the first use of each (three or four in all) faults. The buffers are freed with the pass: an idle
//! model holds no activation memory.

/// An activation (batch, channels, h, w), in a buffer of the pass that may be longer.
pub(super) struct Act {
    data: Vec<f32>,
    pub dims: (usize, usize, usize, usize),
}

impl Act {
    pub fn new(data: Vec<f32>, dims: (usize, usize, usize, usize)) -> Self {
        assert!(data.len() >= dims.0 * dims.1 * dims.2 * dims.3, "activation buffer shorter than {dims:?}");
        Self { data, dims }
    }

    pub fn len(&self) -> usize {
        self.dims.0 * self.dims.1 * self.dims.2 * self.dims.3
    }

    pub fn values(&self) -> &[f32] {
        &self.data[..self.len()]
    }

    pub fn values_mut(&mut self) -> &mut [f32] {
        let len = self.len();
        &mut self.data[..len]
    }

    pub fn into_values(mut self) -> Vec<f32> {
        self.data.truncate(self.len());
        self.data
    }
}

/// The free buffers of one pass, each `len` values or more.
pub(super) struct Pass {
    len: usize,
    free: Vec<Vec<f32>>,
}

impl Pass {
    /// For a pass whose largest activation has `len` values.
    pub fn new(len: usize) -> Self {
        Self { len, free: Vec::new() }
    }

    /// A buffer for an activation of `dims`, whose values are unspecified until the caller writes them all.
    pub fn alloc(&mut self, dims: (usize, usize, usize, usize)) -> Act {
        // Zeroed only when new: calloc's fresh pages, which the kernel zeroes anyway.
        let data = self.free.pop().unwrap_or_else(|| vec![0f32; self.len]);
        Act::new(data, dims)
    }

    /// Gives `a`'s buffer to a later `alloc` (a buffer too short for every layer, such as the input's, is freed).
    pub fn recycle(&mut self, a: Act) {
        if a.data.len() >= self.len {
            self.free.push(a.data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_and_short_ones_dropped() {
        let mut pass = Pass::new(100);
        let mut a = pass.alloc((1, 2, 3, 4));
        assert_eq!(a.values().len(), 24);
        a.values_mut()[23] = 5.0;
        let ptr = a.values().as_ptr();
        pass.recycle(a);
        let b = pass.alloc((2, 5, 2, 5));
        assert_eq!((b.values().as_ptr(), b.values().len()), (ptr, 100));
        pass.recycle(Act::new(vec![0.0; 24], (1, 2, 3, 4)));
        assert!(pass.free.is_empty());
        assert_eq!(b.into_values().len(), 100);
        assert_eq!(Act::new(vec![1.0; 30], (1, 1, 2, 3)).into_values(), vec![1.0; 6]);
    }
}
