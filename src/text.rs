//! Small string types of the event path: [`ProcessId`] (and the storage [`Line`] uses), which
//! keep short text inline so that cloning them once per output line costs no allocation and no
//! atomic operation.
//!
//! [`Line`]: crate::Line

use std::sync::Arc;

/// The most bytes kept inline.
const INLINE: usize = 23;

/// Up to [`INLINE`] bytes of UTF-8, stored in place: three aligned words, the last byte holding
/// the length. Copied with three word moves; a byte-aligned layout made every copy of an event
/// a series of unaligned partial moves that stall the processor when read back (measured: half
/// of a subscriber's time per line).
#[derive(Clone, Copy)]
#[repr(C, align(8))]
pub(crate) struct Inline {
    bytes: [u8; INLINE + 1],
}

impl Inline {
    /// `text` in place, if it fits.
    pub(crate) fn new(text: &str) -> Option<Inline> {
        Inline::from_range(text, 0..text.len())
    }

    /// The `range` of `text` in place, if it fits. The range lies on character boundaries
    /// (otherwise the result reads as empty).
    #[inline(always)]
    pub(crate) fn from_range(text: &str, range: std::ops::Range<usize>) -> Option<Inline> {
        let len = range.end.checked_sub(range.start)?;
        if len > INLINE {
            return None;
        }
        // Three word loads of the whole block when the text has one there (the bytes past the
        // range are never read), the length merged into the last word in a register: much
        // cheaper than a copy of variable length, and read back without a stall.
        let src = text.as_bytes();
        let bytes = match src.get(range.start..range.start + INLINE + 1) {
            Some(block) => {
                let word = |i: usize| {
                    u64::from_le_bytes(
                        <[u8; 8]>::try_from(&block[i * 8..i * 8 + 8]).unwrap_or_default(),
                    )
                };
                let last = (word(2) & !(0xff << 56)) | ((len as u64) << 56);
                let mut bytes = [0u8; INLINE + 1];
                bytes[..8].copy_from_slice(&word(0).to_le_bytes());
                bytes[8..16].copy_from_slice(&word(1).to_le_bytes());
                bytes[16..].copy_from_slice(&last.to_le_bytes());
                bytes
            }
            None => {
                let mut bytes = Inline::copy_short(src.get(range)?);
                bytes[INLINE] = len as u8;
                bytes
            }
        };
        Some(Inline { bytes })
    }

    /// The line that starts at byte `start` of `text`, when its newline lies within the 16
    /// bytes from there (and the text has [`INLINE`] + 1 bytes from there): the line in place,
    /// without its line ending (`\n` or `\r\n`), and where the next line starts. Otherwise (a
    /// longer line, or the last bytes of the text) how many bytes from `start` on hold no
    /// newline (0 or 16), for the usual search to skip.
    ///
    /// The line-end search of a short line and its copy in one: the words loaded once are
    /// searched for the newline (a word at a time, no call) and kept as the copy. Only two are
    /// searched: a third costs a line too long for it more than it saves a line of 16 to 23
    /// bytes (measured: 13 instructions more per 80-byte line).
    #[inline(always)]
    pub(crate) fn line_at(text: &str, start: usize) -> Result<(Inline, usize), usize> {
        let Some(block) = start
            .checked_add(INLINE + 1)
            .and_then(|end| text.as_bytes().get(start..end))
        else {
            return Err(0);
        };
        let word = |i: usize| {
            u64::from_le_bytes(<[u8; 8]>::try_from(&block[i * 8..i * 8 + 8]).unwrap_or_default())
        };
        let words = [word(0), word(1), word(2)];
        let newline = if let Some(at) = newline_in(words[0]) {
            at
        } else if let Some(at) = newline_in(words[1]) {
            8 + at
        } else {
            return Err(16);
        };
        let len = newline - usize::from(newline > 0 && block.get(newline - 1) == Some(&b'\r'));
        let last = (words[2] & !(0xff << 56)) | ((len as u64) << 56);
        let mut bytes = [0u8; INLINE + 1];
        bytes[..8].copy_from_slice(&words[0].to_le_bytes());
        bytes[8..16].copy_from_slice(&words[1].to_le_bytes());
        bytes[16..].copy_from_slice(&last.to_le_bytes());
        Ok((Inline { bytes }, start + newline + 1))
    }

