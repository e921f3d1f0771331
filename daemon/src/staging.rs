//! Reusable page-aligned buffers for the windows that fills read from the tiers ([`StagePool`]).
//!
//! A sequential scan stages one window per granule it fills, thousands a second. A fresh
//! zeroed allocation for each cost the pager's thread a malloc, a memset and page faults
//! (about a tenth of its time, measured), and memory that is not page-aligned made the
//! NVMe tier read into a scratch buffer and copy out; a pooled aligned buffer is read into
//! in place. A buffer goes back to the pool when its staged window is dropped.

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};

use holo_tiers::AlignedBuf;

/// Idle buffers kept for reuse, of one granule each; beyond `keep` they are freed.
pub struct StagePool {
    free: Mutex<Vec<AlignedBuf>>,
    buf_bytes: usize,
    keep: usize,
}

/// `len` bytes of a pooled buffer, page-aligned.
pub struct StageBuf {
    buf: Option<AlignedBuf>,
    len: usize,
    pool: Arc<StagePool>,
}

impl StagePool {
    /// Buffers of `buf_bytes`, at most `keep_bytes` of them idle.
    pub fn new(buf_bytes: usize, keep_bytes: usize) -> Arc<StagePool> {
        Arc::new(StagePool { free: Mutex::new(Vec::new()), buf_bytes, keep: keep_bytes / buf_bytes.max(1) })
    }

    /// A buffer of `len` bytes (at most one granule). Its bytes are what an earlier window
    /// left in it: whoever reads them first writes them.
    pub fn take(self: &Arc<Self>, len: usize) -> StageBuf {
        assert!(len <= self.buf_bytes, "a staged window larger than a granule");
        let reused = self.free.lock().unwrap().pop();
        StageBuf { buf: Some(reused.unwrap_or_else(|| AlignedBuf::new(self.buf_bytes))), len, pool: self.clone() }
    }

    /// Buffers idle in the pool now.
    #[cfg(test)]
    fn idle(&self) -> usize {
        self.free.lock().unwrap().len()
    }
}

impl Deref for StageBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf.as_ref().unwrap()[..self.len]
    }
}

impl DerefMut for StageBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.buf.as_mut().unwrap()[..self.len]
    }
}

impl Drop for StageBuf {
    fn drop(&mut self) {
        // Poisoned or not, the list is sound: a drop while unwinding must not panic again.
        let mut free = self.pool.free.lock().unwrap_or_else(|e| e.into_inner());
        if free.len() < self.pool.keep {
            free.push(self.buf.take().unwrap());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_reused_and_bounded() {
        let pool = StagePool::new(65536, 2 * 65536);
        let (a, b, c) = (pool.take(65536), pool.take(4096), pool.take(8192));
        assert_eq!((a.len(), b.len(), c.len()), (65536, 4096, 8192));
        assert!([&a, &b, &c].iter().all(|x| (x.as_ptr() as usize).is_multiple_of(4096)));
        let first = a.as_ptr();
        drop(a);
        assert_eq!(pool.idle(), 1);
        assert_eq!(pool.take(100).as_ptr(), first, "an idle buffer is reused");
        drop((b, c));
        assert_eq!(pool.idle(), 2);
        let extra = pool.take(1);
        let more: Vec<StageBuf> = (0..3).map(|_| pool.take(1)).collect();
        drop((extra, more));
        assert_eq!(pool.idle(), 2, "no more than `keep` bytes stay idle");
    }
}
