//! [`RingBuffer`]: the fixed-capacity output store of a managed process.

use std::fmt;
use std::sync::{Mutex, MutexGuard};

/// A thread-safe circular byte buffer of fixed capacity: once full, each write overwrites the
/// oldest bytes, so it always holds the newest `cap()` bytes written.
///
/// Writes are bulk copies (at most two `memcpy`s), never byte loops. Storage grows with use up to
/// the capacity: a buffer that was given 1 MiB but saw 100 bytes holds about 100 bytes, so an idle
/// process costs next to nothing.
///
/// ```
/// use core_process::RingBuffer;
///
/// let buf = RingBuffer::new(8);
/// buf.write(b"hello ");
/// buf.write(b"world");
/// assert_eq!(buf.bytes(), b"lo world");
/// assert_eq!(buf.to_string(), "lo world");
/// assert_eq!((buf.len(), buf.cap()), (8, 8));
/// ```
pub struct RingBuffer {
    cap: usize,
    inner: Mutex<Ring>,
}

#[derive(Default)]
struct Ring {
    /// Physical storage; its length grows up to `cap` and then stays there.
    data: Vec<u8>,
    /// The physical index of the oldest byte: 0 until `data.len() == cap`.
    head: usize,
    /// Bytes ever written (for statistics).
    total: u64,
}

