//! Draining one pipe of a child into line batches for the bus and the ring buffer.

use crate::event::{MAX_LINE_LEN, OutputBatch, split_point};
use crate::services::event_bus::EventBus;
use crate::sys::PipeReader;
use crate::types::Stream;

use super::Process;

/// Bytes read from a pipe at once.
pub(super) const CHUNK: usize = 64 * 1024;
/// The capacity a new read buffer is made with (68 KiB): a read, after an unfinished line of
/// up to 4 KiB carried over from the one before.
const READ_BUFFER: usize = CHUNK + 4096;
thread_local! {
    /// Where [`Reader::try_read`] reads (see there).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Drains one pipe and cuts its output into line batches.
pub(super) struct Reader {
    pub(super) fd: Option<PipeReader>,
    pub(super) stream: Stream,
    /// The start of a line whose end has not arrived yet.
    partial: Vec<u8>,
}

impl Reader {
    pub(super) fn new(fd: PipeReader, stream: Stream) -> Self {
        Reader {
            fd: Some(fd),
            stream,
            partial: Vec::new(),
        }
    }

    /// Reads one chunk once the pipe is readable (see [`Reader::try_read`]), registering `cx`
    /// to be woken when it is not yet. `Ok(None)` at end of file; never ready once the pipe is
    /// closed.
    pub(super) fn poll_read_chunk(
        &self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<Option<Vec<u8>>>> {
        let Some(fd) = &self.fd else {
            return std::task::Poll::Pending;
        };
        loop {
            std::task::ready!(fd.poll_read_ready(cx))?;
            match self.try_read() {
                // Not readable after all: `try_read` cleared the readiness, so the next poll
                // registers `cx`.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                    ) => {}
                other => return std::task::Poll::Ready(other),
            }
        }
    }

    /// Reads one chunk, without waiting, into a buffer that starts with the unfinished line of
    /// the previous read, so the batch made from it needs no copy. `Ok(None)` at end of file.
    ///
    /// The read goes into the thread's scratch buffer, so an idle pipe holds no read buffer
    /// and a read that finds end of file or nothing (`WouldBlock`) allocates nothing: a large
    /// read takes the scratch buffer itself (the next read takes another from the pool of read
    /// buffers, or a new one), a small one is copied out at its size (so a short batch does
    /// not pin a whole read buffer in the bus).
    pub(super) fn try_read(&self) -> std::io::Result<Option<Vec<u8>>> {
        let Some(fd) = &self.fd else {
            return Ok(None);
        };
        SCRATCH.with_borrow_mut(|buf| {
            self.prepare(buf);
            match fd.try_read_buf(buf)? {
                0 => Ok(None),
                _ if buf.len() * 4 < buf.capacity() => Ok(Some(buf.as_slice().to_vec())),
                _ => Ok(Some(std::mem::take(buf))),
            }
        })
    }

    /// Makes `buf` (the scratch buffer) hold the unfinished line, with room for a read of
    /// [`CHUNK`] bytes after it.
    ///
    /// An empty scratch buffer is replaced by one from the pool. One too small (a pooled buffer
    /// behind a long unfinished line) grows to exactly what is needed, not to twice its
    /// size as `reserve` would, so that it stays a read's size and goes back to the pool.
    fn prepare(&self, buf: &mut Vec<u8>) {
        if buf.capacity() == 0 {
            *buf = read_buffer();
        }
        buf.clear();
        let need = self.partial.len() + CHUNK;
        if buf.capacity() < need {
            buf.reserve_exact(need.max(READ_BUFFER));
        }
        buf.extend_from_slice(&self.partial);
    }

    /// Stores the bytes read (those after the carried-over unfinished line) and publishes
    /// the complete lines of `buf`. Returns how many new bytes there were.
    pub(super) fn on_chunk(
        &mut self,
        mut buf: Vec<u8>,
        process: &Process,
        bus: &dyn EventBus,
    ) -> usize {
        let carried = self.partial.len();
        let fresh = buf.len() - carried;
        process.record_output(&buf[carried..]);
        match memchr::memrchr(b'\n', &buf[carried..]) {
            None => {
                // Still no end of line: the read buffer (which starts with the unfinished
                // line) becomes the unfinished line, and the old one goes back to the pool.
                crate::text::recycle(std::mem::replace(&mut self.partial, buf));
            }
            Some(last) => {
                let end = carried + last + 1;
                self.partial.clear();
                self.partial.extend_from_slice(&buf[end..]);
                buf.truncate(end);
                let batch = if buf.capacity() > 4 * buf.len() {
                    // Do not let a short batch (a large read that ended in a long unfinished
                    // line) pin a whole read buffer in the bus: copy it out, keep the buffer.
                    let short = buf.clone();
                    crate::text::recycle(buf);
                    short
                } else {
                    buf
                };
                bus.publish_output(OutputBatch::new(
                    process.shared_id().clone(),
                    self.stream,
                    batch,
                ));
            }
        }
        // A line longer than an event may carry goes out in capped pieces as it arrives.
        while let Some(piece) = take_piece(&mut self.partial) {
            bus.publish_output(OutputBatch::new(
                process.shared_id().clone(),
                self.stream,
                piece,
            ));
        }
        if self.partial.capacity() > 1024 && self.partial.capacity() > 4 * self.partial.len() {
            // What was once a long unfinished line (a read buffer) must not stay pinned while
            // the pipe idles: the rest moves to a buffer of its size, the buffer to the pool.
            let rest = self.partial.clone();
            crate::text::recycle(std::mem::replace(&mut self.partial, rest));
        }
        fresh
    }

    /// At end of file: publishes a last line that had no newline.
    pub(super) fn flush(&mut self, process: &Process, bus: &dyn EventBus) {
        self.fd = None;
        if !self.partial.is_empty() {
            let data = std::mem::take(&mut self.partial);
            bus.publish_output(OutputBatch::new(
                process.shared_id().clone(),
                self.stream,
                data,
            ));
        }
    }
}

/// An empty read buffer: one from the pool of read buffers if there is one, otherwise a new one
/// of [`READ_BUFFER`] bytes.
fn read_buffer() -> Vec<u8> {
    let buf = crate::text::read_buffer();
    if buf.capacity() == 0 {
        Vec::with_capacity(READ_BUFFER)
    } else {
        buf
    }
}

/// The next piece of an unfinished line longer than [`MAX_LINE_LEN`] (cut at a character
/// boundary near the cap), leaving the rest in `partial`; `None` while it is within the cap.
///
/// `>`, not `>=`: a partial line of exactly the cap waits for the next byte, so a line of
/// exactly `MAX_LINE_LEN` bytes is one event, not a piece and an empty line. The piece is
/// returned at about its own size (at least [`READ_BUFFER`], so that it can go back to the
/// pool): the unfinished line it was cut from has room for a read after it, and a piece keeping
/// that capacity would pin about twice its bytes while the bus holds it (the bus's window counts
/// bytes, not capacity).
fn take_piece(partial: &mut Vec<u8>) -> Option<Vec<u8>> {
    if partial.len() <= MAX_LINE_LEN {
        return None;
    }
    let cut = split_point(partial, MAX_LINE_LEN);
    // A long rest goes into a pooled buffer: the piece goes back to the pool once read, so a
    // long line takes from the pool about as many buffers as it gives back. A short rest is
    // kept at its size.
    let rest = if (partial.len() - cut) * 4 >= CHUNK {
        let mut pooled = read_buffer();
        pooled.extend_from_slice(&partial[cut..]);
        pooled
    } else {
        partial[cut..].to_vec()
    };
    partial.truncate(cut);
    let mut piece = std::mem::replace(partial, rest);
    // The piece at (about) its own size, but never below a read buffer's, so that it can go
    // back to the pool: a piece cut at a character boundary is a few bytes short of the cap.
    piece.shrink_to(READ_BUFFER);
    Some(piece)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::ProcessEvent;
    use crate::services::event_bus::{BroadcastEventBus, Subscription};
    use proptest::prelude::*;

    /// A bus that keeps the text of every batch published on it.
    struct Texts {
        texts: std::sync::Mutex<Vec<String>>,
        inner: BroadcastEventBus,
    }

    impl EventBus for Texts {
        fn publish(&self, event: ProcessEvent) {
            self.inner.publish(event);
        }

        fn publish_output(&self, batch: OutputBatch) {
            crate::sync::lock(&self.texts).push(batch.text().to_owned());
        }

        fn subscribe(&self) -> Subscription {
            self.inner.subscribe()
        }
    }

    fn process() -> Process {
        // A ring buffer large enough for all of a case's output.
        let spec = super::super::handle::Spec::for_test(Some(4 * 1024 * 1024));
        Process::driven_with_input(spec, None).0
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        /// Whatever the reads look like (short lines, lines longer than an event carries,
        /// reads of any size, buffers from the pool or new), the batches published carry the
        /// bytes read, in order, none lost or repeated, each at most the cap of a line, and
        /// each but the last ends a line or is a capped piece.
        #[test]
        fn batches_carry_every_byte_read_in_order(
            lines in proptest::collection::vec((0usize..3 * MAX_LINE_LEN, 0u8..3), 1..12),
            reads in proptest::collection::vec(1usize..=CHUNK, 1..64),
        ) {
            let mut input = Vec::new();
            for (i, (len, ending)) in lines.iter().enumerate() {
                input.extend((0..*len).map(|k| b'a' + ((i + k) % 26) as u8));
                match ending {
                    0 => input.push(b'\n'),
                    1 => input.extend_from_slice(b"\r\n"),
                    _ => {}
                }
            }
            let (process, bus) = (process(), Texts {
                texts: std::sync::Mutex::new(Vec::new()),
                inner: BroadcastEventBus::new(4),
            });
            let mut reader = Reader {
                fd: None,
                stream: Stream::Stdout,
                partial: Vec::new(),
            };
            let (mut at, mut size) = (0, reads.iter().cycle());
            while at < input.len() {
                let n = (*size.next().expect("a size")).min(input.len() - at);
                let mut buf = Vec::new();
                reader.prepare(&mut buf);
                prop_assert!(buf.capacity() >= buf.len() + CHUNK, "room for a whole read");
                buf.extend_from_slice(&input[at..at + n]);
                prop_assert_eq!(reader.on_chunk(buf, &process, &bus), n);
                at += n;
            }
            reader.flush(&process, &bus);
            let texts = crate::sync::lock(&bus.texts).clone();
            prop_assert_eq!(texts.concat().into_bytes(), input.clone());
            prop_assert_eq!(process.output_bytes(), input);
            for (i, text) in texts.iter().enumerate() {
                prop_assert!(!text.is_empty());
                let ends_a_line = text.ends_with('\n');
                prop_assert!(
                    ends_a_line || text.len() == MAX_LINE_LEN || i == texts.len() - 1,
                    "batch {} of {} ends in the middle of a line", i, texts.len()
                );
                prop_assert!(ends_a_line || text.len() <= MAX_LINE_LEN);
            }
        }
    }

    /// A long line arriving a read at a time is cut into pieces of at most the cap, in order,
    /// none lost, each held at its own size rather than the doubled capacity of the
    /// unfinished line it was cut from.
    #[test]
    fn a_long_line_is_cut_into_pieces_at_their_own_size() {
        let line: Vec<u8> = (0..5 * MAX_LINE_LEN + 123)
            .map(|i| b'a' + (i % 26) as u8)
            .collect();
        let (mut partial, mut pieces) = (Vec::new(), Vec::new());
        for read in line.chunks(CHUNK) {
            partial.extend_from_slice(read);
            while let Some(piece) = take_piece(&mut partial) {
                pieces.push(piece);
            }
        }
        assert_eq!(partial.len(), 123, "the rest waits for more");
        assert_eq!(pieces.len(), 5);
        for piece in &pieces {
            assert_eq!(piece.len(), MAX_LINE_LEN);
            assert!(
                piece.capacity() <= READ_BUFFER,
                "a piece of {} bytes holds {} (the unfinished line's capacity)",
                piece.len(),
                piece.capacity()
            );
        }
        let mut joined = pieces.concat();
        joined.extend_from_slice(&partial);
        assert_eq!(joined, line);
        // Exactly the cap is not cut: it may be a whole line still.
        let mut exact = vec![b'x'; MAX_LINE_LEN];
        assert!(take_piece(&mut exact).is_none());
    }
}
