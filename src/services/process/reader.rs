//! Draining one pipe of a child into line batches for the bus and the ring buffer.

use crate::event::{MAX_LINE_LEN, OutputBatch, split_point};
use crate::services::event_bus::EventBus;
use crate::sys::PipeReader;
use crate::types::Stream;

use super::Process;

/// Bytes read from a pipe at once.
pub(super) const CHUNK: usize = 64 * 1024;
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
    /// The read goes into the thread's scratch buffer, so an idle pipe holds no buffer and a
    /// read that finds end of file or nothing (`WouldBlock`) allocates nothing: a large read
    /// takes the scratch buffer itself (the next read allocates a new one), a small one is
    /// copied out at its size (so a short batch does not pin a whole read buffer in the bus).
    pub(super) fn try_read(&self) -> std::io::Result<Option<Vec<u8>>> {
        let Some(fd) = &self.fd else {
            return Ok(None);
        };
        SCRATCH.with_borrow_mut(|buf| {
            if buf.capacity() == 0 {
                *buf = crate::text::read_buffer();
            }
            buf.clear();
            buf.reserve(self.partial.len() + CHUNK);
            buf.extend_from_slice(&self.partial);
            match fd.try_read_buf(buf)? {
                0 => Ok(None),
                _ if buf.len() * 4 < buf.capacity() => Ok(Some(buf.as_slice().to_vec())),
                _ => Ok(Some(std::mem::take(buf))),
            }
        })
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
                if buf.capacity() > 4 * buf.len() {
                    // Do not let a short batch (a large read that ended in a long unfinished
                    // line) pin a whole read buffer in the bus.
                    buf.shrink_to_fit();
                }
                bus.publish_output(OutputBatch::new(
                    process.shared_id().clone(),
                    self.stream,
                    buf,
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
            // What was once a long unfinished line must not stay pinned while the pipe idles.
            self.partial.shrink_to_fit();
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

/// The next piece of an unfinished line longer than [`MAX_LINE_LEN`] (cut at a character
/// boundary near the cap), leaving the rest in `partial`; `None` while it is within the cap.
///
/// `>`, not `>=`: a partial line of exactly the cap waits for the next byte, so a line of
/// exactly `MAX_LINE_LEN` bytes is one event, not a piece and an empty line. The piece is
/// returned at its own size: the unfinished line grew by doubling, and a piece keeping that
/// capacity would pin about twice its bytes while the bus holds it (the bus's window counts
/// bytes, not capacity).
fn take_piece(partial: &mut Vec<u8>) -> Option<Vec<u8>> {
    if partial.len() <= MAX_LINE_LEN {
        return None;
    }
    let cut = split_point(partial, MAX_LINE_LEN);
    // The rest in a pooled buffer: the piece goes back to the pool once read, so a long line
    // takes from the pool as many buffers as it gives back.
    let mut rest = crate::text::read_buffer();
    rest.extend_from_slice(&partial[cut..]);
    partial.truncate(cut);
    let mut piece = std::mem::replace(partial, rest);
    piece.shrink_to_fit();
    Some(piece)
}

#[cfg(test)]
mod tests {
    use super::*;

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
                piece.capacity() < piece.len() + 4096,
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