    /// The slow path of [`from_range`](Self::from_range), kept out of line so the compiler does
    /// not merge both copies into one of variable length.
    #[cold]
    #[inline(never)]
    fn copy_short(src: &[u8]) -> [u8; INLINE + 1] {
        let mut bytes = [0u8; INLINE + 1];
        bytes[..src.len()].copy_from_slice(src);
        bytes
    }

    pub(crate) fn as_str(&self) -> &str {
        let len = usize::from(self.bytes[INLINE]).min(INLINE);
        // Built from a `&str`, so always valid; the fallback only guards against a bug.
        std::str::from_utf8(&self.bytes[..len]).unwrap_or_default()
    }
}

/// Where the first `\n` is among the 8 bytes of `word` (read little-endian), if there is one.
/// The classic zero-byte test on `word ^ "\n\n\n\n\n\n\n\n"`: its lowest flagged byte is
/// exactly the first newline (a false flag can only follow a true one).
#[inline(always)]
fn newline_in(word: u64) -> Option<usize> {
    const ONES: u64 = u64::from_le_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);
    let x = word ^ (ONES * u64::from(b'\n'));
    let flags = x.wrapping_sub(ONES) & !x & HIGHS;
    (flags != 0).then(|| flags.trailing_zeros() as usize / 8)
}

/// Implements `Deref<Target = str>`, `AsRef<str>`, `Borrow<str>`, `Display`, `Debug`, equality
/// with itself and with `str`/`&str`/`String` both ways, `Hash` (as the `str`), ordering,
/// `From<&str>`, `From<T> for String` and serde as a string, for a type with `as_str(&self)` and
/// `From<String>`.
macro_rules! str_like {
    ($t:ty) => {
        impl std::ops::Deref for $t {
            type Target = str;
            fn deref(&self) -> &str {
                self.as_str()
            }
        }
        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                self.as_str()
            }
        }
        impl std::borrow::Borrow<str> for $t {
            fn borrow(&self) -> &str {
                self.as_str()
            }
        }
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                std::fmt::Debug::fmt(self.as_str(), f)
            }
        }
        impl PartialEq for $t {
            fn eq(&self, other: &$t) -> bool {
                self.as_str() == other.as_str()
            }
        }
        impl Eq for $t {}
        impl PartialOrd for $t {
            fn partial_cmp(&self, other: &$t) -> Option<std::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }
        impl Ord for $t {
            fn cmp(&self, other: &$t) -> std::cmp::Ordering {
                self.as_str().cmp(other.as_str())
            }
        }
        impl std::hash::Hash for $t {
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                self.as_str().hash(state)
            }
        }
        impl PartialEq<str> for $t {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }
        impl PartialEq<&str> for $t {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }
        impl PartialEq<String> for $t {
            fn eq(&self, other: &String) -> bool {
                self.as_str() == other
            }
        }
        impl PartialEq<$t> for str {
            fn eq(&self, other: &$t) -> bool {
                self == other.as_str()
            }
        }
        impl PartialEq<$t> for &str {
            fn eq(&self, other: &$t) -> bool {
                *self == other.as_str()
            }
        }
        impl PartialEq<$t> for String {
            fn eq(&self, other: &$t) -> bool {
                self == other.as_str()
            }
        }
        impl From<&str> for $t {
            fn from(text: &str) -> Self {
                // Short text goes in place without a detour through an allocated `String`.
                match $crate::text::Inline::new(text) {
                    Some(inline) => <$t>::from_inline(inline),
                    None => <$t>::from(text.to_owned()),
                }
            }
        }
        impl From<$t> for String {
            fn from(value: $t) -> String {
                value.as_str().to_owned()
            }
        }
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                <String as serde::Deserialize>::deserialize(d).map(<$t>::from)
            }
        }
    };
}