impl RingBuffer {
    /// A buffer that keeps the newest `cap` bytes. Allocates nothing until the first write.
    pub fn new(cap: usize) -> Self {
        RingBuffer {
            cap,
            inner: Mutex::new(Ring::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Ring> {
        crate::sync::lock(&self.inner)
    }

    /// Appends `bytes`, overwriting the oldest content once full.
    pub fn write(&self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let cap = self.cap;
        let mut ring = self.lock();
        ring.total += bytes.len() as u64;
        if cap == 0 {
            return;
        }
        if bytes.len() >= cap {
            // Only the last `cap` bytes survive.
            let tail = &bytes[bytes.len() - cap..];
            ring.data.clear();
            ring.data.reserve_exact(cap);
            ring.data.extend_from_slice(tail);
            ring.head = 0;
            return;
        }
        let mut rest = bytes;
        let len = ring.data.len();
        if len < cap {
            // Still growing: append what fits, growing geometrically but never past `cap`.
            let take = rest.len().min(cap - len);
            let need = len + take;
            if ring.data.capacity() < need {
                let target = need.max(ring.data.capacity() * 2).clamp(need, cap);
                ring.data.reserve_exact(target - len);
            }
            ring.data.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if rest.is_empty() {
                return;
            }
            ring.head = 0;
        }
        // Full: overwrite from `head`, wrapping once at most (rest.len() < cap).
        let head = ring.head;
        let first = rest.len().min(cap - head);
        ring.data[head..head + first].copy_from_slice(&rest[..first]);
        let second = rest.len() - first;
        ring.data[..second].copy_from_slice(&rest[first..]);
        ring.head = (head + rest.len()) % cap;
    }

    /// A copy of the content, oldest byte first.
    pub fn bytes(&self) -> Vec<u8> {
        let ring = self.lock();
        let mut out = Vec::with_capacity(ring.data.len());
        out.extend_from_slice(&ring.data[ring.head..]);
        out.extend_from_slice(&ring.data[..ring.head]);
        out
    }

    /// How many bytes it holds (at most `cap()`).
    pub fn len(&self) -> usize {
        self.lock().data.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The capacity it was created with.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// How many bytes were ever written, including those since overwritten.
    pub fn total_written(&self) -> u64 {
        self.lock().total
    }

    /// Empties the buffer and frees its storage.
    pub fn reset(&self) {
        *self.lock() = Ring::default();
    }
}

impl fmt::Display for RingBuffer {
    /// The content as lossy UTF-8.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.bytes()))
    }
}

impl fmt::Debug for RingBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ring = self.lock();
        f.debug_struct("RingBuffer")
            .field("cap", &self.cap)
            .field("len", &ring.data.len())
            .field("total_written", &ring.total)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The obvious reference: keep everything, return the last `cap` bytes.
    fn model(writes: &[&[u8]], cap: usize) -> Vec<u8> {
        let all: Vec<u8> = writes.concat();
        all[all.len().saturating_sub(cap)..].to_vec()
    }

    #[test]
    fn empty() {
        let b = RingBuffer::new(16);
        assert!(b.is_empty());
        assert_eq!(b.bytes(), b"");
        assert_eq!(b.to_string(), "");
        assert_eq!(b.cap(), 16);
    }

    /// A write, and what the buffer holds after it.
    type Step<'a> = (&'a [u8], &'a [u8]);

    /// Each case: a capacity and its writes, each with what the buffer holds after it.
    #[test]
    fn keeps_the_newest_bytes_up_to_its_capacity() {
        let cases: [(usize, &[Step<'_>]); 5] = [
            // Fills without wrapping.
            (10, &[(b"abc", b"abc"), (b"defg", b"abcdefg")]),
            // Wraps around.
            (
                5,
                &[(b"abcde", b"abcde"), (b"fg", b"cdefg"), (b"hijk", b"ghijk")],
            ),
            // A growing buffer: two fit, two overwrite the oldest.
            (6, &[(b"abcd", b"abcd"), (b"efgh", b"cdefgh")]),
            // A write larger than the capacity keeps its newest bytes.
            (
                4,
                &[(b"xy", b"xy"), (b"0123456789", b"6789"), (b"a", b"789a")],
            ),
            // Zero capacity keeps nothing, but counts.
            (0, &[(b"abc", b"")]),
        ];
        for (cap, steps) in cases {
            let b = RingBuffer::new(cap);
            let mut written = 0;
            for (write, want) in steps {
                b.write(write);
                written += write.len() as u64;
                assert_eq!(b.bytes(), *want, "cap {cap}, after {write:?}");
                assert_eq!(b.len(), want.len(), "cap {cap}, after {write:?}");
            }
            assert_eq!(b.total_written(), written, "cap {cap}");
        }
    }

    #[test]
    fn reset_empties_and_frees() {
        let b = RingBuffer::new(8);
        b.write(b"abcdefghij");
        b.reset();
        assert!(b.is_empty());
        b.write(b"z");
        assert_eq!(b.bytes(), b"z");
    }

    #[test]
    fn bytes_is_a_copy() {
        let b = RingBuffer::new(8);
        b.write(b"abc");
        let mut copy = b.bytes();
        copy[0] = b'X';
        assert_eq!(b.bytes(), b"abc");
    }

    #[test]
    fn storage_grows_with_use_only() {
        let b = RingBuffer::new(1 << 20);
        b.write(b"hello");
        let cap = b.lock().data.capacity();
        assert!(cap < 1024, "an almost idle buffer holds {cap} bytes");
        b.write(&vec![7u8; 3 << 20]);
        assert_eq!(b.lock().data.capacity(), 1 << 20);
    }

    #[test]
    fn is_empty_until_written() {
        let b = RingBuffer::new(4);
        assert!(b.is_empty());
        b.write(b"");
        assert!(b.is_empty());
        b.write(b"a");
        assert!(!b.is_empty());
        assert_eq!(b.len(), 1);
    }

    /// Storage holds what was written, never more than `cap`, and (doubling) less than twice
    /// what it holds.
    fn assert_storage_fits(b: &RingBuffer, context: &str) {
        let ring = b.lock();
        let (len, storage) = (ring.data.len(), ring.data.capacity());
        assert!(
            len <= storage && storage <= b.cap,
            "{context}: {len} in {storage}"
        );
        assert!(
            len == 0 || storage < 2 * len,
            "{context}: {len} in {storage}"
        );
    }

    #[test]
    fn small_writes_grow_storage_geometrically_and_never_past_cap() {
        // A capacity that is not a power of two, so the last step is clamped.
        let cap = 100_000;
        let b = RingBuffer::new(cap);
        let mut reallocations = 0;
        let mut last = 0;
        for i in 0..cap + 10 {
            b.write(&[i as u8]);
            assert_storage_fits(&b, &format!("after {i} writes"));
            let storage = b.lock().data.capacity();
            if storage != last {
                reallocations += 1;
                last = storage;
            }
        }
        assert_eq!(last, cap);
        // Doubling from one byte: about log2(100 000) = 17 steps (adding a constant would take
        // tens of thousands).
        assert!(reallocations <= 20, "{reallocations} reallocations");
        assert_eq!(b.len(), cap);
        assert_eq!(b.total_written(), (cap + 10) as u64);
    }

    #[test]
    fn debug_shows_cap_len_and_total() {
        let b = RingBuffer::new(4);
        b.write(b"abcdef");
        assert_eq!(
            format!("{b:?}"),
            "RingBuffer { cap: 4, len: 4, total_written: 6 }"
        );
    }

    #[test]
    fn matches_model_for_many_write_patterns() {
        for cap in [1usize, 2, 3, 7, 16, 31] {
            let mut writes: Vec<Vec<u8>> = Vec::new();
            let b = RingBuffer::new(cap);
            let mut n = 0u8;
            for i in 0..200usize {
                let len = (i * 7 + 3) % (cap * 2 + 3);
                let chunk: Vec<u8> = (0..len)
                    .map(|_| {
                        n = n.wrapping_add(1);
                        n
                    })
                    .collect();
                b.write(&chunk);
                writes.push(chunk);
                let refs: Vec<&[u8]> = writes.iter().map(Vec::as_slice).collect();
                assert_eq!(b.bytes(), model(&refs, cap), "cap {cap} after write {i}");
                assert_storage_fits(&b, &format!("cap {cap} after write {i}"));
            }
        }
    }

    #[test]
    fn display_is_lossy() {
        let b = RingBuffer::new(8);
        b.write(&[b'a', 0xff, b'b']);
        assert_eq!(b.to_string(), "a\u{fffd}b");
        assert_eq!(b.bytes(), [b'a', 0xff, b'b']);
    }
}