/// The id of a managed process (`proc-N`): a `str` (it derefs to one) that is cheap to clone.
///
/// Ids up to 23 bytes — every id the service makes — are stored inline, so the clone each
/// [`ProcessEvent::Output`](crate::ProcessEvent::Output) carries costs no allocation and no
/// atomic operation; longer ones are shared.
///
/// ```
/// use core_process::ProcessId;
///
/// let id = ProcessId::from("proc-7");
/// assert_eq!(id, "proc-7");
/// assert_eq!(id.as_str(), "proc-7");
/// assert_eq!(serde_json::to_string(&id).unwrap(), r#""proc-7""#);
/// ```
#[derive(Clone)]
pub struct ProcessId(IdRepr);

#[derive(Clone)]
enum IdRepr {
    Inline(Inline),
    Shared(Arc<str>),
}

impl ProcessId {
    /// The id.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            IdRepr::Inline(inline) => inline.as_str(),
            IdRepr::Shared(shared) => shared,
        }
    }

    fn from_inline(inline: Inline) -> Self {
        ProcessId(IdRepr::Inline(inline))
    }
}

impl From<String> for ProcessId {
    fn from(text: String) -> Self {
        match Inline::new(&text) {
            Some(inline) => ProcessId::from_inline(inline),
            None => ProcessId(IdRepr::Shared(text.into())),
        }
    }
}

str_like!(ProcessId);

/// The text of an [`OutputBatch`](crate::event::OutputBatch), which its [`Line`]s share: a
/// `String` that, once the last line holding it is dropped, gives its buffer back to the pool
/// of read buffers ([`read_buffer`]) when it is one.
#[derive(PartialEq, Eq)]
pub(crate) struct SharedText(String);

impl SharedText {
    pub(crate) fn new(text: String) -> Self {
        SharedText(text)
    }
}

impl std::ops::Deref for SharedText {
    type Target = str;

    #[inline(always)]
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Drop for SharedText {
    fn drop(&mut self) {
        POOL.give(std::mem::take(&mut self.0).into_bytes());
    }
}

/// The capacities of the buffers the pool keeps: those of pipe reads, from one read of 64 KiB
/// to 128 KiB (a read after an unfinished line of up to
/// [`MAX_LINE_LEN`](crate::event::MAX_LINE_LEN)).
pub(crate) const POOLED: std::ops::RangeInclusive<usize> = 64 * 1024..=128 * 1024;

/// How many buffers the pool keeps at most (40: 2.7 MiB of 68 KiB read buffers, 5 MiB at
/// most): a few more than the 32 reads the default bus window
/// ([`DEFAULT_BUS_WINDOW`](crate::services::event_bus::DEFAULT_BUS_WINDOW)) lets a subscriber
/// lag behind, so that one capture going back and forth across the window reuses the same
/// buffers. This is also what the pool may keep once the output stops.
const POOL_LEN: usize = 40;

/// Read buffers that came back from batches nobody holds any more.
///
/// Why: the readers of a busy child allocate a 64 KiB buffer per read and the subscriber frees
/// it, on whichever worker thread each runs. The allocator then keeps the window's worth of
/// buffers once per thread (glibc: an arena per thread), so the manager held about twice the
/// window it is meant to bound (measured with the 2 MiB window: 9.0 MiB peak, against 6.8 MiB
/// with one arena and 6.9 MiB with this pool). Buffers taken from here are the ones given
/// back, whatever the thread.
static POOL: Pool = Pool::new(POOL_LEN);

/// A bounded stack of empty buffers whose capacity is in [`POOLED`].
struct Pool {
    buffers: std::sync::Mutex<Vec<Vec<u8>>>,
    max: usize,
}

impl Pool {
    const fn new(max: usize) -> Self {
        Pool {
            buffers: std::sync::Mutex::new(Vec::new()),
            max,
        }
    }

    /// The buffer given back last, if any.
    fn take(&self) -> Option<Vec<u8>> {
        crate::sync::lock(&self.buffers).pop()
    }

    /// Keeps `buf`, emptied, if it has the size of a read and the pool has room (then
    /// `true`); frees it otherwise.
    fn give(&self, mut buf: Vec<u8>) -> bool {
        if !POOLED.contains(&buf.capacity()) {
            return false;
        }
        buf.clear();
        let mut buffers = crate::sync::lock(&self.buffers);
        if buffers.len() >= self.max {
            return false;
        }
        buffers.push(buf);
        true
    }
}

/// An empty buffer for a pipe read: one given back by a batch if there is one (its capacity in
/// [`POOLED`]), otherwise a new empty `Vec`.
pub(crate) fn read_buffer() -> Vec<u8> {
    POOL.take().unwrap_or_default()
}

/// Gives a buffer nothing holds any more (a read buffer whose bytes were copied or moved on)
/// to the pool if it has a read's capacity and the pool has room; frees it otherwise.
pub(crate) fn recycle(buf: Vec<u8>) {
    POOL.give(buf);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pool keeps only buffers of a read's size, emptied, up to its bound, and hands the
    /// last one back first (the one most likely still in cache).
    #[test]
    fn the_pool_keeps_read_sized_buffers_emptied_up_to_its_bound() {
        let pool = Pool::new(2);
        assert!(pool.take().is_none());
        let small = Vec::with_capacity(4096);
        assert!(!pool.give(small), "a short batch's buffer is freed");
        let huge = Vec::with_capacity(*POOLED.end() + 1);
        assert!(!pool.give(huge), "a long line's buffer is freed");
        let mut a = Vec::with_capacity(*POOLED.start());
        a.extend_from_slice(b"line\n");
        let a_ptr = a.as_ptr();
        assert!(pool.give(a));
        let b = Vec::with_capacity(*POOLED.end());
        let b_ptr = b.as_ptr();
        assert!(pool.give(b));
        assert!(
            !pool.give(Vec::with_capacity(*POOLED.start())),
            "a full pool frees what comes back"
        );
        let first = pool.take().expect("a buffer");
        assert_eq!(first.as_ptr(), b_ptr);
        let second = pool.take().expect("a buffer");
        assert_eq!(second.as_ptr(), a_ptr);
        assert!(second.is_empty(), "a kept buffer comes back empty");
        assert!(second.capacity() >= *POOLED.start());
        assert!(pool.take().is_none());
    }

    #[test]
    fn short_ids_are_inline_long_ones_shared() {
        let short = ProcessId::from("proc-123");
        assert!(matches!(short.0, IdRepr::Inline(_)));
        let long = ProcessId::from("x".repeat(40));
        assert!(matches!(long.0, IdRepr::Shared(_)));
        assert_eq!(long.len(), 40);
        let edge = ProcessId::from("é".repeat(11) + "z"); // 23 bytes, the most kept inline
        assert!(matches!(edge.0, IdRepr::Inline(_)));
        assert_eq!(edge, "é".repeat(11) + "z");
        assert!(matches!(
            ProcessId::from("z".repeat(24)).0,
            IdRepr::Shared(_)
        ));
    }

    #[test]
    fn from_str_and_from_string_agree_at_every_length() {
        for len in 0..=40 {
            let text = "é".repeat(len / 2) + &"z".repeat(len % 2);
            let (by_ref, owned) = (
                ProcessId::from(text.as_str()),
                ProcessId::from(text.clone()),
            );
            assert_eq!(by_ref, owned);
            assert_eq!(by_ref.as_str(), text);
            assert_eq!(
                matches!(by_ref.0, IdRepr::Inline(_)),
                matches!(owned.0, IdRepr::Inline(_)),
                "{len}"
            );
        }
    }

    #[test]
    fn behaves_like_str() {
        let id = ProcessId::from("proc-1");
        let mut map = std::collections::HashMap::new();
        map.insert(id.clone(), 1);
        assert_eq!(map.get("proc-1"), Some(&1));
        assert_eq!(format!("{id} {id:?}"), "proc-1 \"proc-1\"");
        assert_eq!(String::from(id.clone()), "proc-1");
        let next = ProcessId::from("proc-2");
        assert!(id < next);
        let back: ProcessId = serde_json::from_str("\"proc-1\"").unwrap();
        assert_eq!(back, id);
    }
}
